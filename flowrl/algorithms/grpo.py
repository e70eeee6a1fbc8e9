"""Flow-GRPO (Liu et al. 2025, arXiv 2505.05470): group-relative advantages, a clipped likelihood
ratio on every trained SDE step, and a KL penalty to the frozen base (LoRA adapter off).

The KL comes in two forms (`kl`, flowrl.sampling.sde.step_kl): "flow_grpo" (the default) divides the
squared mean difference by 2 std_t^2 as Flow-GRPO's train_sd3.py does, so Flow-GRPO's beta values
carry over; "exact" is the Gaussian KL of the transition (= flow_grpo / |d sigma| for the SDE, x25 at
the first of 10 SD3 steps), which the CPU recipes (moons, digits, tiny_geneval) were tuned with."""
from __future__ import annotations

from typing import Dict, Iterator, Optional, Tuple

import torch

from flowrl.algorithms.advantages import group_advantages
from flowrl.algorithms.losses import clipped_surrogate
from flowrl.algorithms.base import AlgorithmBase
from flowrl.batch import Batch
from flowrl.registry import ALGORITHMS
from flowrl.sampling.rollout import RolloutSettings
from flowrl.sampling.sde import check_form, sde_mean_std, sde_step, step_kl


def cond_of(batch: Batch) -> Dict[str, torch.Tensor]:
    """The conditioning tensors stored in a Batch under 'cond.<name>'."""
    return {k[5:]: v for k, v in batch.tensors.items() if k.startswith("cond.")}


def train_velocity(policy, x, s, cond, st: Optional[RolloutSettings]) -> torch.Tensor:
    """The policy's velocity as training re-evaluates it: CFG at st.guidance, the unconditional half
    detached if st.cfg_detach_uncond (asks the policy only when guidance is on); st None: the
    conditional velocity (guidance 1)."""
    if st is None:
        return policy.velocity(x, s, cond, guidance=1.0)
    if st.cfg_detach_uncond and st.guidance > 1.0:
        return policy.velocity(x, s, cond, guidance=st.guidance, detach_uncond=True)
    return policy.velocity(x, s, cond, guidance=st.guidance)


def step_log_prob(policy, batch: Batch, j: int, st: RolloutSettings):
    """Re-score transition j of the stored trajectories under the current policy. -> StepOut."""
    x, x_next = batch["latents"][:, j], batch["latents"][:, j + 1]
    n = x.shape[0]
    s, s_next = st.sigmas[j].expand(n).to(x.device), st.sigmas[j + 1].expand(n).to(x.device)
    v = train_velocity(policy, x, s, cond_of(batch), st)
    return sde_step(x, v, s, s_next, st.noise_level, float(st.sigmas[1]), st.kind, prev_sample=x_next,
                    cps_log_prob=st.cps_log_prob)


@ALGORITHMS.register("grpo")
class GRPO(AlgorithmBase):
    """Options (config.algorithm): clip_range (epsilon of the ratio clip), beta (KL coefficient),
    adv_clip_max (|A| bound), std_per_group (normalise by the group's std instead of the global),
    ratio_norm (GRPO-Guard: clip the bias-free, step-normalised ratio of flowrl.algorithms.grpo_guard;
    its log-ratios are ~ s times Flow-GRPO's, s the transition std, so retune clip_range),
    kl ("flow_grpo" | "exact": the KL's form, see the module docstring)."""

    sampling = "sde"

    def __init__(self, clip_range: float = 1e-4, beta: float = 0.01, adv_clip_max: float = 5.0,
                 std_per_group: bool = False, ratio_norm: bool = False, kl: str = "flow_grpo"):
        if clip_range <= 0 or beta < 0 or adv_clip_max <= 0:
            raise ValueError("algorithm: need clip_range > 0, beta >= 0, adv_clip_max > 0")
        self.clip_range, self.beta = clip_range, beta
        self.adv_clip_max, self.std_per_group = adv_clip_max, std_per_group
        self.ratio_norm, self._pending, self._old_means = ratio_norm, None, None
        self.kl = check_form(kl, "algorithm.kl")

    def prepare(self, policy, batch: Batch, gathered: Batch, rank_slice: slice) -> Dict[str, float]:
        """Advantages over the GLOBAL batch (all ranks), then this rank's rows. Groups with zero
        reward spread get weight 0 (kept, so every rank runs the same number of steps)."""
        adv, zero = group_advantages(gathered["rewards"], gathered["group_ids"], self.std_per_group,
                                     clip=self.adv_clip_max)
        batch["advantages"] = adv[rank_slice].to(batch["latents"].device)
        batch["weights"] = (~zero[rank_slice]).float().to(batch["latents"].device)
        if self.ratio_norm:   # old means are computed at the first loss_terms call (it knows st)
            batch["guard_row"] = torch.arange(len(batch), device=batch["latents"].device)
            self._pending, self._old_means = batch, None
        return {"zero_std_fraction": zero.float().mean().item(), "adv_abs": adv.abs().mean().item()}

    def num_loss_terms(self, num_train_steps: int) -> int:
        """Backward passes per minibatch (the trainer accumulates them into one optimizer step)."""
        return num_train_steps

    def loss_terms(self, policy, mb: Batch, st: RolloutSettings) -> Iterator[Tuple[torch.Tensor, Dict]]:
        old_means = None
        if self.ratio_norm:
            if self._pending is not None:   # before the epoch's first update: the sampling policy
                from flowrl.algorithms.grpo_guard import old_transition_means
                self._old_means = old_transition_means(policy, self._pending, st, st.train_steps)
                self._pending = None
            old_means = self._old_means[mb["guard_row"]]
        return clipped_step_losses(policy, mb, st, self.clip_range, self.beta, old_means, self.kl)


