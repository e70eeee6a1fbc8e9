"""Batch: a dict of per-sample tensors (batch dim first) plus per-sample Python lists.

Experience flows through the trainer as a Batch: rollouts add `latents`, `log_probs`, ...; the
reward step adds `rewards`; algorithms add `advantages`. Conditioning (text embeddings) is stored
as tensors too, so a Batch can be shuffled, split into minibatches and concatenated generically.
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, List, Sequence

import torch


class Batch:
    def __init__(self, tensors: Dict[str, torch.Tensor] = None, lists: Dict[str, list] = None):
        self.tensors: Dict[str, torch.Tensor] = dict(tensors or {})
        self.lists: Dict[str, list] = dict(lists or {})
        n = {len(v) for v in self.tensors.values()} | {len(v) for v in self.lists.values()}
        if len(n) > 1:
            sizes = {k: len(v) for k, v in {**self.tensors, **self.lists}.items()}
            raise ValueError(f"Batch fields disagree on the batch size: {sizes}")

    def __len__(self) -> int:
        for v in list(self.tensors.values()) + list(self.lists.values()):
            return len(v)
        return 0

    def __getitem__(self, key: str) -> Any:
        return self.tensors[key] if key in self.tensors else self.lists[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if len(self) and len(value) != len(self):
            raise ValueError(f"field {key!r} has {len(value)} rows, batch has {len(self)}")
        if isinstance(value, torch.Tensor):
            self.tensors[key] = value
        else:
            self.lists[key] = list(value)

    def __contains__(self, key: str) -> bool:
        return key in self.tensors or key in self.lists

    def select(self, index: torch.Tensor) -> "Batch":
        """Rows `index` (1-D long tensor) of every field."""
        idx = index.tolist()
        return Batch({k: v[index.to(v.device)] for k, v in self.tensors.items()},
                     {k: [v[i] for i in idx] for k, v in self.lists.items()})

    def split(self, size: int) -> Iterator["Batch"]:
        for start in range(0, len(self), size):
            yield self.select(torch.arange(start, min(start + size, len(self))))

    @staticmethod
    def cat(batches: Sequence["Batch"]) -> "Batch":
        first = batches[0]
        return Batch({k: torch.cat([b.tensors[k] for b in batches]) for k in first.tensors},
                     {k: [x for b in batches for x in b.lists[k]] for k in first.lists})

    def to(self, device) -> "Batch":
        return Batch({k: v.to(device) for k, v in self.tensors.items()}, self.lists)


def stack_cond(conds: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """Concatenate per-batch conditioning dicts along the batch dim."""
    return {k: torch.cat([c[k] for c in conds]) for k in conds[0]} if conds and conds[0] else {}
