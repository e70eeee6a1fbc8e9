"""Value Matching (cristianpjensen/diffusiongym, formerly flow_gym; seed 002): a value network
V(x, t) steers a FROZEN base flow through the memoryless SDE; no reward gradients are needed.

Conventions (flow_gym's, converted at one place, `base_drift`): time t in [0, 1] runs from noise
(t = 0) to data (t = 1), x_t = t x_data + (1 - t) x_noise. flowrl's policies use sigma = 1 - t and
v_flowrl = dx/dsigma, so the t-velocity is v_t = -v_flowrl(x, 1 - t). Memoryless OT noise
sigma(t) = sqrt(2 (1 - t) / t); base drift b = 2 v_t - x / t. Controlled SDE (Euler-Maruyama on
t_k = linspace(t_min = 0.02, 1, S + 1)):
    x_{k+1} = x_k + dt (b + sigma u) + sqrt(dt) sigma z,  u = -sigma(t_k) grad_x V(x_k, t_k),
running cost L_k = 1/2 ||u_k||^2. V regresses the cost-to-go c_k = sum_{j >= k} L_j dt - lambda r(x_1)
with weights w_k = 1 / (lambda (1 + 1/2 sum_{j >= k} sigma^2(t_j) dt)) (flow_gym's discretisation; flow_gym
sums L_j / S instead of L_j dt, i.e. 2% less running cost at t_min = 0.02). Optimum:
p* ∝ p_base exp(lambda r).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

from flowrl.algorithms.base import AlgorithmBase
from flowrl.algorithms.grpo import cond_of
from flowrl.batch import Batch
from flowrl.registry import ALGORITHMS
from flowrl.sampling.rollout import Trajectory

T_MIN = 0.02   # flow_gym starts at t = 0.02 to avoid the singularity of sigma(t) at t = 0


# ----------------------------------------------------------------------------------- pure maths
def time_grid(num_steps: int, t_min: float = T_MIN) -> torch.Tensor:
    """(S+1,) float32 times linspace(t_min, 1, S+1), noise -> data."""
    if num_steps < 1 or not 0 < t_min < 1:
        raise ValueError(f"time_grid: need num_steps >= 1 and 0 < t_min < 1, got {num_steps}, {t_min}")
    return torch.linspace(t_min, 1.0, num_steps + 1, dtype=torch.float64).float()


def memoryless_sigma(t: torch.Tensor) -> torch.Tensor:
    """sigma(t) = sqrt(2 (1 - t) / t) for the OT path (0 at t = 1). t (...,) in (0, 1]."""
    return torch.sqrt(2 * (1 - t) / t)


def t_velocity(v_flowrl: torch.Tensor) -> torch.Tensor:
    """flowrl velocity dx/dsigma at sigma = 1 - t -> flow_gym's dx/dt (the sign flips)."""
    return -v_flowrl


