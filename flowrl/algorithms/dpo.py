"""Preference fine-tuning on pairs: D3PO (Yang et al. 2024, yk7333/d3po) and Diffusion-DPO (Wallace et
al. 2024) written for flow matching (seed 003; docs/methods.md, "Preferences").

Both train on PAIRS: two samples of one prompt from the same initial noise (sample.group_size = 2,
sample.same_latent = True; group_local keeps a pair on one rank and in one minibatch). The winner is
the sample with the higher reward (ties get weight 0). Pairs labelled by people come from a JSONL file
(`load_preference_file`, `encode_pairs`) and train with `dpo_pair_loss` on their latents.

D3PO, per trained SDE step j (log-probs from flowrl.sampling.sde.sde_step, averaged over dims):
    rho_k = clamp(exp(logp_theta(x_{j+1}^k | x_j^k) - logp_ref(...)), 1 - eps, 1 + eps),   k = 0, 1
    L_j   = -log sigmoid(beta * (s_0 * log rho_0 + s_1 * log rho_1)),     s = +1 winner, -1 loser
Diffusion-DPO on flows, one sigma ~ U(0, 1) and one noise per pair, shared by winner and loser:
    e = mean ||v(x_sigma, sigma) - (noise - x0)||^2,  x_sigma = (1 - sigma) x0 + sigma noise
    L = -log sigmoid(-beta / 2 * [(e_theta^w - e_ref^w) - (e_theta^l - e_ref^l)])
At theta = ref both losses are log 2.
"""
from __future__ import annotations

from typing import Dict, Iterator, Tuple

import torch
import torch.nn.functional as F

from flowrl.algorithms.base import AlgorithmBase
from flowrl.algorithms.grpo import cond_of, step_log_prob
from flowrl.algorithms.preferences import encode_pairs, epoch_pairs, file_batch, load_preference_file  # noqa: F401
from flowrl.batch import Batch
from flowrl.config import ConfigError
from flowrl.registry import ALGORITHMS
from flowrl.sampling.rollout import RolloutSettings
from flowrl.sampling.sde import sde_step

PAIR_HINT = "set sample.group_size=2 and sample.same_latent=True (batch sizes multiples of 2)"


# ----------------------------------------------------------------------------------- pure maths
def pair_index(group_ids: torch.Tensor, name: str = "dpo") -> torch.Tensor:
    """Rows of each pair: group_ids (N,) -> (P, 2) long, pairs in order of first appearance, each
    pair's rows in batch order. Raises ConfigError unless every group has exactly 2 rows."""
    ids, counts = torch.unique(group_ids, return_counts=True)
    bad = counts != 2
    if bad.any():
        raise ConfigError(f"algorithm {name!r} trains on pairs: every prompt group must hold exactly 2 "
                          f"samples, found a group of {int(counts[bad][0])}; {PAIR_HINT}")
    order = torch.sort(group_ids, stable=True).indices.view(-1, 2)
    first = torch.argsort(order[:, 0])            # keep the batch order of the pairs
    return order[first]


def pair_preferences(rewards: torch.Tensor, group_ids: torch.Tensor, name: str = "dpo",
                     tie_margin: float = 0.0):
    """Winner = higher reward within each pair. rewards, group_ids (N,) -> (signs (N,) in {+1, -1, 0},
    weights (N,) float: 0 for both rows of a tie, |r_0 - r_1| <= tie_margin (0: exact ties), else 1)."""
    idx = pair_index(group_ids, name)
    r = rewards.float()[idx]                      # (P, 2)
    s = torch.sign(r[:, 0] - r[:, 1])             # +1: row 0 wins
    signs, weights = torch.zeros(len(rewards)), torch.zeros(len(rewards))
    signs[idx[:, 0]], signs[idx[:, 1]] = s, -s
    decided = (s != 0) & ((r[:, 0] - r[:, 1]).abs() > tie_margin)
    weights[idx.flatten()] = decided.float().repeat_interleave(2)
    return signs, weights


