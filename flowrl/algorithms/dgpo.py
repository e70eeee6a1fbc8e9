"""DGPO, Direct Group Preference Optimization (Luo, Hu, Tang; ICLR 2026, arXiv 2510.08425; public
code Luo-Yihong/DGPO): DPO between the positive and the negative part of each prompt group, with
deterministic (ODE) rollouts and the flow-matching loss on the forward process of the samples.

Per group g (samples i, group advantages A_i, k drawn (sigma, eps) SHARED by the group):
    e_i     = mean ||v_theta(x_sigma,i) - u_i||^2,   e_ref,i = the same for the frozen base
    S_g     = beta_dpo * sum_{i in g} A_i (e_i - e_ref,i) / |g|                  (detached)
    L       = mean_i sigmoid(S_g) * A_i * e_i  +  kl_beta * mean ||v_theta - v_ref||^2
The gradient of L is that of -log sigmoid(-S_g) (the group-level DPO likelihood with implicit
rewards -beta_dpo (e - e_ref) summed over G+ minus G-, weighted by |A|): a group whose
positives the policy already fits better than the base (S_g << 0) stops pulling.

What we follow from Luo-Yihong/DGPO (scripts/train_sd3_dgpo.py, config/dgpo.py): the loss above
(compute_group_dgpo_loss_allreduce), noise shared within a group, training sigmas drawn without
replacement from the FIRST levels of the sampler's schedule (their trunc_steps: 5 of 10 levels for
GenEval), the velocity-space KL to the frozen base, advantages clipped at adv_clip_max.
Differences: no PPO-style clip of the matching loss against an EMA "old" model (their clip_dsm,
added after review for stability); sigmas are drawn per group (theirs: one set per epoch).
"""
from __future__ import annotations

from typing import Dict, Iterator, Tuple

import torch

from flowrl.algorithms.advantages import group_advantages
from flowrl.algorithms.base import AlgorithmBase
from flowrl.algorithms.forward_process import noised, reference_velocity, velocity_mse
from flowrl.algorithms.grpo import cond_of, train_velocity
from flowrl.algorithms.nft import draw_step_sigmas
from flowrl.batch import Batch
from flowrl.registry import ALGORITHMS


def group_preference_weights(err: torch.Tensor, ref_err: torch.Tensor, advantages: torch.Tensor,
                             group_ids: torch.Tensor, beta_dpo: float) -> torch.Tensor:
    """sigmoid(S_g) per sample, S_g = beta_dpo * sum_{i in g} A_i (err_i - ref_err_i) / |g|.
    err, ref_err, advantages (N,) float; group_ids (N,) long. -> (N,) in (0, 1), no gradient."""
    with torch.no_grad():
        term = advantages.double() * beta_dpo * (err.double() - ref_err.double())
        uniq, inv = torch.unique(group_ids, return_inverse=True)
        sums = torch.zeros(len(uniq), dtype=torch.float64, device=term.device).index_add_(0, inv, term)
        count = torch.zeros_like(sums).index_add_(0, inv, torch.ones_like(term))
        return torch.sigmoid(sums / count)[inv].to(err.dtype)


