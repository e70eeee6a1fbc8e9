"""Exponential moving average of the trainable weights (Flow-GRPO: decay 0.9 every 8 steps)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, List

import torch


class EMA:
    def __init__(self, params: List[torch.nn.Parameter], decay: float = 0.9, every: int = 8):
        self.params, self.decay, self.every = list(params), decay, every
        self.shadow = [p.detach().clone().float() for p in self.params]

    @torch.no_grad()
    def step(self, optimizer_step: int) -> None:
        """shadow = decay*shadow + (1-decay)*param, on every `every`-th optimizer step."""
        if optimizer_step % self.every:
            return
        for s, p in zip(self.shadow, self.params):
            s.mul_(self.decay).add_(p.detach().float(), alpha=1 - self.decay)

    @contextmanager
    @torch.no_grad()
    def applied(self):
        """Temporarily load the EMA weights into the parameters (for evaluation)."""
        backup = [p.detach().clone() for p in self.params]
        for s, p in zip(self.shadow, self.params):
            p.copy_(s.to(p.dtype))
        try:
            yield
        finally:
            for b, p in zip(backup, self.params):
                p.copy_(b)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {str(i): s for i, s in enumerate(self.shadow)}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        if len(state) != len(self.shadow):
            raise ValueError(f"EMA state has {len(state)} tensors, model has {len(self.shadow)}")
        from flowrl.fsdp import shard_like
        self.shadow = [shard_like(state[str(i)].float().to(p.device), p.detach().float())
                       for i, p in enumerate(self.params)]
