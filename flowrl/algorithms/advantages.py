"""Advantages from rewards: per-prompt groups (GRPO) and a per-prompt running tracker (DDPO)."""
from __future__ import annotations

from collections import deque
from typing import Dict, Hashable, Sequence

import torch


def group_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, std_per_group: bool = False,
                     eps: float = 1e-4, clip: float = 5.0):
    """GRPO advantages A = (r - mean_group) / (std + eps), clipped to [-clip, clip].

    rewards (N,) float; group_ids (N,) long, equal ids = same prompt group.
    std is the std of ALL rewards (Flow-GRPO's default) or of the group (`std_per_group`); both
    are population stds (unbiased=False). -> (advantages (N,), zero_std (N,) bool: the sample's
    group has no reward spread, so its advantages are 0 and carry no signal)."""
    rewards = rewards.double()
    uniq, inv = torch.unique(group_ids, return_inverse=True)
    g = len(uniq)
    count = torch.zeros(g, dtype=torch.float64).index_add_(0, inv, torch.ones_like(rewards))
    mean = torch.zeros(g, dtype=torch.float64).index_add_(0, inv, rewards) / count
    centered = rewards - mean[inv]
    var_g = torch.zeros(g, dtype=torch.float64).index_add_(0, inv, centered ** 2) / count
    zero_std = (var_g[inv] <= 1e-12)
    std = var_g.sqrt()[inv] if std_per_group else rewards.std(unbiased=False).expand_as(rewards)
    adv = (centered / (std + eps)).clamp(-clip, clip)
    return adv.float(), zero_std


class PerPromptStatTracker:
    """DDPO's tracker: a deque of the last `buffer_size` rewards per prompt. Prompts with fewer than
    `min_count` rewards stored are normalised with the statistics of the whole batch."""

    def __init__(self, buffer_size: int = 32, min_count: int = 16):
        self.buffer_size, self.min_count = buffer_size, min_count
        self.stats: Dict[Hashable, deque] = {}

    def update(self, keys: Sequence[Hashable], rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        """keys: N prompt keys; rewards (N,). -> advantages (N,) float."""
        rewards = rewards.double()
        adv = torch.empty_like(rewards)
        keys = list(keys)
        for key in dict.fromkeys(keys):
            idx = torch.tensor([i for i, k in enumerate(keys) if k == key])
            buf = self.stats.setdefault(key, deque(maxlen=self.buffer_size))
            buf.extend(rewards[idx].tolist())
            ref = torch.tensor(list(buf), dtype=torch.float64) if len(buf) >= self.min_count else rewards
            adv[idx] = (rewards[idx] - ref.mean()) / (ref.std(unbiased=False) + eps)
        return adv.float()