def base_drift(x: torch.Tensor, v_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Memoryless base drift b = 2 v_t - x / t. x, v_t (B, *shape); t (B,)."""
    return 2 * v_t - x / t.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)


def running_cost(u: torch.Tensor) -> torch.Tensor:
    """L = 1/2 ||u||^2 summed over the non-batch dims. (B, *shape) -> (B,)."""
    return 0.5 * (u.float() ** 2).flatten(1).sum(dim=1)


def cost_to_go(costs: torch.Tensor, dts: torch.Tensor, rewards: torch.Tensor,
               reward_scale: float) -> torch.Tensor:
    """c_k = sum_{j >= k} L_j dt_j - lambda r, k = 0..S. costs L (B, S), dts (S,), rewards (B,).
    -> (B, S+1); c_S = -lambda r."""
    steps = costs.float() * dts.float().to(costs.device)[None]
    terminal = -reward_scale * rewards.float().to(costs.device)[:, None]
    tail = torch.cat([steps, terminal], dim=1)
    return tail.flip(1).cumsum(1).flip(1)


def loss_weights(t: torch.Tensor, reward_scale: float) -> torch.Tensor:
    """w_k = 1 / (lambda (1 + 1/2 sum_{j >= k} sigma^2(t_j) dt)) on a uniform grid t (S+1,). -> (S+1,)."""
    dt = t[1] - t[0]
    tail = (memoryless_sigma(t.double()) ** 2).flip(0).cumsum(0).flip(0) * dt
    return (1 / (reward_scale * (1 + 0.5 * tail))).float()


def value_matching_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_k w_k mean_b (V_k - c_k)^2 / S. pred, target (B, S+1); weights (S+1,). -> scalar."""
    per_step = ((pred.float() - target.float()) ** 2).mean(dim=0)
    return (weights.to(per_step.device) * per_step).sum() / (pred.shape[1] - 1)


# ----------------------------------------------------------------------------------- networks
class ValueMLP(nn.Module):
    """V(x, t): (B, *shape), (B,) -> (B,). SiLU MLP on [t * flatten(x), t]; the head starts at zero,
    so the first rollouts are exactly the base model's (u = 0). Feeding t x (the data part of x_t)
    makes grad_x V = O(t) as t -> 0, as the optimal V's is, so the control sigma(t) grad_x V stays
    bounded where sigma(t) = sqrt(2 (1 - t) / t) blows up (scale_input=False: plain [x, t])."""

    def __init__(self, dim: int, hidden: int = 256, depth: int = 3, scale_input: bool = True,
                 cond_dim: int = 0):
        super().__init__()
        self.scale_input = scale_input
        layers, width = [], dim + 1 + cond_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        self.head = nn.Linear(width, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (B, *shape), t (B,) or (), c (B, cond_dim) the prompt's features (cond_vector) -> (B,)."""
        t = t.float().reshape(-1, 1).expand(x.shape[0], 1)
        z = x.flatten(1).float() * (t if self.scale_input else 1.0)
        h = torch.cat([z, t] + ([c.float()] if c is not None else []), dim=1)
        return self.head(self.body(h))[:, 0]


def cond_vector(cond: Dict[str, torch.Tensor], classes: int) -> torch.Tensor:
    """A policy's conditioning -> (B, k) float features for V: integer tensors (B,) one-hot over
    `classes` (e.g. digit labels 0-9 + null 10), float tensors flattened; keys in sorted order."""
    parts = []
    for k in sorted(cond):
        v = cond[k]
        if v.dtype in (torch.long, torch.int32, torch.int64) and v.ndim == 1:
            if int(v.max()) >= classes:
                raise ValueError(f"value_matching: cond {k!r} holds id {int(v.max())}; set "
                                 f"algorithm.cond_classes > {int(v.max())}")
            parts.append(torch.nn.functional.one_hot(v, classes).float())
        else:
            parts.append(v.flatten(1).float())
    return torch.cat(parts, dim=1)


class BoundValue(nn.Module):
    """V with its prompt features bound: (x, t) -> V(x, t, c); c (B, k) repeated to match x's batch
    when x stacks several states per sample (B * S rows, sample-major)."""

    def __init__(self, net: nn.Module, c: Optional[torch.Tensor]):
        super().__init__()
        self.net, self.c = net, c

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.c is None:
            return self.net(x, t)
        return self.net(x, t, self.c.repeat_interleave(x.shape[0] // self.c.shape[0], dim=0))


def value_control(value_net: Optional[nn.Module], x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """u = -sigma(t) grad_x V(x, t) (zeros if value_net is None). x (B, *shape), t (B,) -> (B, *shape).
    Works under torch.no_grad() (gradients are enabled locally, w.r.t. x only)."""
    if value_net is None:
        return torch.zeros_like(x)
    with torch.enable_grad():
        xg = x.detach().float().requires_grad_(True)
        grad, = torch.autograd.grad(value_net(xg, t).sum(), xg)
    return (-memoryless_sigma(t).reshape(-1, *([1] * (x.ndim - 1))) * grad).to(x.dtype)


# ----------------------------------------------------------------------------------- sampler
@dataclass
class ControlledTrajectory:
    latents: torch.Tensor        # (B, S+1, *shape) x at every t_k; latents[:, 0] is the noise
    running_costs: torch.Tensor  # (B, S) L_k = 1/2 ||u_k||^2
    t: torch.Tensor              # (S+1,) the time grid

    @property
    def final(self) -> torch.Tensor:
        return self.latents[:, -1]


@torch.no_grad()
def sample_controlled(velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                      value_net: Optional[nn.Module], noise: torch.Tensor, num_steps: int,
                      t_min: float = T_MIN, generator: Optional[torch.Generator] = None) -> ControlledTrajectory:
    """Euler-Maruyama of the controlled memoryless SDE from `noise` (B, *shape) placed at t_min.
    velocity(x, sigma) is the FROZEN base in flowrl's convention (sigma = 1 - t); value_net None
    samples the base SDE. Brownian increments come from `generator` (CPU) for reproducibility."""
    t = time_grid(num_steps, t_min)
    x, states = noise, [noise]
    costs = torch.zeros(noise.shape[0], num_steps, device=noise.device)
    for k in range(num_steps):
        tk = t[k].to(noise.device).expand(noise.shape[0])
        dt = float(t[k + 1] - t[k])
        sig = memoryless_sigma(tk).reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        u = value_control(value_net, x, tk)
        drift = base_drift(x, t_velocity(velocity(x, 1 - tk)), tk) + sig * u
        z = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
        x = x + dt * drift + math.sqrt(dt) * sig * z
        costs[:, k] = running_cost(u)
        states.append(x)
    return ControlledTrajectory(torch.stack(states, dim=1), costs, t)


@torch.no_grad()
def trajectory_costs(value_net: nn.Module, latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Recompute L_k = 1/2 ||u(x_k, t_k)||^2 of stored states latents (B, S+1, *shape). -> (B, S)."""
    n = latents.shape[0]
    xs = latents[:, :-1].flatten(0, 1)
    ts = t[:-1].to(latents.device).repeat(n)
    return running_cost(value_control(value_net, xs, ts)).reshape(n, -1)


class ControlledPolicy:
    """The frozen base + a value network as one sampler (what evaluation should use): sample(noise)
    runs the controlled SDE. Other attributes (sample_shape, encode, decode, ...) are the base's."""

    def __init__(self, policy, value_net: nn.Module, t_min: float = T_MIN):
        self.policy, self.value_net, self.t_min = policy, value_net, t_min

    def __getattr__(self, name):
        if name == "policy":          # not set yet (copy / unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.policy, name)

    def sample(self, noise: torch.Tensor, num_steps: int, cond=None, guidance: float = 1.0,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """noise (B, *shape) -> (B, *shape) samples of the controlled SDE with num_steps steps."""
        field = lambda x, s: self.policy.velocity(x, s, cond or {}, guidance=guidance)  # noqa: E731
        return sample_controlled(field, self.value_net, noise, num_steps, self.t_min, generator).final


# ----------------------------------------------------------------------------------- algorithm
@ALGORITHMS.register("value_matching")
class ValueMatching(AlgorithmBase):
    """Options (config.algorithm): reward_scale (lambda > 0), t_min (start of the SDE), hidden,
    depth and scale_input of the value MLP V(x, t) (ValueMLP); cond_classes > 0 makes V see the
    prompt (V(x, t, c), c = cond_vector: integer conditioning one-hot over cond_classes), needed
    when the reward depends on the prompt (digits). sample.num_steps is the SDE's number of steps
    (flow_gym: 100).
    The policy is frozen in setup(); only the value network trains (modules())."""

    sampling = "ode"     # no log-probs: the rollout below samples the controlled SDE itself

    def __init__(self, reward_scale: float = 1.0, t_min: float = T_MIN, hidden: int = 256, depth: int = 3,
                 scale_input: bool = True, cond_classes: int = 0):
        if reward_scale <= 0 or not 0 < t_min < 1 or hidden < 1 or depth < 1:
            raise ValueError(f"algorithm value_matching: need reward_scale > 0 (got {reward_scale}), "
                             f"0 < t_min < 1 (got {t_min}), hidden, depth >= 1")
        self.reward_scale, self.t_min, self.hidden, self.depth = reward_scale, t_min, hidden, depth
        self.scale_input, self.cond_classes = scale_input, cond_classes
        self.value_net: Optional[nn.Module] = None
        self._train_net: Optional[nn.Module] = None

    def setup(self, policy, reward) -> None:
        """Freeze the base and build V for its sample shape on its device."""
        policy.net.requires_grad_(False)
        device = getattr(policy, "device", "cpu")
        cond_dim = self._features(policy.encode([""])).shape[1] if self.cond_classes else 0
        self.value_net = ValueMLP(math.prod(policy.sample_shape), self.hidden, self.depth,
                                  self.scale_input, cond_dim).to(device)
        self._train_net = self.value_net

    def modules(self) -> Dict[str, nn.Module]:
        return {"value_net": self._require_net()}

    def bind_modules(self, wrapped: Dict[str, nn.Module]) -> None:
        self._train_net = wrapped["value_net"]     # DDP-wrapped: the loss forwards through this

    def _features(self, cond) -> Optional[torch.Tensor]:
        """The prompt features V sees (None: an unconditional V, cond_classes = 0)."""
        return cond_vector(cond, self.cond_classes) if self.cond_classes and cond else None

    def _bound(self, cond, net: Optional[nn.Module] = None) -> nn.Module:
        return BoundValue(net if net is not None else self._require_net(), self._features(cond))

    def _require_net(self) -> nn.Module:
        if self.value_net is None:
            raise RuntimeError("value_matching: call setup(policy, reward) before using the algorithm")
        return self.value_net

    def rollout(self, policy, noise, cond, st, generator) -> Trajectory:
        """Controlled SDE with S = len(st.sigmas) - 1 steps on flow_gym's grid (not the policy's)."""
        steps = len(st.sigmas) - 1
        field = lambda x, s: policy.velocity(x, s, cond, guidance=st.sample_guidance)  # noqa: E731
        traj = sample_controlled(field, self._bound(cond), noise, steps, self.t_min, generator)
        mask = torch.ones(steps, dtype=torch.bool)
        return Trajectory(traj.latents, torch.zeros(noise.shape[0], steps, device=noise.device),
                          (1 - traj.t), mask)

    def eval_sample(self, policy, noise, cond, num_steps: int, guidance: float = 1.0,
                    generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Evaluation samples with the controlled SDE (the base ODE would ignore V).
        noise (B, *shape) -> (B, *shape)."""
        sampler = ControlledPolicy(policy, self._bound(cond), self.t_min)
        return sampler.sample(noise, num_steps, cond, guidance, generator)

    def prepare(self, policy, batch: Batch, gathered: Batch, rank_slice: slice) -> Dict[str, float]:
        """Running costs recomputed with the (unchanged) V that sampled, then c_k. Adds vm_costs (B, S+1)."""
        latents = batch["latents"]
        t = time_grid(latents.shape[1] - 1, self.t_min)
        running = trajectory_costs(self._bound(cond_of(batch)), latents, t)
        batch["vm_costs"] = cost_to_go(running, t[1:] - t[:-1], batch["rewards"], self.reward_scale)
        return {"running_cost": float((running * (t[1] - t[0])).sum(1).mean()),
                "cost_to_go_0": float(batch["vm_costs"][:, 0].mean())}

    def num_loss_terms(self, num_train_steps: int) -> int:
        return 1

    def loss_terms(self, policy, mb: Batch, st) -> Iterator[Tuple[torch.Tensor, Dict]]:
        latents, costs = mb["latents"], mb["vm_costs"]
        n, points = latents.shape[0], latents.shape[1]
        t = time_grid(points - 1, self.t_min).to(latents.device)
        pred = self._bound(cond_of(mb), self._train_net)(latents.flatten(0, 1), t.repeat(n)).reshape(n, points)
        loss = value_matching_loss(pred, costs, loss_weights(t, self.reward_scale))
        yield loss, {"value_loss": loss.item()}

    def state_dict(self) -> Dict:
        """The value network's weights ride in the algorithm state (the trainer checkpoints only the
        policy's trainable weights and the optimizer)."""
        return {"value_net": {k: v.detach().cpu().clone() for k, v in self._require_net().state_dict().items()}}

    def load_state_dict(self, state: Dict) -> None:
        if "value_net" in state:   # in place: the optimizer keeps pointing at the same tensors
            with torch.no_grad():
                for k, v in self._require_net().state_dict().items():
                    v.copy_(state["value_net"][k])


# ----------------------------------------------------------------------------------- standalone
def value_matching(value_net: nn.Module, env, batch_size: int = 128, num_iterations: int = 1000,
                   lr: float = 1e-4, max_grad_norm: float = 1.0, seed: int = 0,
                   log_every: int = 0) -> List[Dict[str, float]]:
    """flow_gym-style loop: value_matching(value_net, env) trains V on env (flowrl.envs.make) with
    Adam (cosine decay to lr / 100, as diffusiongym's latest), one controlled rollout of
    `batch_size` per iteration and gradient clipping, and leaves env.value_net = value_net (so
    env.sample(n) samples the adapted model). -> per-iteration metrics."""
    env.value_net = value_net.to(env.device)
    opt = torch.optim.Adam(value_net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, num_iterations, eta_min=1e-2 * lr)
    g = torch.Generator().manual_seed(seed)
    t = time_grid(env.discretization_steps, env.t_min).to(env.device)
    weights, history = loss_weights(t, env.reward_scale), []
    for it in range(num_iterations):
        traj, rewards = env.rollout(batch_size, generator=g)
        costs = cost_to_go(traj.running_costs, t[1:] - t[:-1], rewards, env.reward_scale)
        pred = value_net(traj.latents.flatten(0, 1), t.repeat(batch_size)).reshape(batch_size, -1)
        loss = value_matching_loss(pred, costs, weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = nn.utils.clip_grad_norm_(value_net.parameters(), max_grad_norm)
        opt.step()
        sched.step()
        history.append({"loss": loss.item(), "reward": rewards.float().mean().item(),
                        "grad_norm": float(norm)})
        if log_every and (it + 1) % log_every == 0:
            print(f"[value_matching] it {it + 1}: " + ", ".join(f"{k} {v:.4g}" for k, v in history[-1].items()))
    return history
