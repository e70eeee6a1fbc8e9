"""GRPO-Guard (Wang et al. 2025, arXiv 2510.22319): ratio normalisation for Flow-GRPO.

With a Gaussian transition x' = mu_old + s eps (s the transition std), Flow-GRPO's per-step
log-ratio is log r = [|x' - mu_old|^2 - |x' - mu_new|^2] / (2 s^2) (means over elements), whose
mean under the sampling policy is -|mu_new - mu_old|^2 / (2 s^2) < 0 and whose spread scales with
1/s: the ratio is biased low and its size differs across timesteps, so the clip acts unevenly
(mostly on the low side, at the low-noise steps) and lets the others over-optimise. GRPO-Guard
removes the bias and the 1/s scale:
    log r~ = s * log r + |mu_new - mu_old|^2 / (2 s) = mean((mu_new - mu_old) * eps),
zero-mean under the old policy and of one scale at every step. We follow the form of the public
re-implementation in X-GenGroup/Flow-Factory (GRPOGuardTrainer._guard_ratio); the mean of the
sampling policy mu_old is re-computed once per epoch before the first update (old_transition_means).
"""
from __future__ import annotations

from typing import List

import torch

from flowrl.batch import Batch
from flowrl.sampling.sde import sde_mean_std


def guard_log_ratio(log_prob: torch.Tensor, old_log_prob: torch.Tensor, mean: torch.Tensor,
                    old_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Normalised log importance ratio (B,): (log_prob - old_log_prob) * std + mse(mean, old_mean) / (2 std).
    log_prob, old_log_prob (B,) are element-MEAN Gaussian log-probs of the stored transition under
    the current / sampling policy; mean, old_mean (B, *shape) their means; std (B,) > 0 the
    (shared) transition std. Equals mean((mean - old_mean) * eps) with eps the sampled noise."""
    mse = ((mean.float() - old_mean.float()) ** 2).mean(dim=tuple(range(1, mean.ndim)))
    s = std.float()
    return (log_prob.float() - old_log_prob.float()) * s + mse / (2 * s)


@torch.no_grad()
def old_transition_means(policy, batch: Batch, st, steps: List[int], chunk: int = 64) -> torch.Tensor:
    """Means of the trained transitions `steps` under the CURRENT (= sampling, before any update)
    policy, with the training CFG scale: (N, len(steps), *shape) fp32, on the batch's device."""
    from flowrl.algorithms.grpo import cond_of
    lat = batch["latents"]
    out = torch.empty((lat.shape[0], len(steps), *lat.shape[2:]), dtype=torch.float32, device=lat.device)
    cond = cond_of(batch)
    for start in range(0, lat.shape[0], chunk):
        rows = slice(start, start + chunk)
        c = {k: v[rows] for k, v in cond.items()}
        for t, j in enumerate(steps):
            x = lat[rows, j]
            n = x.shape[0]
            s, s_next = st.sigmas[j].expand(n).to(x.device), st.sigmas[j + 1].expand(n).to(x.device)
            v = policy.velocity(x, s, c, guidance=st.guidance)
            out[rows, t], _ = sde_mean_std(x, v, s, s_next, st.noise_level, float(st.sigmas[1]), st.kind)
    return out
