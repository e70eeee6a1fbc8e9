"""Advantage Weighted Matching (AWM; Xue et al. 2025, arXiv 2509.25050; public code
scxue/advantage_weighted_matching): the pre-training flow-matching loss on the policy's OWN
samples, each weighted by its group advantage. No log-probs, no stochastic sampler.

Per collected clean sample x0 with advantage A and k drawn (sigma, eps):
    x_sigma = (1 - sigma) x0 + sigma eps,   u = eps - x0            (project convention)
    e       = mean ||v_theta(x_sigma, sigma) - u||^2                 (per sample)
    L       = mean_i  A_i * w(e_i, sigma_i)  +  kl_beta * mean ||v_theta - v_ref||^2
with A = clip(group advantage, -adv_clip_max, adv_clip_max) / adv_clip_max * advantage_max and
w the paper's weighting of the matching error ("uniform": e; "t": sigma e; "ghuber":
sigma ((e + 1e-10)^p - 1e-10^p) / p, their GenEval choice with p = 1/4).

What we follow from scxue/advantage_weighted_matching (train_sd3_awm.py, config dgx_awm.py): the
advantage scaling (adv_clip_max 5 -> advantage_max 1), the ghuber weighting, the velocity-space KL to
the frozen base (adapter off), training sigmas taken from the sampler's schedule without the
initial sigma = 1 ("discrete_wo_init"), fresh noise per drawn sigma. Differences: their loss is
PPO-clipped exp(log_prob - old_log_prob) with clip_range 1, whose gradient on-policy is exactly
A * grad w(e) -- we use that gradient directly (one pass per epoch's samples; no ratio); their
EMA-proximal velocity penalty (decay <= 0.3, i.e. ~ the previous epoch's weights) is left out;
sigmas are drawn per sample (theirs: one stratified set per minibatch).
"""
from __future__ import annotations

from typing import Dict, Iterator, Optional, Tuple

import torch

from flowrl.algorithms.advantages import group_advantages
from flowrl.algorithms.base import AlgorithmBase
from flowrl.algorithms.grpo import cond_of, train_velocity
from flowrl.algorithms.forward_process import forward_draws, noised, reference_velocity, velocity_mse
from flowrl.batch import Batch
from flowrl.registry import ALGORITHMS

WEIGHTINGS = ("uniform", "t", "ghuber")


def weighted_matching_error(err: torch.Tensor, sigma: torch.Tensor, weighting: str = "uniform",
                            power: float = 0.25) -> torch.Tensor:
    """AWM's weighting of the per-sample matching error. err (B,) >= 0 (mean squared velocity
    error), sigma (B,) in (0, 1]. -> (B,): "uniform" err; "t" sigma * err; "ghuber"
    sigma * ((err + 1e-10)^p - (1e-10)^p) / p (a generalised Huber: ~err^p for large errors)."""
    if weighting == "uniform":
        return err
    if weighting == "t":
        return sigma * err
    if weighting == "ghuber":
        eps = 1e-10
        return sigma * ((err + eps) ** power - eps ** power) / power
    raise ValueError(f"algorithm awm: unknown weighting {weighting!r}; use one of {WEIGHTINGS}")


def awm_advantages(advantages: torch.Tensor, adv_clip_max: float, advantage_max: float,
                   negative_scale: float = 1.0) -> torch.Tensor:
    """clip(A, -m, m) / m * advantage_max: A = m -> advantage_max; negative advantages are then
    multiplied by negative_scale >= 0 (1: AWM's symmetric weights, mean 0 within a group; < 1: a net
    pull towards the policy's own samples, which sharpens it; > 1: a net push away). (N,) -> (N,)."""
    a = advantages.clamp(-adv_clip_max, adv_clip_max) / adv_clip_max * advantage_max
    return torch.where(a < 0, a * negative_scale, a)


def awm_loss(v: torch.Tensor, target: torch.Tensor, advantages: torch.Tensor, sigma: torch.Tensor,
             weighting: str = "uniform", power: float = 0.25) -> Tuple[torch.Tensor, torch.Tensor]:
    """mean_i A_i * w(mean ||v_i - u_i||^2, sigma_i). v, target u: (B, *shape); advantages, sigma:
    (B,). -> (loss scalar, per-sample matching error (B,)). Positive A pulls v towards u (plain
    flow matching on that sample), negative A pushes it away."""
    err = velocity_mse(v, target)
    w = weighted_matching_error(err, sigma.float(), weighting, power)
    return (advantages.to(w.dtype) * w).mean(), err


