"""Policy-gradient losses as pure functions over per-sample tensors."""
from __future__ import annotations

import torch


def clipped_surrogate(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                      clip_range: float, weights: torch.Tensor = None):
    """PPO's clipped objective as a loss: mean(w * max(-A*rho, -A*clip(rho, 1-eps, 1+eps))).

    log_prob, old_log_prob, advantages, weights (default 1): (B,). rho = exp(log_prob - old_log_prob).
    -> (loss scalar, rho (B,), clipped (B,) bool where the clip was active)."""
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    per_sample = torch.maximum(unclipped, clipped)
    loss = (per_sample if weights is None else per_sample * weights).mean()
    return loss, ratio, (torch.abs(ratio - 1.0) > clip_range)
