"""DiffusionNFT (Zheng et al. 2025, arXiv 2509.16117; public code NVlabs/DiffusionNFT): online RL on
the FORWARD process, negative-aware, CFG-free and solver-agnostic (samples from any sampler).

Per collected clean sample x0 with reward-derived optimality probability r in [0, 1]:
    x_sigma = (1 - sigma) x0 + sigma eps,   u = eps - x0            (project convention)
    v+ = (1 - beta) v_old + beta v_theta    (implicit positive policy)
    v- = (1 + beta) v_old - beta v_theta    (implicit negative policy)
    L  = [ r * ||v+ - u||^2 + (1 - r) * ||v- - u||^2 ] / beta
v_old is the sampling policy's velocity at (x_sigma, sigma), computed in `prepare` with the
pre-update weights and stored with sigma and eps (so an epoch's update is exact and resumable).

What we follow from NVlabs/DiffusionNFT (train_nft_sd3.py): r = clip(A / A_max / 2 + 1/2, 0, 1) with A
the group-normalised advantage clipped to [-A_max, A_max] (A_max = adv_clip_max, 5); the 1/beta
factor and the overall x A_max scale; the "adaptive" weighting, which measures each error in x0
space, x0_hat - x0 = sigma (v -+ u), and divides its mean square by its (detached) mean absolute
value clipped at 1e-5; training sigmas drawn from the sampler's schedule (distinct per sample);
an optional KL-like penalty kl_beta * mean ||v_theta - v_ref||^2 to the frozen base. Differences:
the "old" policy is exactly the sampling policy of the epoch (their EMA 'old' adapter with decay 0).
"""
from __future__ import annotations

from typing import Dict, Iterator, Optional, Tuple

import torch

from flowrl.algorithms.advantages import group_advantages
from flowrl.algorithms.base import AlgorithmBase
from flowrl.algorithms.grpo import cond_of
from flowrl.batch import Batch
from flowrl.registry import ALGORITHMS


def optimality_probability(advantages: torch.Tensor, adv_clip_max: float) -> torch.Tensor:
    """r = clip(A, -m, m) / m / 2 + 1/2, in [0, 1]: A = 0 -> 1/2, A = m -> 1, A = -m -> 0. (N,) -> (N,)."""
    a = advantages.clamp(-adv_clip_max, adv_clip_max)
    return a / adv_clip_max / 2 + 0.5


def _bcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def _branch_error(err: torch.Tensor, sigma: Optional[torch.Tensor], adaptive: bool) -> torch.Tensor:
    """Per-sample squared error (B,) of a velocity error `err` (B, *shape). adaptive: in x0 space,
    e = sigma * err, mean(e^2) / sg(clip(mean|e|, 1e-5)) (NVlabs' adaptive weighting)."""
    dims = tuple(range(1, err.ndim))
    if not adaptive:
        return (err ** 2).mean(dim=dims)
    e = _bcast(sigma, err) * err
    with torch.no_grad():
        scale = e.double().abs().mean(dim=dims).clamp(min=1e-5).to(e.dtype)
    return (e ** 2).mean(dim=dims) / scale


def nft_loss(v: torch.Tensor, v_old: torch.Tensor, target: torch.Tensor, r: torch.Tensor,
             beta: float, sigma: Optional[torch.Tensor] = None, adaptive: bool = False):
    """DiffusionNFT's loss per sample. v (trained), v_old (sampling policy, detached here), target
    u = eps - x0: (B, *shape); r (B,) in [0, 1]; beta > 0; sigma (B,) needed when `adaptive`.
    -> (loss (B,), positive term (B,), negative term (B,)); loss = (r * pos + (1 - r) * neg) / beta.
    beta = 1, adaptive off: r ||v - u||^2 + (1 - r) ||2 v_old - v - u||^2 (means over non-batch dims).
    r = 1: ||(1 - beta) v_old + beta v - u||^2 / beta, whose gradient at v = v_old is plain FM's."""
    if beta <= 0:
        raise ValueError(f"nft_loss: beta must be > 0, got {beta}")
    if adaptive and sigma is None:
        raise ValueError("nft_loss: adaptive weighting needs sigma (B,)")
    v_old = v_old.detach()
    v_pos = (1 - beta) * v_old + beta * v
    v_neg = (1 + beta) * v_old - beta * v
    pos = _branch_error(v_pos - target, sigma, adaptive)
    neg = _branch_error(v_neg - target, sigma, adaptive)
    r = r.to(pos.dtype)
    return (r * pos + (1 - r) * neg) / beta, pos, neg