def reference_kl(policy, mb: Batch, j: int, st: RolloutSettings, out, form: str = "exact") -> torch.Tensor:
    """KL (B,) between the policy's transition j (`out`) and the frozen reference's (adapter off),
    in `form` ("exact" | "flow_grpo", flowrl.sampling.sde.step_kl)."""
    x = mb["latents"][:, j]
    n = x.shape[0]
    s, s_next = st.sigmas[j].expand(n).to(x.device), st.sigmas[j + 1].expand(n).to(x.device)
    with torch.no_grad(), policy.reference():
        v_ref = policy.velocity(x, s, cond_of(mb), guidance=st.guidance)
    mean_ref, _ = sde_mean_std(x, v_ref, s, s_next, st.noise_level, float(st.sigmas[1]), st.kind)
    return step_kl(out.mean, mean_ref, out.std, s, s_next, st.kind, form)


def drop_zero_weight_rows(mb: Batch) -> Tuple[Batch, float, Optional[torch.Tensor]]:
    """Rows of weight 0 (zero-spread groups) add nothing to a weighted-mean loss: keep the others
    (at least one row, so every process runs the same backward passes). -> (kept rows, kept / all,
    their index (None: all kept)): mean over the kept rows x the fraction = the mean over all rows,
    without their forward passes."""
    keep = (mb["weights"] > 0).nonzero().flatten()
    if len(keep) == len(mb):
        return mb, 1.0, None
    if len(keep) == 0:
        keep = torch.zeros(1, dtype=torch.long)
        return mb.select(keep), 1.0 / len(mb), keep
    return mb.select(keep), len(keep) / len(mb), keep


def clipped_step_losses(policy, mb: Batch, st: RolloutSettings, clip_range: float, beta: float,
                        old_means: Optional[torch.Tensor] = None,
                        kl_form: str = "exact") -> Iterator[Tuple[torch.Tensor, Dict]]:
    """One loss per trained step j (backward per step keeps memory at one forward graph):
    clipped surrogate on mb["advantages"] (weighted by mb["weights"]) + beta * KL to the reference,
    computed on the rows of non-zero weight only (the same loss; ratio/clip/KL metrics over them).
    old_means (B, len(train_steps), *shape): the sampling policy's transition means -> the
    GRPO-Guard ratio (flowrl.algorithms.grpo_guard) instead of Flow-GRPO's."""
    mb, frac, kept = drop_zero_weight_rows(mb)
    if old_means is not None and kept is not None:
        old_means = old_means[kept.to(old_means.device)]
    w = mb["weights"]
    for t, j in enumerate(st.train_steps):
        out = step_log_prob(policy, mb, j, st)
        log_ratio = out.log_prob - mb["log_probs"][:, j]
        if old_means is not None:
            from flowrl.algorithms.grpo_guard import guard_log_ratio
            log_ratio = guard_log_ratio(out.log_prob, mb["log_probs"][:, j], out.mean, old_means[:, t], out.std)
        pg, ratio, clipped = clipped_surrogate(log_ratio, torch.zeros_like(log_ratio),
                                               mb["advantages"], clip_range, weights=w)
        loss, metrics = pg, {"policy_loss": pg.item() * frac, "ratio": ratio.mean().item(),
                             "clipfrac": clipped.float().mean().item(),
                             "log_ratio_abs": (out.log_prob - mb["log_probs"][:, j]).abs().mean().item()}
        if beta > 0:
            kl = reference_kl(policy, mb, j, st, out, kl_form)
            loss = loss + beta * (kl * w).mean()
            metrics["kl"] = kl.mean().item()
        yield loss * frac, metrics
