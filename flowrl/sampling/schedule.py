"""Sigma schedules and the choice of which steps are stochastic (and trained).

Schedules are decreasing (S+1,) tensors from 1 to 0 (see flowrl.sampling.sde for the convention).
"""
from __future__ import annotations

import torch


def shifted_sigmas(num_steps: int, shift: float = 1.0) -> torch.Tensor:
    """(S+1,) sigmas: linspace(1, 0) warped by sigma' = shift*s/(1 + (shift-1)*s) (SD3's time shift;
    shift = 1 gives the plain uniform schedule)."""
    s = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    return (shift * s / (1 + (shift - 1) * s)).float()


def step_masks(num_steps: int, timestep_fraction: float = 1.0, window_size: int = 0,
               window_start: int = 0):
    """-> (sde_mask (S,) bool: steps sampled with the SDE, train_mask (S,) bool: steps trained).

    window_size == 0 (Flow-GRPO): every step is stochastic; the first round(S * timestep_fraction)
    are trained, n = max(1, int(S * timestep_fraction)) as Flow-GRPO (0.99 of 10 steps trains 9:
    the last step, whose tiny sigma makes log-probs overflow, is dropped).
    window_size > 0 (Flow-GRPO-Fast / MixGRPO): only steps [window_start, window_start+window_size)
    are stochastic and trained; the others use the ODE.
    """
    sde = torch.zeros(num_steps, dtype=torch.bool)
    if window_size > 0:
        if not 0 <= window_start <= num_steps - window_size:
            raise ValueError(f"SDE window [{window_start}, {window_start + window_size}) does not fit in "
                             f"{num_steps} steps; lower sample.sde_window_size or the window start")
        sde[window_start:window_start + window_size] = True
        return sde, sde.clone()
    sde[:] = True
    if not 0 < timestep_fraction <= 1:
        raise ValueError(f"sample.timestep_fraction={timestep_fraction}: use a value in (0, 1]")
    n = max(1, int(num_steps * timestep_fraction + 1e-9))
    train = torch.zeros(num_steps, dtype=torch.bool)
    train[:n] = True
    return sde, train