def dgpo_loss(err: torch.Tensor, ref_err: torch.Tensor, advantages: torch.Tensor,
              group_ids: torch.Tensor, beta_dpo: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """mean_i sigmoid(S_g(i)) * A_i * err_i (see the module docstring); err (N,) carries the
    gradient, ref_err (N,) is the frozen base's. -> (loss scalar, weights sigmoid(S_g) (N,))."""
    w = group_preference_weights(err, ref_err, advantages, group_ids, beta_dpo)
    return (w * advantages.to(err.dtype) * err).mean(), w


def draw_group_sigmas(levels: torch.Tensor, group_ids: torch.Tensor, k: int, shape: Tuple[int, ...],
                      generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """k distinct sigmas from `levels` (L,) and k noises per GROUP, repeated for its members.
    group_ids (N,) -> sigma (N, k), eps (N, k, *shape)."""
    uniq, inv = torch.unique(group_ids.cpu(), return_inverse=True)
    levels = torch.cat([levels.float(), levels.new_zeros(1).float()])   # draw_step_sigmas drops the last
    sig = draw_step_sigmas(levels, len(uniq), k, generator)
    eps = torch.randn((len(uniq), k, *shape), generator=generator)
    return sig[inv], eps[inv]


@ALGORITHMS.register("dgpo")
class DGPO(AlgorithmBase):
    """Options (config.algorithm): beta_dpo (sharpness of the group preference, DGPO 10-100),
    kl_beta (>= 0: penalty mean ||v - v_ref||^2), adv_clip_max, std_per_group (normalise by each
    group's std, else the global one), timestep_fraction (sigmas are drawn from the first
    ceil(fraction * S) levels of the S-step schedule, sigma = 1 included), timesteps_per_sample
    (sigmas per group and epoch; 0 = the trained steps of the schedule), seed. The velocity uses
    the training CFG scale (train.cfg: sample.guidance_scale, else 1; DGPO's default: 1)."""

    sampling = "ode"
    group_local = True   # S_g needs the whole group in one minibatch

    def __init__(self, beta_dpo: float = 100.0, kl_beta: float = 0.0, adv_clip_max: float = 5.0,
                 std_per_group: bool = True, timestep_fraction: float = 0.5, timesteps_per_sample: int = 0,
                 seed: int = 0):
        if beta_dpo <= 0 or kl_beta < 0 or adv_clip_max <= 0 or not 0 < timestep_fraction <= 1 \
                or timesteps_per_sample < 0:
            raise ValueError(f"algorithm dgpo: need beta_dpo > 0 (got {beta_dpo}), kl_beta >= 0 (got {kl_beta}), "
                             f"adv_clip_max > 0 (got {adv_clip_max}), 0 < timestep_fraction <= 1 (got "
                             f"{timestep_fraction}), timesteps_per_sample >= 0 (got {timesteps_per_sample})")
        self.beta_dpo, self.kl_beta, self.adv_clip_max = beta_dpo, kl_beta, adv_clip_max
        self.std_per_group, self.fraction, self.seed = std_per_group, timestep_fraction, seed
        self.timesteps_per_sample = timesteps_per_sample
        self._k = timesteps_per_sample or None

    def num_loss_terms(self, num_train_steps: int) -> int:
        self._k = self.timesteps_per_sample or max(1, num_train_steps)
        return self._k

    def prepare(self, policy, batch: Batch, gathered: Batch, rank_slice: slice) -> Dict[str, float]:
        """Group advantages over the GLOBAL batch; per local group k (sigma, eps) shared by its
        members. Adds dgpo_adv (B,), dgpo_sigma (B, k), dgpo_noise (B, k, *shape)."""
        from flowrl.data.sampler import mix_seed
        adv, zero = group_advantages(gathered["rewards"], gathered["group_ids"], self.std_per_group,
                                     clip=self.adv_clip_max)
        x0 = batch["latents"][:, -1]
        steps = batch["latents"].shape[1] - 1
        num_levels = max(1, int(round(self.fraction * steps)))
        k = min(self._k or steps, num_levels)
        g = torch.Generator().manual_seed(mix_seed(self.seed, int(gathered["group_ids"].min()),
                                                   rank_slice.start, 31))
        sig, eps = draw_group_sigmas(policy.sigmas(steps)[:num_levels], batch["group_ids"], k,
                                     tuple(x0.shape[1:]), g)
        batch["dgpo_sigma"], batch["dgpo_noise"] = sig.to(x0.device), eps.to(x0.device, x0.dtype)
        batch["dgpo_adv"] = adv[rank_slice].to(x0.device)
        return {"zero_std_fraction": zero.float().mean().item(), "adv_abs": adv.abs().mean().item()}

    def loss_terms(self, policy, mb: Batch, st) -> Iterator[Tuple[torch.Tensor, Dict]]:
        x0, cond = mb["latents"][:, -1], cond_of(mb)
        guidance = st.guidance if st is not None else 1.0
        for j in range(mb["dgpo_sigma"].shape[1]):
            sig, eps = mb["dgpo_sigma"][:, j], mb["dgpo_noise"][:, j]
            xs, u = noised(x0, sig, eps), eps - x0
            v = train_velocity(policy, xs, sig, cond, st).float()
            v_ref = reference_velocity(policy, xs, sig, cond, guidance)
            err = velocity_mse(v, u)
            loss, w = dgpo_loss(err, velocity_mse(v_ref, u), mb["dgpo_adv"], mb["group_ids"], self.beta_dpo)
            metrics = {"policy_loss": loss.item(), "matching_error": err.mean().item(),
                       "group_weight": w.mean().item()}
            if self.kl_beta > 0:
                kl = velocity_mse(v, v_ref)
                loss = loss + self.kl_beta * kl.mean()
                metrics["kl"] = kl.mean().item()
            yield loss, metrics
