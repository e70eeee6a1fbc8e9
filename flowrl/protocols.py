"""The three small interfaces the trainer composes. Nothing here imports a concrete model."""
from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Protocol, Sequence, Tuple

import torch
from torch import nn

from flowrl.batch import Batch


@dataclass
class Runtime:
    """What a policy factory gets besides its own options."""
    device: torch.device
    weight_dtype: torch.dtype = torch.float32   # dtype of the frozen weights (mixed precision)
    cache_dir: Path = Path(".")                 # where base models are trained/cached
    seed: int = 0


class Policy(Protocol):
    """A flow model fine-tuned by the trainer. Convention: see flowrl.sampling.sde."""
    net: nn.Module      # the module holding the trainable parameters (unwrapped)
    model: nn.Module    # the same, possibly wrapped by accelerate (DDP/DeepSpeed); forward goes here
    sample_shape: Tuple[int, ...]

    def sigmas(self, num_steps: int) -> torch.Tensor: ...          # (S+1,) decreasing, 1 -> 0
    def encode(self, prompts: Sequence[str]) -> Dict[str, torch.Tensor]: ...   # per-sample cond
    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Dict[str, torch.Tensor],
                 guidance: Optional[float] = None) -> torch.Tensor: ...
    # a policy with CFG also takes detach_uncond=True (no gradient through the unconditional half)
    def reference(self) -> AbstractContextManager: ...            # velocity() of the frozen base
    def decode(self, x: torch.Tensor) -> torch.Tensor: ...        # latents -> reward input
    def trainable_state_dict(self) -> Dict[str, torch.Tensor]: ...
    def load_trainable_state_dict(self, state: Dict[str, torch.Tensor]) -> None: ...
    def export(self, directory: Path) -> None: ...                # extra artefacts per checkpoint


class Algorithm(Protocol):
    """A fine-tuning method. Per epoch the trainer rolls out (`sampling`: "sde" records log-probs
    on the stochastic steps, "ode" samples deterministically), scores on each rank, gathers the
    rewards over ranks, then calls `prepare` and feeds `loss_terms` to the optimizer. It never
    branches on the algorithm's name."""
    sampling: str

    def setup(self, policy: Policy, reward) -> None: ...          # bind what the method needs
    def bind_run_dir(self, run_dir: Path) -> None: ...            # where it may keep files (labels)
    def collect(self, policy: Policy, epoch: int, rank: int, world_size: int,
                num_samples: int) -> Optional[Batch]: ...          # own data (None: roll out)
    def prepare(self, policy: Policy, batch: Batch, gathered: Batch,
                rank_slice: slice) -> Dict[str, float]: ...        # advantages, weights, pairs
    def num_loss_terms(self, num_train_steps: int) -> int: ...      # backward passes per minibatch
    def loss_terms(self, policy: Policy, minibatch: Batch,
                   settings: "RolloutSettings") -> Iterator[Tuple[torch.Tensor, Dict]]: ...
    def state_dict(self) -> Dict: ...                              # resumable state (trackers)
    def load_state_dict(self, state: Dict) -> None: ...