def draw_step_sigmas(sigmas: torch.Tensor, n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """(n, k) training sigmas from the schedule's non-zero levels `sigmas` (S+1,) (the last, 0, is
    dropped): k distinct levels per sample when k <= S (a random permutation, as NVlabs shuffles
    the sampler's timesteps per sample), else drawn with replacement."""
    levels = sigmas[:-1].float()
    s = len(levels)
    if k <= s:
        idx = torch.stack([torch.randperm(s, generator=generator)[:k] for _ in range(n)])
    else:
        idx = torch.randint(s, (n, k), generator=generator)
    return levels[idx]


@ALGORITHMS.register("nft")
class NFT(AlgorithmBase):
    """Options (config.algorithm): beta (mixing of the implicit policies, NVlabs default 1.0),
    adv_clip_max (A_max: advantages are clipped to it and r = A / A_max / 2 + 1/2), std_per_group
    (normalise by the group's std, else the global one), adaptive_weighting (NVlabs' x0-space
    normalisation; off: plain velocity MSE), kl_beta (>= 0: penalty ||v_theta - v_ref||^2),
    timesteps_per_sample (sigmas per collected sample and epoch; 0 = the trained steps of the
    sampler's schedule, as NVlabs), seed (noise / sigma draws), old_batch_size (rows per forward
    pass when `prepare` evaluates v_old)."""

    sampling = "ode"     # solver-agnostic: the trainer's deterministic sampler is enough

    def __init__(self, beta: float = 1.0, adv_clip_max: float = 5.0, std_per_group: bool = False,
                 adaptive_weighting: bool = True, kl_beta: float = 0.0, timesteps_per_sample: int = 0,
                 seed: int = 0, old_batch_size: int = 64):
        if beta <= 0 or adv_clip_max <= 0 or kl_beta < 0 or timesteps_per_sample < 0:
            raise ValueError(f"algorithm nft: need beta > 0 (got {beta}), adv_clip_max > 0 (got "
                             f"{adv_clip_max}), kl_beta >= 0 (got {kl_beta}), timesteps_per_sample >= 0 "
                             f"(got {timesteps_per_sample})")
        self.beta, self.adv_clip_max, self.std_per_group = beta, adv_clip_max, std_per_group
        self.adaptive, self.kl_beta, self.seed = adaptive_weighting, kl_beta, seed
        self.timesteps_per_sample, self.old_batch_size = timesteps_per_sample, max(1, old_batch_size)
        self._k: Optional[int] = timesteps_per_sample or None

    def num_loss_terms(self, num_train_steps: int) -> int:
        """One backward pass per drawn sigma (the trainer accumulates them into one step)."""
        self._k = self.timesteps_per_sample or max(1, num_train_steps)
        return self._k

    def prepare(self, policy, batch: Batch, gathered: Batch, rank_slice: slice) -> Dict[str, float]:
        """r from the GLOBAL batch's group advantages; then, per local sample, k (sigma, eps) draws
        and v_old = the current (pre-update) policy's velocity there. Adds nft_r (B,),
        nft_sigma (B, k), nft_noise (B, k, *shape), nft_v_old (B, k, *shape)."""
        from flowrl.data.sampler import mix_seed
        adv, zero = group_advantages(gathered["rewards"], gathered["group_ids"], self.std_per_group,
                                     clip=self.adv_clip_max)
        r = optimality_probability(adv, self.adv_clip_max)
        x0 = batch["latents"][:, -1]
        n, steps, dev = x0.shape[0], batch["latents"].shape[1] - 1, x0.device
        k = self._k or steps
        g = torch.Generator().manual_seed(mix_seed(self.seed, int(gathered["group_ids"].min()),
                                                   rank_slice.start, 23))
        sig = draw_step_sigmas(policy.sigmas(steps), n, k, g)
        noise = torch.randn((n, k, *x0.shape[1:]), generator=g)
        batch["nft_r"] = r[rank_slice].to(dev)
        batch["nft_sigma"], batch["nft_noise"] = sig.to(dev), noise.to(dev, x0.dtype)
        batch["nft_v_old"] = self._old_velocities(policy, batch, x0)
        return {"nft_r_mean": r.mean().item(), "zero_std_fraction": zero.float().mean().item(),
                "adv_abs": adv.abs().mean().item()}

    @torch.no_grad()
    def _old_velocities(self, policy, batch: Batch, x0: torch.Tensor) -> torch.Tensor:
        """v_old at every drawn (sigma, eps) of `batch`, CFG-free, in chunks of `old_batch_size`
        rows (one forward pass each). -> (B, k, *shape)."""
        out = torch.empty_like(batch["nft_noise"])
        for start in range(0, x0.shape[0], self.old_batch_size):
            rows = slice(start, start + self.old_batch_size)
            cond = {name: c[rows] for name, c in cond_of(batch).items()}
            for j in range(out.shape[1]):
                sig, eps = batch["nft_sigma"][rows, j], batch["nft_noise"][rows, j]
                xs = (1 - _bcast(sig, eps)) * x0[rows] + _bcast(sig, eps) * eps
                out[rows, j] = policy.velocity(xs, sig, cond, guidance=1.0).to(out.dtype)
        return out

    def loss_terms(self, policy, mb: Batch, st) -> Iterator[Tuple[torch.Tensor, Dict]]:
        x0, cond = mb["latents"][:, -1], cond_of(mb)
        for j in range(mb["nft_sigma"].shape[1]):
            sig, eps = mb["nft_sigma"][:, j], mb["nft_noise"][:, j]
            xs = (1 - _bcast(sig, x0)) * x0 + _bcast(sig, x0) * eps
            v = policy.velocity(xs, sig, cond, guidance=1.0).float()
            per, pos, neg = nft_loss(v, mb["nft_v_old"][:, j].float(), (eps - x0).float(), mb["nft_r"],
                                     self.beta, sig.float(), self.adaptive)
            loss = self.adv_clip_max * per.mean()
            metrics = {"policy_loss": loss.item(), "nft_pos": pos.mean().item(),
                       "nft_neg": neg.mean().item(),
                       "old_deviate": ((v - mb["nft_v_old"][:, j]) ** 2).mean().item()}
            if self.kl_beta > 0:
                with torch.no_grad(), policy.reference():
                    v_ref = policy.velocity(xs, sig, cond, guidance=1.0).float()
                kl = ((v - v_ref) ** 2).mean(dim=tuple(range(1, v.ndim)))
                loss = loss + self.kl_beta * kl.mean()
                metrics["kl"] = kl.mean().item()
            yield loss, metrics
