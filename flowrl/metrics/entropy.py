"""Log-likelihood and differential entropy of a flow model by the instantaneous change of variables.

Convention (project-wide): sigma in [0, 1], sigma = 1 is noise N(0, I), sigma = 0 is data,
x_sigma = (1 - sigma) x0 + sigma eps, velocity v(x, sigma) = dx/dsigma (target eps - x0), with
signature velocity(x: (B, *shape), sigma: (B,)) -> (B, *shape).

Along an ODE path d/dsigma log p_sigma(x_sigma) = -div v(x_sigma, sigma), hence

    log p0(x0) = log N(x1; 0, I) + int_0^1 div v(x_sigma, sigma) dsigma.

Integrators on a uniform grid of num_steps steps (both cost ~num_steps divergence evaluations):
  "midpoint": explicit midpoint for x, divergence at the midpoint (2nd order: x and the integral).
  "euler":    Euler for x, trapezoidal rule for the divergence integral; the divergence at a step's
              end is reused at the next step's start. 2nd order for the integral but x is 1st order.
For a target N(0, s^2 I) in d = 2 with 100 steps, |entropy error| is < 1e-3 nats for s in
[0.1, 3] with "midpoint" (both the sampling and the likelihood direction) and with "euler" in
flow_entropy; plain Euler with the divergence at the step start is off by ~0.02 nats
(h/2 * d * (c(1) - c(0))), and "euler" in flow_log_likelihood is off by 0.01-0.08 nats because x1
is 1st order. Hence "midpoint" is the default.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch

from flowrl.sampling.divergence import exact_divergence, hutchinson_divergence

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def standard_normal_log_prob(x: torch.Tensor) -> torch.Tensor:
    """log N(x; 0, I) summed over all non-batch dims. x: (B, *shape) -> (B,) float64."""
    xf = x.reshape(x.shape[0], -1).to(torch.float64)
    return -0.5 * (xf * xf).sum(1) - 0.5 * xf.shape[1] * math.log(2.0 * math.pi)


def velocity_and_divergence(velocity: Velocity, x: torch.Tensor, sigma: float,
                            divergence: str = "exact", num_probes: int = 1,
                            probe: str = "rademacher",
                            generator: Optional[torch.Generator] = None):
    """v(x, sigma) (B, *shape) (detached) and div_x v (B,) float64 at one noise level sigma.

    divergence: "exact" (D backward passes) or "hutchinson" (num_probes backward passes, fresh
    probes from `generator` at every call, unbiased).
    """
    s = torch.full((x.shape[0],), float(sigma), dtype=x.dtype, device=x.device)
    fn = lambda z: velocity(z, s)  # noqa: E731
    if divergence == "exact":
        div, v = exact_divergence(fn, x, return_output=True)
    elif divergence == "hutchinson":
        div, _, v = hutchinson_divergence(fn, x, num_probes=num_probes, probe=probe,
                                          generator=generator, return_output=True)
    else:
        raise ValueError(f"unknown divergence {divergence!r}; expected 'exact' or 'hutchinson'")
    return v, div.to(torch.float64)


def integrate_with_divergence(velocity: Velocity, x: torch.Tensor, sigmas: torch.Tensor,
                              method: str = "midpoint", **div_kwargs):
    """Solve dx/dsigma = v(x, sigma) along the grid `sigmas` and integrate div v along the path.

    x: (B, *shape) state at sigmas[0]; sigmas: (K + 1,) monotone grid in [0, 1] (increasing: data ->
    noise, decreasing: noise -> data). method: "midpoint" or "euler" (see the module docstring).
    div_kwargs: divergence, num_probes, probe, generator (velocity_and_divergence).
    Returns (x at sigmas[-1] (B, *shape), int_{sigmas[0]}^{sigmas[-1]} div v dsigma (B,) float64),
    so log p(x_end) = log p(x_start) - integral.
    """
    grid = [float(s) for s in sigmas]
    if len(grid) < 2:
        raise ValueError("need at least one step (len(sigmas) >= 2)")
    x = x.detach()
    acc = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    if method == "midpoint":
        for s0, s1 in zip(grid[:-1], grid[1:]):
            h = s1 - s0
            with torch.no_grad():
                v0 = velocity(x, torch.full((x.shape[0],), s0, dtype=x.dtype, device=x.device))
            vm, dm = velocity_and_divergence(velocity, x + 0.5 * h * v0, s0 + 0.5 * h, **div_kwargs)
            x = x + h * vm
            acc = acc + h * dm
    elif method == "euler":
        v, d = velocity_and_divergence(velocity, x, grid[0], **div_kwargs)
        for s0, s1 in zip(grid[:-1], grid[1:]):
            h = s1 - s0
            x = x + h * v
            v, d1 = velocity_and_divergence(velocity, x, s1, **div_kwargs)
            acc = acc + 0.5 * h * (d + d1)
            d = d1
    else:
        raise ValueError(f"unknown method {method!r}; expected 'midpoint' or 'euler'")
    return x, acc


def _grid(num_steps: int, start: float, end: float, device) -> torch.Tensor:
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return torch.linspace(start, end, num_steps + 1, dtype=torch.float64, device=device)


def flow_log_likelihood(velocity: Velocity, x0: torch.Tensor, num_steps: int = 100,
                        divergence: str = "exact", num_probes: int = 1, probe: str = "rademacher",
                        generator: Optional[torch.Generator] = None,
                        method: str = "midpoint") -> torch.Tensor:
    """log p0(x0) of the flow's data distribution, nats, by integrating x0 from sigma = 0 up to 1.

    velocity(x (B, *shape), sigma (B,)) -> (B, *shape); x0: (B, *shape) data points.
    divergence: "exact" (small D) or "hutchinson" (num_probes `probe` probes per step, unbiased).
    Returns (B,) float64: log N(x1; 0, I) + int_0^1 div v dsigma.
    """
    sig = _grid(num_steps, 0.0, 1.0, x0.device)
    x1, int_div = integrate_with_divergence(
        velocity, x0, sig, method=method, divergence=divergence, num_probes=num_probes,
        probe=probe, generator=generator)
    return standard_normal_log_prob(x1) + int_div


def sample_with_log_prob(velocity: Velocity, noise: torch.Tensor, num_steps: int = 100,
                         divergence: str = "exact", num_probes: int = 1, probe: str = "rademacher",
                         generator: Optional[torch.Generator] = None, method: str = "midpoint"):
    """ODE sample x0 from noise (sigma 1 -> 0) and its model log-density along the same path.

    noise: (B, *shape) standard normal. Returns (x0 (B, *shape), log p0(x0) (B,) float64) with
    log p0(x0) = log N(noise; 0, I) + int_0^1 div v dsigma (the "ODE log-prob").
    """
    sig = _grid(num_steps, 1.0, 0.0, noise.device)
    x0, int_div = integrate_with_divergence(
        velocity, noise, sig, method=method, divergence=divergence, num_probes=num_probes,
        probe=probe, generator=generator)
    return x0, standard_normal_log_prob(noise) - int_div


def flow_entropy(velocity: Velocity, noise: torch.Tensor, num_steps: int = 100,
                 divergence: str = "exact", num_probes: int = 1, probe: str = "rademacher",
                 generator: Optional[torch.Generator] = None,
                 method: str = "midpoint") -> Tuple[torch.Tensor, torch.Tensor]:
    """Differential entropy H(p0) = -E log p0(x0) of the flow's samples in nats, Monte Carlo.

    noise: (B, *shape) standard normal, B >= 2. Returns (entropy, standard error), 0-dim float64
    tensors; the standard error is std(log p0) / sqrt(B) and includes Hutchinson noise.
    """
    if noise.shape[0] < 2:
        raise ValueError("flow_entropy needs at least 2 noise samples for a standard error")
    _, log_p = sample_with_log_prob(velocity, noise, num_steps=num_steps, divergence=divergence,
                                    num_probes=num_probes, probe=probe, generator=generator,
                                    method=method)
    return -log_p.mean(), log_p.std() / math.sqrt(log_p.shape[0])
