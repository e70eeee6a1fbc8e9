"""Which prompt each sample of an epoch uses, on each rank: k samples per prompt, spread over ranks.

Flow-GRPO's k-repeat sampler as pure functions of (seed, epoch): no sampler state to checkpoint.
Groups are identified by an integer group id (never by decoding tokens).
"""
from __future__ import annotations

from typing import Tuple

import torch


def mix_seed(*parts: int) -> int:
    """A deterministic 63-bit seed from integers (seed, epoch, rank, ...)."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (int(p) & 0xFFFFFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h


def epoch_assignment(num_prompts: int, num_groups: int, group_size: int, world_size: int,
                     rank: int, seed: int, epoch: int, local: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """-> (prompt_idx (n,), group_idx (n,)) for this rank's n = num_groups*group_size/world_size samples.

    Prompts are drawn without replacement when the dataset has enough of them (else with), each
    repeated group_size times; the G*k list is shuffled with one generator shared by all ranks and
    split evenly, so a group's samples land on several ranks and the union over ranks is exact.
    local=True keeps each group's samples together, consecutive, on one rank (preference pairs)."""
    total = num_groups * group_size
    if total % world_size:
        raise ValueError(f"{total} samples per epoch do not split over {world_size} processes")
    g = torch.Generator().manual_seed(mix_seed(seed, epoch, 7))
    if num_prompts >= num_groups:
        prompts = torch.randperm(num_prompts, generator=g)[:num_groups]
    else:
        prompts = torch.randint(num_prompts, (num_groups,), generator=g)
    if local:
        groups = torch.randperm(num_groups, generator=g).repeat_interleave(group_size)
    else:
        groups = torch.arange(num_groups).repeat_interleave(group_size)[torch.randperm(total, generator=g)]
    n = total // world_size
    mine = groups[rank * n:(rank + 1) * n]
    return prompts[mine], mine + epoch * num_groups  # group ids unique across epochs


def group_shuffle(group_ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A permutation of rows that shuffles whole groups and keeps each group's rows consecutive."""
    uniq = torch.unique(group_ids)
    order = uniq[torch.randperm(len(uniq), generator=generator)]
    return torch.cat([torch.nonzero(group_ids == gid).flatten() for gid in order])
