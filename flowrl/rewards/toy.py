"""Rewards for 2-D samples (B, 2): the seed's (000) moons unlearning and fidelity rewards."""
from __future__ import annotations

from typing import Dict

import torch
from torch import nn

from flowrl.cache import cached_state_dict
from flowrl.registry import REWARDS


def fidelity_reward(x: torch.Tensor) -> torch.Tensor:
    """max(1 - |x^2 + y^2 - 1|, 1 - |(x-1)^2 + (y-0.5)^2 - 1|): 1 on either moon's centre circle.
    x (B, 2) -> (B,). At (1, 0): 1.0; at (0, 0): 0.75."""
    a, b = x[:, 0], x[:, 1]
    outer = 1 - torch.abs(a ** 2 + b ** 2 - 1)
    inner = 1 - torch.abs((a - 1) ** 2 + (b - 0.5) ** 2 - 1)
    return torch.maximum(outer, inner)


def _classifier(hidden: int = 64) -> nn.Module:
    return nn.Sequential(nn.Linear(2, hidden), nn.ELU(), nn.Linear(hidden, hidden), nn.ELU(),
                         nn.Linear(hidden, 1))


def train_moons_classifier(seed: int = 0, iters: int = 1500) -> Dict[str, torch.Tensor]:
    """Logistic MLP on make_moons(noise=0.05): logit > 0 means label 1, the LOWER moon."""
    from sklearn.datasets import make_moons
    torch.manual_seed(seed)
    x, y = make_moons(n_samples=4000, noise=0.05, random_state=seed)
    x, y = torch.from_numpy(x).float(), torch.from_numpy(y).float()
    net = _classifier()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(iters):
        loss = nn.functional.binary_cross_entropy_with_logits(net(x)[:, 0], y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.state_dict()


@REWARDS.register("moons_unlearning", domain="2d", differentiable=True)
def moons_unlearning(device, seed: int = 0, cache_dir: str = ""):
    """reward = P(upper moon) = 1 - sigmoid(classifier logit of the lower moon), in [0, 1]."""
    state = cached_state_dict(f"moons-classifier-s{seed}", lambda: train_moons_classifier(seed),
                              root=cache_dir or None)
    net = _classifier()
    net.load_state_dict(state)
    net.to(device).requires_grad_(False).eval()

    def fn(samples, prompts, metadata):
        return 1 - torch.sigmoid(net(samples.to(device).float())[:, 0])
    return fn


@REWARDS.register("moons_fidelity", domain="2d", differentiable=True)
def moons_fidelity(device):
    def fn(samples, prompts, metadata):
        return fidelity_reward(samples.float())
    return fn
