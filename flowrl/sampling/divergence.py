"""Divergence (trace of the Jacobian) of a batched vector field, exact and Hutchinson.

A field is a callable fn: (B, *shape) -> (B, *shape) whose sample b depends on input b only
(no batch norm across samples); div_b = sum_i d fn(x)_{b,i} / d x_{b,i} over the D = prod(shape)
coordinates of sample b. Both functions work under torch.no_grad() (they enable grad locally).

    exact_divergence       D vector-Jacobian products: exact, for small D (toys, 2-D flows).
    hutchinson_divergence  E_z[z^T J z] with E[z z^T] = I: K products, unbiased, for any D.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

Field = Callable[[torch.Tensor], torch.Tensor]


def _prepare(x: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """Leaf copy of x that requires grad (or x itself when building a graph through it)."""
    if create_graph and x.requires_grad:
        return x
    return x.detach().requires_grad_(True)


def _call(fn: Field, x: torch.Tensor) -> torch.Tensor:
    y = fn(x)
    if y.shape != x.shape:
        raise ValueError(f"vector field must map (B, *shape) to the same shape; got "
                         f"{tuple(x.shape)} -> {tuple(y.shape)}")
    return y


def _vjp(y: torch.Tensor, x: torch.Tensor, v: torch.Tensor, retain: bool, create: bool):
    """v^T dy/dx, shape of x; zeros where y does not depend on x."""
    if not y.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(y, x, grad_outputs=v, retain_graph=retain, create_graph=create,
                               allow_unused=True)
    return torch.zeros_like(x) if g is None else g


def exact_divergence(fn: Field, x: torch.Tensor, create_graph: bool = False,
                     return_output: bool = False):
    """Exact div fn(x) per sample by one vector-Jacobian product per coordinate.

    fn: (B, *shape) -> (B, *shape); x: (B, *shape), D = prod(shape) coordinates (cost: 1 forward +
    D backward passes, so keep D small). create_graph: keep the graph so the result can be
    differentiated (e.g. w.r.t. fn's parameters); otherwise results are detached.
    Returns div (B,) in x's dtype, or (div, fn(x)) when return_output.
    """
    with torch.enable_grad():
        xg = _prepare(x, create_graph)
        y = _call(fn, xg)
        yf = y.reshape(y.shape[0], -1)
        d = yf.shape[1]
        div = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
        for i in range(d):
            e = torch.zeros_like(yf)
            e[:, i] = 1.0
            g = _vjp(yf, xg, e, retain=create_graph or i < d - 1, create=create_graph)
            div = div + g.reshape(g.shape[0], -1)[:, i]
    if not create_graph:
        div, y = div.detach(), y.detach()
    return (div, y) if return_output else div


def sample_probe(like: torch.Tensor, probe: str = "rademacher",
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Probe z with E[z z^T] = I, same shape / dtype / device as `like`.

    probe="rademacher": entries +-1 with probability 1/2 (lower variance; exact when J is diagonal);
    probe="gaussian": standard normal entries.
    """
    if probe == "rademacher":
        z = torch.randint(0, 2, like.shape, generator=generator, device=like.device)
        return (2 * z - 1).to(like.dtype)
    if probe == "gaussian":
        return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    raise ValueError(f"unknown probe {probe!r}; expected 'rademacher' or 'gaussian'")


def hutchinson_divergence(fn: Field, x: torch.Tensor, num_probes: int = 1,
                          probe: str = "rademacher", generator: Optional[torch.Generator] = None,
                          create_graph: bool = False, return_output: bool = False):
    """Hutchinson estimate of div fn(x): mean over K probes of z^T (dfn/dx) z, one VJP per probe.

    fn: (B, *shape) -> (B, *shape); x: (B, *shape); num_probes K >= 1; probe: "rademacher" or
    "gaussian"; generator: torch.Generator on x's device for reproducible probes.
    Returns (mean (B,), stderr (B,)), stderr = sample std over probes / sqrt(K) (NaN when K = 1),
    or (mean, stderr, fn(x)) when return_output. Detached unless create_graph.
    """
    if num_probes < 1:
        raise ValueError(f"num_probes must be >= 1, got {num_probes}")
    with torch.enable_grad():
        xg = _prepare(x, create_graph)
        y = _call(fn, xg)
        ests = []
        for k in range(num_probes):
            z = sample_probe(xg, probe, generator)
            g = _vjp(y, xg, z, retain=create_graph or k < num_probes - 1, create=create_graph)
            ests.append((g * z).reshape(z.shape[0], -1).sum(1))
    ests = torch.stack(ests)  # (K, B)
    mean = ests.mean(0)
    if num_probes > 1:
        stderr = ests.std(0, unbiased=True) / math.sqrt(num_probes)
    else:
        stderr = torch.full_like(mean, float("nan"))
    if not create_graph:
        mean, stderr, y = mean.detach(), stderr.detach(), y.detach()
    return (mean, stderr, y) if return_output else (mean, stderr)
