"""Rewards for 1-D samples (B, 1) (diffusiongym's `1d/binary` and `1d/gaussian`, seed 002)."""
from __future__ import annotations

import math

import torch

from flowrl.registry import REWARDS


def _flat(samples: torch.Tensor) -> torch.Tensor:
    """(B, 1) or (B,) -> (B,) float32; anything else is refused."""
    x = torch.as_tensor(samples).float()
    if x.ndim == 2 and x.shape[1] == 1:
        return x[:, 0]
    if x.ndim == 1:
        return x
    raise ValueError(f"1-D rewards take samples of shape (B, 1), got {tuple(x.shape)}")


def interval_reward(x: torch.Tensor, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """1[low <= x <= high]. x (B, 1) -> (B,) in {0, 1}."""
    z = _flat(x)
    return ((z >= low) & (z <= high)).float()


def gaussian_pdf_reward(x: torch.Tensor, mean: float = -2.5, std: float = 0.8) -> torch.Tensor:
    """pdf of N(mean, std^2) at x. x (B, 1) -> (B,). At x = mean: 1 / (std sqrt(2 pi))."""
    z = _flat(x)
    return torch.exp(-0.5 * ((z - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))


@REWARDS.register("binary_1d", domain="1d", differentiable=False)
def binary_1d(device, low: float = 0.0, high: float = 1.0):
    """1 inside [low, high], else 0 (env id `1d/binary`)."""
    if not low < high:
        raise ValueError(f"binary_1d: need low < high, got [{low}, {high}]")

    def fn(samples, prompts, metadata):
        return interval_reward(samples, low, high)
    return fn


@REWARDS.register("gaussian_1d", domain="1d", differentiable=True)
def gaussian_1d(device, mean: float = -2.5, std: float = 0.8):
    """Density of N(mean, std^2) (env id `1d/gaussian`)."""
    if std <= 0:
        raise ValueError(f"gaussian_1d: std must be > 0, got {std}")

    def fn(samples, prompts, metadata):
        return gaussian_pdf_reward(samples, mean, std)
    return fn
