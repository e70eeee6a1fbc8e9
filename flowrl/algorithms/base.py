"""Defaults for the optional parts of the Algorithm protocol (flowrl.protocols.Algorithm).

A method overrides what it needs; the trainer calls every hook on every algorithm, never asking
which one it runs.
"""
from __future__ import annotations

from typing import Dict

from torch import nn

from flowrl.sampling.rollout import Trajectory, rollout


class AlgorithmBase:
    sampling = "sde"       # "sde": log-probs on the stochastic steps; "ode": deterministic samples
    group_local = False    # True: a prompt group's samples stay on one rank and in one minibatch

    def setup(self, policy, reward) -> None:
        """Bind what the method needs besides the batch (e.g. the reward, for reward backprop)."""

    def bind_run_dir(self, run_dir) -> None:
        """The run dir (e.g. where online human labels are kept, so --resume finds them)."""

    def modules(self) -> Dict[str, nn.Module]:
        """Extra modules trained with the policy (e.g. a value network)."""
        return {}

    def bind_modules(self, wrapped: Dict[str, nn.Module]) -> None:
        """The same modules after accelerate wrapped them (forward through these)."""

    def collect(self, policy, epoch: int, rank: int, world_size: int, num_samples: int):
        """This rank's `num_samples` training rows for `epoch` from the method's own data (e.g. a
        preference file), or None: the trainer rolls out the policy and scores it (the default)."""
        return None

    def rollout(self, policy, noise, cond, st, generator) -> Trajectory:
        """Sample from `noise` with the policy (SDE steps per st.sde_mask, ODE elsewhere)."""
        return rollout(lambda x, s: policy.velocity(x, s, cond, guidance=st.sample_guidance),
                       noise, st.sigmas, st.sde_mask, st.noise_level, st.kind, generator, st.cps_log_prob)

    def eval_sample(self, policy, noise, cond, num_steps: int, guidance: float = 1.0, generator=None):
        """What evaluation samples with: the policy's ODE (value matching: its controlled SDE)."""
        from flowrl.evaluation import ode_eval_sample
        return ode_eval_sample(policy, noise, cond, num_steps, guidance, generator)

    def state_dict(self) -> Dict:
        return {}

    def load_state_dict(self, state: Dict) -> None:
        pass