@ALGORITHMS.register("awm")
class AWM(AlgorithmBase):
    """Options (config.algorithm): adv_clip_max (|A| bound before scaling), advantage_max (the
    scale A = adv_clip_max maps to), std_per_group (normalise by each group's std, else the
    global one), weighting ("uniform" | "t" | "ghuber"), ghuber_power, kl_beta (>= 0: penalty
    mean ||v - v_ref||^2 to the frozen base), negative_scale (>= 0: the weight of the pushes away
    from worse-than-average samples; 1 = AWM), timesteps_per_sample (sigmas per sample and epoch;
    0 = the trained steps of the schedule), seed (sigma / noise draws). The velocity in the loss
    uses the training CFG scale (train.cfg: sample.guidance_scale, else 1)."""

    sampling = "ode"     # the forward process of the final samples: any sampler will do
    schedule_steps: Optional[int] = None   # sigmas from this many-step schedule (None: the batch's)

    def __init__(self, adv_clip_max: float = 5.0, advantage_max: float = 1.0, std_per_group: bool = False,
                 weighting: str = "ghuber", ghuber_power: float = 0.25, kl_beta: float = 0.0,
                 timesteps_per_sample: int = 0, seed: int = 0, negative_scale: float = 1.0):
        if adv_clip_max <= 0 or advantage_max <= 0 or kl_beta < 0 or timesteps_per_sample < 0 \
                or ghuber_power <= 0 or weighting not in WEIGHTINGS or negative_scale < 0:
            raise ValueError(f"algorithm awm: need adv_clip_max > 0 (got {adv_clip_max}), advantage_max > 0 "
                             f"(got {advantage_max}), kl_beta >= 0 (got {kl_beta}), timesteps_per_sample "
                             f">= 0 (got {timesteps_per_sample}), ghuber_power > 0 (got {ghuber_power}), "
                             f"weighting in {WEIGHTINGS} (got {weighting!r}), negative_scale >= 0 "
                             f"(got {negative_scale})")
        self.adv_clip_max, self.advantage_max, self.std_per_group = adv_clip_max, advantage_max, std_per_group
        self.weighting, self.power, self.kl_beta, self.seed = weighting, ghuber_power, kl_beta, seed
        self.timesteps_per_sample, self.negative_scale = timesteps_per_sample, negative_scale
        self._k: Optional[int] = timesteps_per_sample or None

    def num_loss_terms(self, num_train_steps: int) -> int:
        """One backward pass per drawn sigma (accumulated into one optimizer step)."""
        self._k = self.timesteps_per_sample or max(1, num_train_steps)
        return self._k

    def prepare(self, policy, batch: Batch, gathered: Batch, rank_slice: slice) -> Dict[str, float]:
        """Advantages over the GLOBAL batch, then this rank's rows; k (sigma, eps) per local sample
        (sigma from the schedule without sigma = 1). Adds awm_adv (B,), awm_sigma (B, k),
        awm_noise (B, k, *shape)."""
        from flowrl.data.sampler import mix_seed
        adv, zero = group_advantages(gathered["rewards"], gathered["group_ids"], self.std_per_group,
                                     clip=self.adv_clip_max)
        a = awm_advantages(adv, self.adv_clip_max, self.advantage_max, self.negative_scale)
        x0 = batch["latents"][:, -1]
        steps = self.schedule_steps or batch["latents"].shape[1] - 1
        g = torch.Generator().manual_seed(mix_seed(self.seed, int(gathered["group_ids"].min()),
                                                   rank_slice.start, 29))
        batch["awm_sigma"], batch["awm_noise"] = forward_draws(x0, self._k or steps,
                                                               policy.sigmas(steps)[1:], g)
        batch["awm_adv"] = a[rank_slice].to(x0.device)
        return {"zero_std_fraction": zero.float().mean().item(), "adv_abs": a.abs().mean().item()}

    def loss_terms(self, policy, mb: Batch, st) -> Iterator[Tuple[torch.Tensor, Dict]]:
        x0, cond = mb["latents"][:, -1], cond_of(mb)
        guidance = st.guidance if st is not None else 1.0
        for j in range(mb["awm_sigma"].shape[1]):
            sig, eps = mb["awm_sigma"][:, j], mb["awm_noise"][:, j]
            xs = noised(x0, sig, eps)
            v = train_velocity(policy, xs, sig, cond, st).float()
            loss, err = awm_loss(v, eps - x0, mb["awm_adv"], sig, self.weighting, self.power)
            metrics = {"policy_loss": loss.item(), "matching_error": err.mean().item()}
            if self.kl_beta > 0:
                kl = velocity_mse(v, reference_velocity(policy, xs, sig, cond, guidance))
                loss = loss + self.kl_beta * kl.mean()
                metrics["kl"] = kl.mean().item()
            yield loss, metrics
