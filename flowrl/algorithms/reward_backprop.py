"""Reward backprop (DRTune, arXiv 2405.00760; AlignProp's truncation; seed 004): fine-tune with the
gradient of a DIFFERENTIABLE reward through the sampler, one step's graph at a time.

Rollouts are deterministic Euler ODE trajectories x_0 (noise) .. x_S stored without grad. Per sample
g = dR/dx_S through policy.decode and the weighted reward (prepare). With a stop-gradient at the
network input, x_{j+1} = x_j + dt_j * v_theta(sg(x_j), sigma_j), so dx_S/dx_{j+1} = I and

    dR/dtheta = sum_j  g . dt_j * dv_theta(sg(x_j), sigma_j)/dtheta,

i.e. the surrogate L_j = -sum(dt_j * v_theta(sg(x_j), sigma_j) * g) / B per trained step j has,
summed over the trained steps, exactly the (stop-grad) gradient of -mean(R). Each L_j is its own
loss term (the trainer backpropagates each separately), so memory holds one network pass. AlignProp
trains only the last K steps (option last_k). Optional w2_coefficient adds alpha * mean||v - sg(v_ref)||^2
against the frozen base (as ORW-CFM-W2) to slow the reward hacking / mode collapse that direct reward
gradients are prone to (seed 004: "DrTune leads to severe reward hacking and mode collapse").

Note: the trainer's gradient accumulation averages the K loss terms (accelerate divides each by the
number of terms), so the update follows the full gradient scaled by 1/K (Adam is scale-free anyway).
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Sequence, Tuple

import torch

from flowrl.algorithms.base import AlgorithmBase
from flowrl.algorithms.grpo import cond_of, train_velocity
from flowrl.batch import Batch
from flowrl.registry import ALGORITHMS, REWARDS
from flowrl.sampling.rollout import RolloutSettings

DIFFERENTIABLE_EXAMPLES = "pickscore, clipscore, aesthetic, moons_unlearning, moons_fidelity, digit_classifier"


def check_differentiable(reward) -> None:
    """Raise ValueError naming every weighted reward whose registry meta lacks differentiable=True."""
    weights = getattr(reward, "weights", None) or {n: 1.0 for n in getattr(reward, "fns", {}) or {}}
    names = [n for n, w in weights.items() if w != 0]   # weight-0 metrics are only logged
    bad = [n for n in names if not REWARDS.meta(n).get("differentiable", False)]
    if not names or bad:
        raise ValueError(
            f"algorithm 'reward_backprop' needs differentiable rewards, but reward(s) {bad or names} "
            f"are not differentiable (registered without differentiable=True). Use differentiable "
            f"rewards only (e.g. {DIFFERENTIABLE_EXAMPLES}), or train this reward with algorithm "
            f"'grpo' (or 'ddpo'), which need only reward values.")


def surrogate_loss(v: torch.Tensor, dt: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """-sum(dt * v * g) / B. v (B, *shape) with grad, dt (B,) or scalar (sigma' - sigma < 0),
    g (B, *shape) = dR/dx_S. Its gradient is step j's share of the gradient of -mean_B(R)."""
    dt = torch.as_tensor(dt, dtype=torch.float32, device=v.device)
    dt = dt.view(-1, *([1] * (v.ndim - 1))) if dt.ndim else dt
    return -(dt * v.float() * g.float()).sum() / v.shape[0]


def reward_gradient(policy, x_final: torch.Tensor, reward, prompts: Sequence[str],
                    metadata: Sequence[dict], chunk: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """g = dR/dx_final through policy.decode and the weighted reward, per sample (R of a sample does
    not depend on the others). x_final (B, *shape) -> (g (B, *shape) float32, R (B,)). `chunk` > 0
    bounds how many samples are decoded with a graph at once."""
    n = x_final.shape[0]
    step = chunk if chunk > 0 else n
    grads, values = [], []
    for start in range(0, n, step):
        sl = slice(start, min(start + step, n))
        x = x_final[sl].detach().clone().requires_grad_(True)
        with torch.enable_grad():
            total, _ = reward(policy.decode(x), list(prompts[sl]), list(metadata[sl]))
            if not total.requires_grad:
                raise RuntimeError(f"reward(s) {list(getattr(reward, 'fns', {}))} returned no gradient "
                                   f"w.r.t. the samples (computed under no_grad, or detached); reward "
                                   f"backprop needs a differentiable reward and decoder")
            (g,) = torch.autograd.grad(total.sum(), x)
        grads.append(g.float())
        values.append(total.detach())
    return torch.cat(grads), torch.cat(values)


def last_steps(num_steps: int, k: int) -> List[int]:
    """The last k of num_steps steps (AlignProp's truncated backprop); k in [1, num_steps]."""
    if not 1 <= k <= num_steps:
        raise ValueError(f"reward_backprop trains the last {k} steps of a {num_steps}-step sampler; use "
                         f"algorithm.last_k in [1, sample.num_steps] (0 = sample.timestep_fraction)")
    return list(range(num_steps - k, num_steps))


@ALGORITHMS.register("reward_backprop")
class RewardBackprop(AlgorithmBase):
    """Options (config.algorithm): last_k (train the last K ODE steps; 0 = the fraction
    sample.timestep_fraction of them, counted from the end), w2_coefficient (alpha >= 0: pull toward
    the base velocity; 0 = pure DRTune), grad_chunk (samples decoded with a graph at once; 0 = all).
    Differentiable rewards only; gradient checkpointing for SD3: model.gradient_checkpointing=True."""

    sampling = "ode"

    def __init__(self, last_k: int = 0, w2_coefficient: float = 0.0, grad_chunk: int = 0):
        if last_k < 0 or w2_coefficient < 0 or grad_chunk < 0:
            raise ValueError("algorithm reward_backprop: need last_k >= 0, w2_coefficient >= 0, grad_chunk >= 0")
        self.last_k, self.alpha, self.grad_chunk = last_k, w2_coefficient, grad_chunk
        self.reward, self._terms = None, None

    def setup(self, policy, reward) -> None:
        check_differentiable(reward)
        self.reward = reward

    def num_loss_terms(self, num_train_steps: int) -> int:
        """num_train_steps = int(S * sample.timestep_fraction) from the trainer."""
        self._terms = min(self.last_k, num_train_steps) if self.last_k else num_train_steps
        return self._terms

    def prepare(self, policy, batch: Batch, gathered: Batch, rank_slice: slice) -> Dict[str, float]:
        if self.reward is None:
            raise RuntimeError("reward_backprop.prepare called before setup(policy, reward)")
        g, _ = reward_gradient(policy, batch["latents"][:, -1], self.reward, batch["prompts"],
                               batch["metadata"], self.grad_chunk)
        batch["reward_grad"] = g.to(batch["latents"].device)
        return {"reward_grad_norm": g.flatten(1).norm(dim=1).mean().item()}

    def train_steps(self, num_steps: int) -> List[int]:
        k = self._terms if self._terms is not None else (self.last_k or num_steps)
        return last_steps(num_steps, k)

    def loss_terms(self, policy, mb: Batch, st: RolloutSettings) -> Iterator[Tuple[torch.Tensor, Dict]]:
        cond, g = cond_of(mb), mb["reward_grad"]
        for j in self.train_steps(len(st.sigmas) - 1):
            x = mb["latents"][:, j].detach()                    # stop-gradient at the network input
            n = x.shape[0]
            s, s_next = st.sigmas[j].expand(n).to(x.device), st.sigmas[j + 1].expand(n).to(x.device)
            v = train_velocity(policy, x, s, cond, st)
            loss = surrogate_loss(v, s_next - s, g)
            metrics = {"surrogate": loss.item()}
            if self.alpha > 0:
                with torch.no_grad(), policy.reference():
                    v_ref = policy.velocity(x, s, cond, guidance=st.guidance)
                w2 = ((v.float() - v_ref.float()) ** 2).mean()
                loss = loss + self.alpha * w2
                metrics["w2"] = w2.item()
            yield loss, metrics