def d3po_loss(log_prob: torch.Tensor, ref_log_prob: torch.Tensor, signs: torch.Tensor, beta: float,
              eps: float, weights: torch.Tensor = None):
    """D3PO's loss for one step. log_prob (P, 2) with grad, ref_log_prob (P, 2), signs (P, 2)
    (+1 winner / -1 loser), weights (P,) (default 1). -> (loss scalar = mean_P(w * -log sigmoid(
    beta * sum_k s_k log rho_k)), log_rho (P, 2) unclamped, clipped (P, 2) bool). The clamp has zero
    gradient outside [1 - eps, 1 + eps]: a step stops moving once it has moved eps from the reference."""
    log_rho = log_prob.float() - ref_log_prob.float()
    rho = torch.clamp(torch.exp(log_rho), 1.0 - eps, 1.0 + eps)
    z = beta * (signs.float() * torch.log(rho)).sum(dim=1)
    per_pair = F.softplus(-z)                     # = -log sigmoid(z), stable
    loss = (per_pair if weights is None else per_pair * weights).mean()
    clipped = torch.abs(torch.exp(log_rho.detach()) - 1.0) > eps
    return loss, log_rho, clipped


def flow_matching_error(v: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """e = mean over non-batch dims of ||v - (noise - x0)||^2. All (B, *shape) -> (B,)."""
    return ((v.float() - (noise - x0).float()) ** 2).mean(dim=tuple(range(1, v.ndim)))


def diffusion_dpo_loss(err_w: torch.Tensor, err_ref_w: torch.Tensor, err_l: torch.Tensor,
                       err_ref_l: torch.Tensor, beta: float, weights: torch.Tensor = None):
    """All (P,). -> (loss = mean_P(w * -log sigmoid(-beta/2 * [(e_w - e_ref_w) - (e_l - e_ref_l)])),
    implicit reward margin (P,) = -[(e_w - e_ref_w) - (e_l - e_ref_l)], > 0 when the winner gained)."""
    margin = -((err_w - err_ref_w.detach()) - (err_l - err_ref_l.detach()))
    per_pair = F.softplus(-0.5 * beta * margin)
    return (per_pair if weights is None else per_pair * weights).mean(), margin


# ----------------------------------------------------------------------------- model-facing parts
def interpolate(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_sigma = (1 - sigma) x0 + sigma noise; x0, noise (B, *shape), sigma (B,) -> (B, *shape)."""
    s = sigma.view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return (1 - s) * x0 + s * noise


def dpo_pair_loss(policy, x_w: torch.Tensor, x_l: torch.Tensor, cond: Dict[str, torch.Tensor],
                  sigma: torch.Tensor, noise: torch.Tensor, beta: float, weights: torch.Tensor = None,
                  guidance: float = 1.0):
    """Diffusion-DPO on given clean latents (online pairs or a preference file). x_w, x_l, noise
    (P, *shape), sigma (P,), cond tensors (P, ...) shared by both. -> (loss, margin (P,), err_w (P,))."""
    x = torch.cat([x_w, x_l])
    n2, s2 = torch.cat([noise, noise]), torch.cat([sigma, sigma])
    c2 = {k: torch.cat([v, v]) for k, v in cond.items()}
    xt = interpolate(x, n2, s2)
    v = policy.velocity(xt, s2, c2, guidance=guidance)
    with torch.no_grad(), policy.reference():
        v_ref = policy.velocity(xt, s2, c2, guidance=guidance)
    err, err_ref = flow_matching_error(v, x, n2), flow_matching_error(v_ref, x, n2)
    (e_w, e_l), (r_w, r_l) = err.chunk(2), err_ref.chunk(2)
    loss, margin = diffusion_dpo_loss(e_w, r_w, e_l, r_l, beta, weights)
    return loss, margin, e_w


def check_same_noise(latents: torch.Tensor, idx: torch.Tensor, name: str) -> None:
    """latents (N, S+1, *shape): both rows of each pair (idx (P, 2)) must start from the same noise."""
    x0 = latents[:, 0]
    if not torch.equal(x0[idx[:, 0]], x0[idx[:, 1]]):
        raise ConfigError(f"algorithm {name!r}: the two samples of a pair start from different initial "
                          f"noise; {PAIR_HINT}")


class _PairAlgorithm(AlgorithmBase):
    """Pairs from the reward: prepare() sets per-row `pref_signs` and `weights` (ties -> 0)."""

    group_local = True
    name = "dpo"
    tie_margin = 0.0

    def prepare(self, policy, batch: Batch, gathered: Batch, rank_slice: slice) -> Dict[str, float]:
        signs, weights = pair_preferences(gathered["rewards"], gathered["group_ids"], self.name,
                                          self.tie_margin)
        if getattr(self, "pairs", None) is None:   # rollout pairs (not a preference file's)
            check_same_noise(batch["latents"], pair_index(batch["group_ids"], self.name), self.name)
        dev = batch["latents"].device
        batch["pref_signs"] = signs[rank_slice].to(dev)
        batch["weights"] = weights[rank_slice].to(dev)
        return {"tie_fraction": float(1 - weights.mean())}

    @staticmethod
    def winner_first(mb: Batch, idx: torch.Tensor) -> torch.Tensor:
        """(P, 2) rows reordered so that column 0 is the winner (ties keep their order)."""
        swap = mb["pref_signs"][idx[:, 0]] < 0
        return torch.where(swap.unsqueeze(1), idx.flip(1), idx)


@ALGORITHMS.register("d3po")
class D3PO(_PairAlgorithm):
    """Options (config.algorithm): beta (0.1), eps (ratio clamp, 0.1), ratio_to ("reference": the
    frozen base model, policy.reference(); "sampler": the log-probs recorded while sampling, i.e. the
    policy of this epoch, as a trust region that moves with training), tie_margin (pairs whose
    rewards differ by at most this are ties, weight 0)."""

    sampling = "sde"
    name = "d3po"

    def __init__(self, beta: float = 0.1, eps: float = 0.1, ratio_to: str = "reference",
                 tie_margin: float = 0.0):
        if beta <= 0 or not 0 < eps < 1 or tie_margin < 0:
            raise ValueError(f"algorithm d3po: need beta > 0, 0 < eps < 1, tie_margin >= 0 (got "
                             f"beta={beta}, eps={eps}, tie_margin={tie_margin})")
        if ratio_to not in ("reference", "sampler"):
            raise ValueError(f"algorithm.ratio_to={ratio_to!r}: use 'reference' or 'sampler'")
        self.beta, self.eps, self.ratio_to, self.tie_margin = beta, eps, ratio_to, tie_margin

    def num_loss_terms(self, num_train_steps: int) -> int:
        return num_train_steps

    def _ref_log_prob(self, policy, mb: Batch, j: int, st: RolloutSettings) -> torch.Tensor:
        """(B,) log-prob of the stored transition j under the reference (or the sampler)."""
        if self.ratio_to == "sampler":
            return mb["log_probs"][:, j]
        x, x_next = mb["latents"][:, j], mb["latents"][:, j + 1]
        n = x.shape[0]
        s, s_next = st.sigmas[j].expand(n).to(x.device), st.sigmas[j + 1].expand(n).to(x.device)
        with torch.no_grad(), policy.reference():
            v = policy.velocity(x, s, cond_of(mb), guidance=st.guidance)
            return sde_step(x, v, s, s_next, st.noise_level, float(st.sigmas[1]), st.kind,
                            prev_sample=x_next, cps_log_prob=st.cps_log_prob).log_prob

    def loss_terms(self, policy, mb: Batch, st: RolloutSettings) -> Iterator[Tuple[torch.Tensor, Dict]]:
        idx = pair_index(mb["group_ids"], self.name)
        signs, w = mb["pref_signs"][idx], mb["weights"][idx[:, 0]]
        for j in st.train_steps:
            lp = step_log_prob(policy, mb, j, st).log_prob
            ref = self._ref_log_prob(policy, mb, j, st)
            loss, log_rho, clipped = d3po_loss(lp[idx], ref[idx], signs, self.beta, self.eps, w)
            win = (log_rho.detach() * signs).sum(1) > 0
            yield loss, {"d3po_loss": loss.item(), "log_ratio_abs": log_rho.detach().abs().mean().item(),
                         "clipfrac": clipped.float().mean().item(),
                         "pref_accuracy": (win.float() * w).sum().item() / max(w.sum().item(), 1.0)}


@ALGORITHMS.register("diffusion_dpo")
class DiffusionDPO(_PairAlgorithm):
    """Options (config.algorithm): beta (~100 for flows, 5000 for SD1.5's epsilon loss), guidance
    (CFG scale of the velocities in the loss; 1.0 = conditional only), tie_margin (as d3po),
    num_sigmas (draws of (sigma, noise) per pair and minibatch, averaged: less variance). Pairs are
    sampled with the SDE (sample.noise_level) so that two samples from one initial noise differ, or,
    with pairs_from="file" and preference_file=PATH, read from people's labels (flowrl/algorithms/preferences.py): each
    epoch then trains on sample.batch_size x num_batches_per_epoch / 2 labelled pairs per process and
    samples nothing; the configured reward only scores the evaluations (pairs_from="file").
    preference_allow_outside: let the file's image paths leave its folder (absolute or ../ paths)."""

    sampling = "sde"
    name = "diffusion_dpo"

    def __init__(self, beta: float = 100.0, guidance: float = 1.0, tie_margin: float = 0.0,
                 num_sigmas: int = 1, pairs_from: str = "rollouts", preference_file: str = "",
                 preference_allow_outside: bool = False):
        if beta <= 0 or tie_margin < 0 or num_sigmas < 1:
            raise ValueError(f"algorithm diffusion_dpo: need beta > 0, tie_margin >= 0, num_sigmas >= 1 "
                             f"(got beta={beta}, tie_margin={tie_margin}, num_sigmas={num_sigmas})")
        self.beta, self.guidance, self.tie_margin, self.num_sigmas = beta, guidance, tie_margin, num_sigmas
        self._generator = torch.Generator().manual_seed(0)
        if pairs_from not in ("rollouts", "file") or (pairs_from == "file") != bool(preference_file):
            raise ConfigError(f"algorithm diffusion_dpo: pairs_from={pairs_from!r} with preference_file="
                              f"{preference_file!r}; use pairs_from='rollouts' (reward-ranked samples) or "
                              f"pairs_from='file' with --set algorithm.preference_file=PATH.jsonl")
        # people's labels instead of rollouts; read (and every image checked) before any model loads
        self.pairs = (load_preference_file(preference_file, allow_outside=preference_allow_outside)
                      if preference_file else None)

    def collect(self, policy, epoch: int, rank: int, world_size: int, num_samples: int):
        """With a preference file: this rank's num_samples / 2 labelled pairs of the epoch."""
        if self.pairs is None:
            return None
        per_rank = num_samples // 2
        index = epoch_pairs(len(self.pairs), per_rank, epoch, rank, world_size, seed=0)
        return file_batch(policy, self.pairs, index, (epoch * world_size + rank) * per_rank)

    def prepare(self, policy, batch: Batch, gathered: Batch, rank_slice: slice) -> Dict[str, float]:
        from flowrl.data.sampler import mix_seed   # fresh, rank-distinct, resumable noise each epoch
        self._generator.manual_seed(mix_seed(int(gathered["group_ids"][0]), rank_slice.start, 19))
        return super().prepare(policy, batch, gathered, rank_slice)

    def num_loss_terms(self, num_train_steps: int) -> int:
        return 1

    def loss_terms(self, policy, mb: Batch, st: RolloutSettings) -> Iterator[Tuple[torch.Tensor, Dict]]:
        idx = self.winner_first(mb, pair_index(mb["group_ids"], self.name))
        idx = idx.repeat(self.num_sigmas, 1)          # K draws of (sigma, noise) per pair
        x0 = mb["latents"][:, -1]
        x_w, x_l = x0[idx[:, 0]], x0[idx[:, 1]]
        noise = torch.randn(x_w.shape, generator=self._generator).to(x_w.device, x_w.dtype)
        sigma = torch.rand(len(idx), generator=self._generator).to(x_w.device)
        cond = {k: v[idx[:, 0]] for k, v in cond_of(mb).items()}
        w = mb["weights"][idx[:, 0]]
        loss, margin, _ = dpo_pair_loss(policy, x_w, x_l, cond, sigma, noise, self.beta, w, self.guidance)
        acc = ((margin.detach() > 0).float() * w).sum().item() / max(w.sum().item(), 1.0)
        yield loss, {"dpo_loss": loss.item(), "dpo_margin": margin.detach().mean().item(),
                     "pref_accuracy": acc}
