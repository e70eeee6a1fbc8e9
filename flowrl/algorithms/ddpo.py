"""DDPO / PPO (Black et al. 2023, kvablack/ddpo-pytorch; seed 000): the clipped likelihood ratio on
every trained step, with advantages from a per-prompt running reward tracker instead of groups."""
from __future__ import annotations

from typing import Dict, Iterator, Tuple

import torch

from flowrl.algorithms.advantages import PerPromptStatTracker
from flowrl.algorithms.grpo import clipped_step_losses
from flowrl.algorithms.base import AlgorithmBase
from flowrl.batch import Batch
from flowrl.registry import ALGORITHMS
from flowrl.sampling.sde import check_form


@ALGORITHMS.register("ddpo")
class DDPO(AlgorithmBase):
    """Options (config.algorithm): clip_range, adv_clip_max, per_prompt_stat_tracking (else the
    batch mean/std), buffer_size and min_count of the tracker, beta (KL to the base; DDPO uses 0),
    kl (its form, "exact" | "flow_grpo": flowrl.sampling.sde.step_kl)."""

    sampling = "sde"

    def __init__(self, clip_range: float = 1e-4, adv_clip_max: float = 5.0,
                 per_prompt_stat_tracking: bool = True, buffer_size: int = 32, min_count: int = 16,
                 beta: float = 0.0, kl: str = "exact"):
        if clip_range <= 0 or adv_clip_max <= 0 or beta < 0 or min_count < 1:
            raise ValueError("algorithm: need clip_range > 0, adv_clip_max > 0, beta >= 0, min_count >= 1")
        self.clip_range, self.adv_clip_max, self.beta = clip_range, adv_clip_max, beta
        self.kl = check_form(kl, "algorithm.kl")
        self.tracker = PerPromptStatTracker(buffer_size, min_count) if per_prompt_stat_tracking else None

    def prepare(self, policy, batch: Batch, gathered: Batch, rank_slice: slice) -> Dict[str, float]:
        """Advantages on the gathered rewards (every rank updates the same tracker identically)."""
        r = gathered["rewards"]
        if self.tracker is not None:
            adv = self.tracker.update(gathered["prompt_ids"].tolist(), r)
        else:
            adv = (r - r.mean()) / (r.std(unbiased=False) + 1e-6)
        adv = adv.clamp(-self.adv_clip_max, self.adv_clip_max)
        dev = batch["latents"].device
        batch["advantages"] = adv[rank_slice].to(dev)
        batch["weights"] = torch.ones(len(batch), device=dev)
        return {"adv_abs": adv.abs().mean().item()}

    def num_loss_terms(self, num_train_steps: int) -> int:
        return num_train_steps

    def loss_terms(self, policy, mb: Batch, st) -> Iterator[Tuple[torch.Tensor, Dict]]:
        return clipped_step_losses(policy, mb, st, self.clip_range, self.beta, kl_form=self.kl)

    def state_dict(self) -> Dict:
        if self.tracker is None:
            return {}
        return {"stats": {str(k): list(v) for k, v in self.tracker.stats.items()}}

    def load_state_dict(self, state: Dict) -> None:
        if self.tracker is not None:
            from collections import deque
            self.tracker.stats = {int(k): deque(v, maxlen=self.tracker.buffer_size)
                                  for k, v in state.get("stats", {}).items()}
