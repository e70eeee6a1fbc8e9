"""Helpers shared by the methods that train on the FORWARD process of their own clean samples
(DiffusionNFT, AWM, DGPO): draw (sigma, eps), noise x0, and the velocity penalty to the base."""
from __future__ import annotations

from typing import Dict, Tuple

import torch

from flowrl.algorithms.nft import _bcast, draw_step_sigmas


def noised(x0: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x_sigma = (1 - sigma) x0 + sigma eps. x0, eps (B, *shape); sigma (B,). -> (B, *shape)."""
    s = _bcast(sigma, x0)
    return (1 - s) * x0 + s * eps


def velocity_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mean over non-batch dims of (a - b)^2, in fp32. (B, *shape) x 2 -> (B,)."""
    return ((a.float() - b.float()) ** 2).mean(dim=tuple(range(1, a.ndim)))


def forward_draws(x0: torch.Tensor, k: int, levels: torch.Tensor,
                  generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """k training sigmas per sample from the schedule levels `levels` (L+1,) (the last level, 0,
    is never drawn) and fresh Gaussian noise. x0 (B, *shape) -> sigma (B, k), eps (B, k, *shape)."""
    sig = draw_step_sigmas(levels, x0.shape[0], k, generator)
    eps = torch.randn((x0.shape[0], k, *x0.shape[1:]), generator=generator)
    return sig.to(x0.device), eps.to(x0.device, x0.dtype)


@torch.no_grad()
def reference_velocity(policy, xs: torch.Tensor, sigma: torch.Tensor, cond: Dict[str, torch.Tensor],
                       guidance: float) -> torch.Tensor:
    """The frozen base's velocity (adapter off) at (xs, sigma), fp32, no gradient."""
    with policy.reference():
        return policy.velocity(xs, sigma, cond, guidance=guidance).float()
