"""2-D flow on two moons: an MLP velocity field trained by conditional flow matching, then cached.

The base model is the seed's (000): MLP(x, sigma) of width 256 with ELU, trained on
sklearn.datasets.make_moons(noise=0.05) with the OT path x_sigma = (1-sigma)*x0 + sigma*eps and
target v = eps - x0 (project convention, flowrl.sampling.sde). Fine-tuning trains the whole MLP;
the reference for KL is a frozen copy of the base weights.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from flowrl.cache import cached_state_dict
from flowrl.protocols import Runtime
from flowrl.registry import POLICIES
from flowrl.sampling.schedule import shifted_sigmas


class VelocityMLP(nn.Module):
    """v(x, sigma): (B, dim), (B,) -> (B, dim). sigma enters as an extra input feature."""

    def __init__(self, dim: int = 2, hidden: int = 256, depth: int = 3):
        super().__init__()
        layers, width = [], dim + 1
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ELU()]
            width = hidden
        self.body = nn.Sequential(*layers, nn.Linear(width, dim))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([x, sigma.to(x.dtype).view(-1, 1)], dim=1))


def sample_dataset(name: str, n: int, seed: int) -> torch.Tensor:
    """(n, 2) float32 points of a 2-D dataset (`moons`: make_moons(noise=0.05))."""
    from sklearn.datasets import make_moons
    if name != "moons":
        raise ValueError(f"unknown 2-D dataset {name!r}; known: 'moons'")
    x, _ = make_moons(n_samples=n, noise=0.05, random_state=seed)
    return torch.from_numpy(x).float()


def cfm_loss(net: nn.Module, x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Conditional flow matching: mean ||v(x_sigma, sigma) - (eps - x0)||^2 over batch and dims."""
    s = sigma.view(-1, *([1] * (x0.ndim - 1)))
    x = (1 - s) * x0 + s * eps
    return ((net(x, sigma) - (eps - x0)) ** 2).mean()


def train_base_flow(dataset: str, hidden: int, depth: int, iters: int, batch: int, lr: float,
                    seed: int) -> Dict[str, torch.Tensor]:
    """Train VelocityMLP by CFM with Adam and cosine decay; returns its state dict."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = VelocityMLP(2, hidden, depth)
    data = sample_dataset(dataset, 20000, seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters)
    for _ in range(iters):
        x0 = data[torch.randint(len(data), (batch,), generator=g)]
        loss = cfm_loss(net, x0, torch.randn(x0.shape, generator=g), torch.rand(batch, generator=g))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.state_dict()


class Toy2DPolicy:
    sample_shape = (2,)

    def __init__(self, net: VelocityMLP, device: torch.device, shift: float = 1.0):
        self.net = net.to(device)
        self.model = self.net
        self.ref = copy.deepcopy(self.net).requires_grad_(False).eval()
        self.device, self.shift = device, shift
        self._use_ref = False

    def sigmas(self, num_steps: int) -> torch.Tensor:
        return shifted_sigmas(num_steps, self.shift)

    def encode(self, prompts: Sequence[str]) -> Dict[str, torch.Tensor]:
        return {}  # unconditional

    def velocity(self, x, sigma, cond=None, guidance: Optional[float] = None) -> torch.Tensor:
        return (self.ref if self._use_ref else self.model)(x, sigma)

    @contextmanager
    def reference(self):
        self._use_ref = True
        try:
            yield self
        finally:
            self._use_ref = False

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def trainable_state_dict(self) -> Dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.net.state_dict().items()}

    def load_trainable_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        self.net.load_state_dict(state)

    def export(self, directory: Path) -> None:
        pass


@POLICIES.register("toy2d")
def toy2d(runtime: Runtime, dataset: str = "moons", hidden: int = 256, depth: int = 3,
          base_iters: int = 4000, base_batch: int = 256, base_lr: float = 3e-3, base_seed: int = 0,
          shift: float = 1.0) -> Toy2DPolicy:
    """Options (config.model): dataset, MLP hidden width/depth, and how the base flow is trained
    (iterations, batch, lr, seed): these form the cache key, so changing one retrains."""
    key = f"toy2d-{dataset}-h{hidden}-d{depth}-it{base_iters}-b{base_batch}-lr{base_lr:g}-s{base_seed}"
    state = cached_state_dict(key, lambda: train_base_flow(dataset, hidden, depth, base_iters,
                                                           base_batch, base_lr, base_seed),
                              root=runtime.cache_dir)
    net = VelocityMLP(2, hidden, depth)
    net.load_state_dict(state)
    return Toy2DPolicy(net, runtime.device, shift)
