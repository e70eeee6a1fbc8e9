"""ORW-CFM-W2 (Fan et al., ICLR 2025; seed 001): online reward-weighted conditional flow matching
with a W2 bound to the reference model.

    L = E[ w(x1) * mean||v_theta(t, x_t) - u_t(x_t | x1)||^2 + alpha * mean||v_theta(t, x_t) - sg(v_ref(t, x_t))||^2 ]

x1 are samples of the policy at the start of the epoch (the frozen sampling copy, refreshed every
epoch), w = exp(tau * r) (optionally normalised to mean 1 over the global batch), x0 noise paired
to x1 by minibatch optimal transport, sigma ~ U(0, 1) (project convention: x_sigma =
(1-sigma)*x1 + sigma*x0, u = x0 - x1).
"""
from __future__ import annotations

from typing import Dict, Iterator, Optional, Tuple

import torch

from flowrl.algorithms.grpo import cond_of, train_velocity
from flowrl.algorithms.base import AlgorithmBase
from flowrl.batch import Batch
from flowrl.registry import ALGORITHMS


def orw_cfm_w2_loss(v: torch.Tensor, target: torch.Tensor, v_ref: torch.Tensor, weights: torch.Tensor,
                    alpha: float):
    """v, target, v_ref: (B, *shape); weights (B,). -> (loss, fm (B,), w2 (B,)); per-sample terms
    are means over the non-batch dims. With weights = 1 and alpha = 0 this is plain CFM."""
    dims = tuple(range(1, v.ndim))
    fm = ((v - target) ** 2).mean(dim=dims)
    w2 = ((v - v_ref.detach()) ** 2).mean(dim=dims)
    return (weights * fm + alpha * w2).mean(), fm, w2


def reward_weights(rewards: torch.Tensor, temperature: float, normalize: bool,
                   group_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    """w = exp(tau * r) (N,); normalised to mean 1 when `normalize` (computed stably): over the whole
    batch, or within each group of equal `group_ids` (N,) if given (every prompt then weighs the same,
    whatever its reward level)."""
    z = temperature * rewards.double()
    if not normalize:
        return torch.exp(z).float()
    if group_ids is None:
        return torch.softmax(z, 0).float() * len(z)
    w = torch.empty_like(z)
    for g in torch.unique(group_ids):
        idx = group_ids == g
        w[idx] = torch.softmax(z[idx], 0) * idx.sum()
    return w.float()


def ot_pair(x1: torch.Tensor, x0: torch.Tensor, keys: torch.Tensor = None) -> torch.Tensor:
    """Reorder noise x0 (B, *shape) to minimise sum ||x1_i - x0_pi(i)||^2 (exact, Hungarian), within
    rows of equal `keys` (B,) if given: a conditional model must see unskewed noise per condition."""
    from scipy.optimize import linear_sum_assignment
    out = x0.clone()
    groups = [torch.arange(len(x1))] if keys is None else [
        torch.nonzero(keys == k).flatten() for k in torch.unique(keys)]
    for idx in groups:
        a, b = x1[idx].flatten(1).double(), x0[idx].flatten(1).double()
        _, cols = linear_sum_assignment((torch.cdist(a, b) ** 2).cpu().numpy())
        out[idx] = x0[idx][torch.as_tensor(cols, device=x0.device)]
    return out


@ALGORITHMS.register("orw_cfm_w2")
class ORWCFMW2(AlgorithmBase):
    """Options: w2_coefficient (alpha >= 0, default 1.0), temperature (tau > 0, default 0.5),
    normalize_weights (default False, as the authors' code), ot_pairing (default True),
    group_weights (normalise the weights within each prompt's group instead of the whole batch;
    default False), cfg (match the velocity at the training CFG scale, train.cfg, for the policy and
    the reference, as the samples come from it; default False: the conditional velocity, guidance 1)."""

    sampling = "ode"

    def __init__(self, w2_coefficient: float = 1.0, temperature: float = 0.5,
                 normalize_weights: bool = False, ot_pairing: bool = True, group_weights: bool = False,
                 cfg: bool = False):
        if w2_coefficient < 0:
            raise ValueError(f"algorithm.w2_coefficient (alpha) must be >= 0, got {w2_coefficient}")
        if temperature <= 0:
            raise ValueError(f"algorithm.temperature (tau) must be > 0, got {temperature}")
        self.alpha, self.tau = w2_coefficient, temperature
        self.normalize, self.ot = normalize_weights, ot_pairing
        self.group_weights, self.cfg = group_weights, cfg
        self._generator = torch.Generator().manual_seed(0)

    def prepare(self, policy, batch: Batch, gathered: Batch, rank_slice: slice) -> Dict[str, float]:
        from flowrl.data.sampler import mix_seed   # fresh, rank-distinct, resumable noise each epoch
        self._generator.manual_seed(mix_seed(int(gathered["group_ids"][0]), rank_slice.start, 17))
        w = reward_weights(gathered["rewards"], self.tau, self.normalize,
                           gathered["group_ids"] if self.group_weights else None)
        batch["weights"] = w[rank_slice].to(batch["latents"].device)
        return {"weight_max_over_mean": (w.max() / w.mean()).item()}

    def num_loss_terms(self, num_train_steps: int) -> int:
        return 1

    def loss_terms(self, policy, mb: Batch, st) -> Iterator[Tuple[torch.Tensor, Dict]]:
        x1 = mb["latents"][:, -1]
        x0 = torch.randn(x1.shape, generator=self._generator).to(x1.device)
        if self.ot:   # minibatch OT, within each prompt (conditional models)
            x0 = ot_pair(x1, x0, mb["prompt_ids"].to(x1.device))
        sigma = torch.rand(x1.shape[0], generator=self._generator).to(x1.device)
        s = sigma.view(-1, *([1] * (x1.ndim - 1)))
        xt = (1 - s) * x1 + s * x0
        cond = cond_of(mb)
        st = st if self.cfg else None                 # None: the conditional velocity, guidance 1
        guidance = st.guidance if st is not None else 1.0
        v = train_velocity(policy, xt, sigma, cond, st)
        with torch.no_grad(), policy.reference():
            v_ref = policy.velocity(xt, sigma, cond, guidance=guidance)
        loss, fm, w2 = orw_cfm_w2_loss(v.float(), (x0 - x1).float(), v_ref.float(), mb["weights"], self.alpha)
        yield loss, {"fm_loss": fm.mean().item(), "w2": w2.mean().item()}
