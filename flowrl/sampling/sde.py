"""One step of the sampler, deterministic (ODE) or stochastic with its Gaussian log-probability.

Convention, project-wide: sigma in [0, 1]; sigma = 1 is pure noise, sigma = 0 is data;
x_sigma = (1 - sigma) * x0 + sigma * eps; the velocity is v = dx/dsigma (target eps - x0).
Sampling walks a decreasing schedule sigma_0 = 1 > ... > sigma_S = 0, so dt = sigma' - sigma < 0.

The stochastic steps are Flow-GRPO's (arXiv 2505.05470, public code yifan123/flow_grpo):
  "sde": the reverse SDE with the same marginals as the ODE, std_t = a * sqrt(sigma / (1 - sigma)),
  "cps": coefficient-preserving sampling, std = sigma' * sin(a * pi / 2).
Log-probabilities are computed in float32 and AVERAGED over the non-batch dimensions (C, H, W or
the 2 coordinates), as Flow-GRPO does; this is why clip ranges of ~1e-4 are used for images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class StepOut:
    """Result of one sampler step. Shapes: sample/mean (B, *shape), log_prob (B,), std (B,)."""
    sample: torch.Tensor
    log_prob: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


def _bcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) or () -> (B, 1, ..., 1) broadcastable against `like`."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        t = t.expand(like.shape[0])
    return t.view(-1, *([1] * (like.ndim - 1)))


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, std^2 I) per element, averaged over non-batch dims. std: (B,) > 0. -> (B,)."""
    s = _bcast(std, x)
    lp = -((x - mean) ** 2) / (2 * s ** 2) - torch.log(s) - _LOG_SQRT_2PI
    return lp.mean(dim=tuple(range(1, x.ndim)))


def sde_mean_std(x, v, sigma, sigma_next, noise_level: float, sigma_max: float, kind: str = "sde"):
    """Mean (B, *shape) and std (B,) of the Gaussian transition x_sigma -> x_sigma'. All fp32.

    sde:  std_t = a*sqrt(sigma/(1 - sigma~)), sigma~ = sigma_max where sigma == 1 (Flow-GRPO uses
          sigmas[1]), mean = x*(1 + std_t^2/(2 sigma)*dt) + v*(1 + std_t^2*(1 - sigma)/(2 sigma))*dt,
          transition std = std_t*sqrt(-dt).
    cps:  std = sigma'*sin(a*pi/2), x0^ = x - sigma*v, x1^ = x + (1 - sigma)*v,
          mean = x0^*(1 - sigma') + x1^*sqrt(sigma'^2 - std^2).
    """
    x, v = x.float(), v.float()
    s, s_next = _bcast(sigma, x).float(), _bcast(sigma_next, x).float()
    dt = s_next - s
    if kind == "sde":
        denom = 1 - torch.where(s >= 1, torch.full_like(s, sigma_max), s)
        std_t = noise_level * torch.sqrt(s / denom)
        mean = x * (1 + std_t ** 2 / (2 * s) * dt) + v * (1 + std_t ** 2 * (1 - s) / (2 * s)) * dt
        std = std_t * torch.sqrt(-dt)
    elif kind == "cps":
        std = s_next * math.sin(noise_level * math.pi / 2)
        x0_hat, x1_hat = x - s * v, x + (1 - s) * v
        mean = x0_hat * (1 - s_next) + x1_hat * torch.sqrt(s_next ** 2 - std ** 2)
    else:
        raise ValueError(f"unknown sde kind {kind!r}; use 'sde' or 'cps'")
    return mean, std.flatten()


def sde_step(x, v, sigma, sigma_next, noise_level: float, sigma_max: float, kind: str = "sde",
             prev_sample: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
             noise: Optional[torch.Tensor] = None) -> StepOut:
    """Stochastic step with log-prob. If `prev_sample` is given its log-prob is scored (training);
    otherwise a sample is drawn with `noise` (B, *shape) or fresh noise from `generator`."""
    mean, std = sde_mean_std(x, v, sigma, sigma_next, noise_level, sigma_max, kind)
    if prev_sample is None:
        if noise is None:
            dev = generator.device if generator is not None else mean.device
            noise = torch.randn(mean.shape, generator=generator, device=dev).to(mean.device)
        prev_sample = mean + _bcast(std, mean) * noise.float()
    log_prob = gaussian_log_prob(prev_sample.detach().float(), mean, std)
    return StepOut(prev_sample, log_prob, mean, std)


def ode_step(x: torch.Tensor, v: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """Deterministic Euler step x' = x + (sigma' - sigma) * v. -> (B, *shape), dtype of x."""
    return x + (_bcast(sigma_next, x) - _bcast(sigma, x)) * v.to(x.dtype)


def kl_same_std(mean: torch.Tensor, mean_ref: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, std^2) || N(mean_ref, std^2)) per element, averaged over non-batch dims -> (B,).

    = mean_CHW((mean - mean_ref)^2) / (2 std^2), Flow-GRPO's KL to the reference policy."""
    d = ((mean.float() - mean_ref.float()) ** 2).mean(dim=tuple(range(1, mean.ndim)))
    return d / (2 * std.float() ** 2)
