"""One step of the sampler, deterministic (ODE) or stochastic with its Gaussian log-probability.

Convention, project-wide: sigma in [0, 1]; sigma = 1 is pure noise, sigma = 0 is data;
x_sigma = (1 - sigma) * x0 + sigma * eps; the velocity is v = dx/dsigma (target eps - x0).
Sampling walks a decreasing schedule sigma_0 = 1 > ... > sigma_S = 0, so dt = sigma' - sigma < 0.

The stochastic steps are Flow-GRPO's (arXiv 2505.05470, public code yifan123/flow_grpo):
  "sde": the reverse SDE with the same marginals as the ODE, std_t = a * sqrt(sigma / (1 - sigma)),
  "cps": coefficient-preserving sampling, std = sigma' * sin(a * pi / 2).
Log-probabilities are computed in float32 and AVERAGED over the non-batch dimensions (C, H, W or
the 2 coordinates), as Flow-GRPO does; this is why clip ranges of ~1e-4 are used for images.

Two quantities exist in two forms (`form`), because Flow-GRPO's code is not the exact Gaussian one:
  CPS log-prob: "exact" = the Gaussian density above; "flow_grpo" = -mean((x' - mean)^2), no 1/(2 std^2)
    and no constants (Flow-GRPO's "remove all constants"): log-ratios differ by the factor 1/(2 std^2),
    so clip ranges tuned for one form do not transfer. (SDE log-probs are the exact density in both.)
  KL to the reference: "exact" = mean((mean - mean_ref)^2) / (2 std^2) with std the TRANSITION std;
    "flow_grpo" divides by 2 std_t^2 instead (sde: std_t = std / sqrt(sigma - sigma'), without the
    |d sigma| factor, i.e. exact x |d sigma|; cps: std_t = std, the two forms agree).
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


FORMS = ("exact", "flow_grpo")


def check_form(form: str, what: str) -> str:
    """`form` if it is one of FORMS, else ValueError naming the option `what`."""
    if form not in FORMS:
        raise ValueError(f"{what} must be 'exact' or 'flow_grpo', got {form!r}")
    return form


def sde_step(x, v, sigma, sigma_next, noise_level: float, sigma_max: float, kind: str = "sde",
             prev_sample: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
             noise: Optional[torch.Tensor] = None, cps_log_prob: str = "exact") -> StepOut:
    """Stochastic step with log-prob. If `prev_sample` is given its log-prob is scored (training);
    otherwise a sample is drawn with `noise` (B, *shape) or fresh noise from `generator`.
    cps_log_prob: the CPS log-prob form, "exact" or "flow_grpo" (module docstring)."""
    check_form(cps_log_prob, "cps_log_prob")
    mean, std = sde_mean_std(x, v, sigma, sigma_next, noise_level, sigma_max, kind)
    if prev_sample is None:
        if noise is None:
            dev = generator.device if generator is not None else mean.device
            noise = torch.randn(mean.shape, generator=generator, device=dev).to(mean.device)
        prev_sample = mean + _bcast(std, mean) * noise.float()
    if kind == "cps" and cps_log_prob == "flow_grpo":
        d = prev_sample.detach().float() - mean
        log_prob = -(d ** 2).mean(dim=tuple(range(1, d.ndim)))
    else:
        log_prob = gaussian_log_prob(prev_sample.detach().float(), mean, std)
    return StepOut(prev_sample, log_prob, mean, std)


def ode_step(x: torch.Tensor, v: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """Deterministic Euler step x' = x + (sigma' - sigma) * v. -> (B, *shape), dtype of x."""
    return x + (_bcast(sigma_next, x) - _bcast(sigma, x)) * v.to(x.dtype)


def kl_same_std(mean: torch.Tensor, mean_ref: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, std^2) || N(mean_ref, std^2)) per element, averaged over non-batch dims -> (B,).

    = mean_CHW((mean - mean_ref)^2) / (2 std^2); std (B,) > 0."""
    d = ((mean.float() - mean_ref.float()) ** 2).mean(dim=tuple(range(1, mean.ndim)))
    return d / (2 * std.float() ** 2)


def step_kl(mean: torch.Tensor, mean_ref: torch.Tensor, std: torch.Tensor, sigma, sigma_next,
            kind: str = "sde", form: str = "exact") -> torch.Tensor:
    """KL penalty (B,) of one transition to the reference's, in `form` (module docstring).
    mean, mean_ref (B, *shape); std (B,) the transition std; sigma > sigma_next, (B,) or ()."""
    check_form(form, "algorithm.kl")
    scale = std.float()
    if form == "flow_grpo" and kind == "sde":
        dt = torch.as_tensor(sigma, dtype=torch.float32) - torch.as_tensor(sigma_next, dtype=torch.float32)
        scale = scale / torch.sqrt(dt.to(scale.device)).expand_as(scale)
    return kl_same_std(mean, mean_ref, scale)
