"""flow_gym-style environments on flowrl's registries: a frozen base model + a reward.

    env = flowrl.make("1d/gmm", "1d/binary", discretization_steps=100, reward_scale=1.0)
    x = env.sample(512)                      # the base model (ODE)
    value_matching(ValueMLP(1), env)         # flowrl.algorithms.value_matching
    x = env.sample(512)                      # the adapted model (controlled memoryless SDE)

Ids are "domain/name". Bases: BASES below (policy registry name + its default options). Rewards:
REWARD_ALIASES below, plus every registered reward as "<its domain>/<registry name>". A base and a
reward must share the domain (ValueError); an unknown id raises KeyError listing the known ones.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from flowrl.registry import POLICIES, REWARDS

# id -> (POLICIES name, default options); the domain is the id's prefix
BASES: Dict[str, Tuple[str, dict]] = {
    "2d/moons": ("toy2d", {"dataset": "moons"}),
    "1d/gmm": ("gmm1d", {}),
}
# id -> REWARDS name
REWARD_ALIASES: Dict[str, str] = {
    "2d/unlearning": "moons_unlearning",
    "2d/fidelity": "moons_fidelity",
    "1d/binary": "binary_1d",
    "1d/gaussian": "gaussian_1d",
}


def reward_ids() -> Dict[str, str]:
    """Every reward id -> registry name: the aliases and '<domain>/<name>' of domain-tagged rewards."""
    ids = {f"{REWARDS.meta(n)['domain']}/{n}": n for n in REWARDS.names() if REWARDS.meta(n).get("domain")}
    ids.update(REWARD_ALIASES)
    return ids


def _domain(kind: str, id_: str, known) -> str:
    if id_ not in known:
        raise KeyError(f"unknown {kind} id {id_!r}; known {kind} ids: {', '.join(sorted(known))}")
    return id_.split("/", 1)[0]


class Environment:
    """A frozen base policy (flowrl Policy protocol) and a reward on samples, with the sampling
    settings of flow_gym: `discretization_steps` steps, `reward_scale` lambda, SDE from t_min.
    env.value_net (None: the base) switches sample() to the controlled memoryless SDE."""

    def __init__(self, policy, reward_fn, domain: str, discretization_steps: int = 100,
                 reward_scale: float = 1.0, device="cpu", t_min: float = 0.02):
        if discretization_steps < 1 or reward_scale <= 0:
            raise ValueError(f"need discretization_steps >= 1 and reward_scale > 0, got "
                             f"{discretization_steps}, {reward_scale}")
        self.policy, self.reward_fn, self.domain = policy, reward_fn, domain
        self.discretization_steps, self.reward_scale = discretization_steps, reward_scale
        self.device, self.t_min = torch.device(device), t_min
        self.value_net: Optional[torch.nn.Module] = None

    @property
    def sample_shape(self):
        return tuple(self.policy.sample_shape)

    def noise(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """p0 = N(0, I): (n, *sample_shape) on the env's device."""
        return torch.randn((n, *self.sample_shape), generator=generator).to(self.device)

    def reward(self, samples: torch.Tensor) -> torch.Tensor:
        """(n, *shape) samples -> (n,) float rewards (unconditional: empty prompts)."""
        n = samples.shape[0]
        out = self.reward_fn(self.policy.decode(samples), [""] * n, [{}] * n)
        return torch.as_tensor(out).float().reshape(n).to(self.device)

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """n samples (n, *shape): the base ODE (Euler, discretization_steps) when value_net is None,
        else the controlled memoryless SDE."""
        from flowrl.sampling.rollout import ode_sample
        if self.value_net is not None:
            return self._trajectory(n, generator).final
        field = lambda x, s: self.policy.velocity(x, s, {}, guidance=1.0)  # noqa: E731
        return ode_sample(field, self.noise(n, generator), self.policy.sigmas(self.discretization_steps))

    def rollout(self, n: int, generator: Optional[torch.Generator] = None):
        """One batch of the controlled SDE (the base SDE if value_net is None).
        -> (ControlledTrajectory with latents (n, S+1, *shape) and running_costs (n, S), rewards (n,))."""
        traj = self._trajectory(n, generator)
        return traj, self.reward(traj.final)

    def _trajectory(self, n: int, generator: Optional[torch.Generator] = None):
        from flowrl.algorithms.value_matching import sample_controlled
        field = lambda x, s: self.policy.velocity(x, s, {}, guidance=1.0)  # noqa: E731
        return sample_controlled(field, self.value_net, self.noise(n, generator), self.discretization_steps,
                                 self.t_min, generator)


def make(base_id: str, reward_id: str, discretization_steps: int = 100, reward_scale: float = 1.0,
         device="cpu", base_kwargs: Optional[dict] = None, reward_kwargs: Optional[dict] = None) -> Environment:
    """Build an Environment from ids "domain/name" (see the module docstring). base_kwargs go to the
    policy factory (over the id's defaults), reward_kwargs to the reward factory. The base is frozen."""
    from flowrl.cache import cache_dir
    from flowrl.protocols import Runtime
    rewards = reward_ids()
    base_domain = _domain("base", base_id, BASES)
    reward_domain = _domain("reward", reward_id, rewards)
    if base_domain != reward_domain:
        raise ValueError(f"base {base_id!r} makes {base_domain!r} samples but reward {reward_id!r} scores "
                         f"{reward_domain!r} samples; pick a reward of domain {base_domain!r}: "
                         f"{', '.join(sorted(i for i in rewards if i.startswith(base_domain + '/')))}")
    name, defaults = BASES[base_id]
    dev = torch.device(device)
    policy = POLICIES.build(name, Runtime(dev, cache_dir=cache_dir()), **{**defaults, **(base_kwargs or {})})
    policy.net.requires_grad_(False)
    reward_fn = REWARDS.build(rewards[reward_id], dev, **(reward_kwargs or {}))
    return Environment(policy, reward_fn, base_domain, discretization_steps, reward_scale, dev)
