"""A frozen 1-D base flow with the EXACT velocity of a Gaussian mixture (no training, no cache).

Default data: p = 1/2 N(0, 1) + 1/2 N(3, 0.4^2) (diffusiongym's `1d/gmm`, seed 002). Project
convention (flowrl.sampling.sde): x_sigma = (1 - sigma) * x0 + sigma * eps, v = E[eps - x0 | x_sigma].
For one component N(m, s^2):  x_sigma ~ N((1 - sigma) m, var), var = (1 - sigma)^2 s^2 + sigma^2,
    E[eps | x] = sigma / var * (x - (1 - sigma) m),  E[x0 | x] = m + (1 - sigma) s^2 / var * (x - (1 - sigma) m),
and the mixture velocity is the responsibility-weighted sum of the per-component ones.
The policy has no trainable parameters: it is a base model for value matching (flowrl.envs).
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from flowrl.protocols import Runtime
from flowrl.registry import POLICIES
from flowrl.sampling.schedule import shifted_sigmas


def gmm_velocity(x: torch.Tensor, sigma: torch.Tensor, means: torch.Tensor, stds: torch.Tensor,
                 weights: torch.Tensor) -> torch.Tensor:
    """Exact flow velocity of a 1-D Gaussian mixture. x (B, 1), sigma (B,) in [0, 1]; means, stds,
    weights (K,) (weights sum to 1). -> (B, 1), dtype of x. Computed in float64."""
    if x.ndim != 2 or x.shape[1] != 1:
        raise ValueError(f"gmm_velocity expects x of shape (B, 1), got {tuple(x.shape)}")
    z = x.double()                                        # (B, 1)
    s = sigma.double().reshape(-1, 1).expand(z.shape[0], 1)   # (B, 1)
    m, sd, w = means.double()[None], stds.double()[None], weights.double()[None]   # (1, K)
    mu = (1 - s) * m                                      # (B, K) component mean of x_sigma
    var = (1 - s) ** 2 * sd ** 2 + s ** 2                 # (B, K)
    log_resp = torch.log(w) - 0.5 * torch.log(var) - 0.5 * (z - mu) ** 2 / var
    resp = torch.softmax(log_resp, dim=1)                 # (B, K)
    eps_hat = s / var * (z - mu)
    x0_hat = m + (1 - s) * sd ** 2 / var * (z - mu)
    return (resp * (eps_hat - x0_hat)).sum(dim=1, keepdim=True).to(x.dtype)


def gmm_sample(n: int, means: torch.Tensor, stds: torch.Tensor, weights: torch.Tensor,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """n exact samples (n, 1) of the mixture (for tests and reference statistics)."""
    k = torch.multinomial(weights.double(), n, replacement=True, generator=generator)
    return (means[k] + stds[k] * torch.randn(n, generator=generator)).float()[:, None]


class GMMField(nn.Module):
    """The mixture as buffers (so .to(device) moves it); forward(x, sigma) is gmm_velocity."""

    def __init__(self, means: Sequence[float], stds: Sequence[float], weights: Sequence[float]):
        super().__init__()
        if not (len(means) == len(stds) == len(weights)) or not means:
            raise ValueError("gmm1d: means, stds and weights need the same non-zero length")
        if min(stds) <= 0 or min(weights) <= 0:
            raise ValueError(f"gmm1d: stds and weights must be > 0, got {stds}, {weights}")
        w = torch.tensor(weights, dtype=torch.float64)
        self.register_buffer("means", torch.tensor(means, dtype=torch.float64))
        self.register_buffer("stds", torch.tensor(stds, dtype=torch.float64))
        self.register_buffer("weights", w / w.sum())

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return gmm_velocity(x, sigma, self.means, self.stds, self.weights)


class GMM1DPolicy:
    """Policy protocol (flowrl.protocols.Policy) around GMMField; nothing to train or export."""
    sample_shape = (1,)

    def __init__(self, net: GMMField, device: torch.device, shift: float = 1.0):
        self.net = net.to(device)
        self.model = self.net
        self.device, self.shift = device, shift

    def sigmas(self, num_steps: int) -> torch.Tensor:
        return shifted_sigmas(num_steps, self.shift)

    def encode(self, prompts: Sequence[str]) -> Dict[str, torch.Tensor]:
        return {}

    def velocity(self, x, sigma, cond=None, guidance: Optional[float] = None) -> torch.Tensor:
        return self.net(x, sigma)

    @contextmanager
    def reference(self):
        yield self            # the base is frozen: the reference is the model itself

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def trainable_state_dict(self) -> Dict[str, torch.Tensor]:
        return {}

    def load_trainable_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"gmm1d has no trainable weights; got {sorted(state)[:3]}...")

    def export(self, directory: Path) -> None:
        pass


@POLICIES.register("gmm1d", domain="1d")
def gmm1d(runtime: Runtime, means=(0.0, 3.0), stds=(1.0, 0.4), weights=(0.5, 0.5),
          shift: float = 1.0) -> GMM1DPolicy:
    """Options (config.model): the mixture's means, stds, weights (normalised), schedule shift."""
    return GMM1DPolicy(GMMField(list(means), list(stds), list(weights)), runtime.device, shift)
