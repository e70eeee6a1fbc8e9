"""Roll a flow policy from noise to data, recording every state and each SDE step's log-prob.

`velocity(x, sigma) -> v` is any batched field in the project convention (flowrl.sampling.sde):
x (B, *shape), sigma (B,) -> (B, *shape). Conditioning and guidance are bound by the caller.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from flowrl.sampling.sde import ode_step, sde_step

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class RolloutSettings:
    """How an epoch's rollouts are sampled; the losses must re-score transitions the same way."""
    sigmas: torch.Tensor        # (S+1,) decreasing schedule
    sde_mask: torch.Tensor      # (S,) bool: stochastic steps
    train_mask: torch.Tensor    # (S,) bool: trained steps (a subset of the stochastic ones)
    noise_level: float
    kind: str                   # "sde" | "cps"
    guidance: float             # CFG scale used when re-evaluating velocities in training
    sample_guidance: float = 1.0  # CFG scale used while sampling
    cps_log_prob: str = "exact"   # CPS log-prob form: "exact" | "flow_grpo" (flowrl.sampling.sde)
    cfg_detach_uncond: bool = False  # training CFG: no gradient through the unconditional half

    @property
    def train_steps(self):
        return self.train_mask.nonzero().flatten().tolist()


@dataclass
class Trajectory:
    latents: torch.Tensor    # (B, S+1, *shape) x at every sigma; latents[:, 0] is the initial noise
    log_probs: torch.Tensor  # (B, S) fp32 log-prob of each SDE transition; 0 on ODE steps
    sigmas: torch.Tensor     # (S+1,) the decreasing schedule, 1 -> 0
    sde_mask: torch.Tensor   # (S,) bool: which steps were stochastic (trainable)

    @property
    def final(self) -> torch.Tensor:
        return self.latents[:, -1]


def rollout(velocity: Velocity, noise: torch.Tensor, sigmas: torch.Tensor,
            sde_mask: Optional[torch.Tensor] = None, noise_level: float = 0.7, kind: str = "sde",
            generator: Optional[torch.Generator] = None, cps_log_prob: str = "exact") -> Trajectory:
    """Sample from `noise` (B, *shape) along `sigmas` (S+1,). Steps where `sde_mask` is True use the
    stochastic step (drawing from `generator`; log-probs in `cps_log_prob` form for CPS), the others
    the Euler ODE step. Gradients flow only
    if the caller enables them (reward backprop); samplers for RL wrap this in torch.no_grad()."""
    num_steps = len(sigmas) - 1
    mask = torch.zeros(num_steps, dtype=torch.bool) if sde_mask is None else sde_mask.cpu()
    sigma_max = float(sigmas[1])
    x, states = noise, [noise]
    log_probs = torch.zeros(noise.shape[0], num_steps, device=noise.device)
    for i in range(num_steps):
        s = sigmas[i].to(noise.device).expand(noise.shape[0])
        s_next = sigmas[i + 1].to(noise.device).expand(noise.shape[0])
        v = velocity(x, s)
        if mask[i]:
            out = sde_step(x, v, s, s_next, noise_level, sigma_max, kind, generator=generator,
                           cps_log_prob=cps_log_prob)
            x = out.sample.to(noise.dtype)
            log_probs[:, i] = out.log_prob
        else:
            x = ode_step(x, v, s, s_next)
        states.append(x)
    return Trajectory(torch.stack(states, dim=1), log_probs, sigmas.cpu(), mask)


def ode_sample(velocity: Velocity, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Deterministic Euler ODE sample (evaluation). -> (B, *shape)."""
    x = noise
    for i in range(len(sigmas) - 1):
        s = sigmas[i].to(x.device).expand(x.shape[0])
        x = ode_step(x, velocity(x, s), s, sigmas[i + 1].to(x.device).expand(x.shape[0]))
    return x
