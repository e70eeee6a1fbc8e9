"""Weighted sum of registered rewards, with shape and finiteness checks that name the culprit."""
from __future__ import annotations

from typing import Dict, Mapping, Sequence

import torch

from flowrl.registry import REWARDS


def check_scores(name: str, scores, batch_size: int) -> torch.Tensor:
    """Return `scores` as a float (B,) tensor or raise a ValueError (NonFiniteError for NaN/inf)
    naming reward `name`."""
    from flowrl.guards import NonFiniteError
    scores = torch.as_tensor(scores, dtype=torch.float32)
    if scores.shape != (batch_size,):
        raise ValueError(f"reward {name!r} returned shape {tuple(scores.shape)} for {batch_size} "
                         f"samples; a reward must return one score per sample, shape ({batch_size},)")
    bad = ~torch.isfinite(scores)
    if bad.any():
        idx = bad.nonzero().flatten()[:5].tolist()
        raise NonFiniteError(f"reward {name!r} returned {int(bad.sum())} non-finite score(s) "
                         f"(NaN/inf) at sample index {idx}; fix the reward or its inputs")
    return scores


class WeightedReward:
    """total = sum_k weight_k * reward_k(samples, prompts, metadata); components are kept for logging.
    A reward with weight 0 (config.reward.metrics) is computed and logged but adds nothing."""

    def __init__(self, fns: Mapping[str, object], weights: Mapping[str, float]):
        self.fns = dict(fns)
        self.weights = {k: float(v) for k, v in weights.items()}

    def __call__(self, samples: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict]):
        """-> (total (B,), {name: (B,)}) on the CPU, float32."""
        n = samples.shape[0]
        parts: Dict[str, torch.Tensor] = {}
        from flowrl.guards import NonFiniteError
        for name, fn in self.fns.items():
            try:
                parts[name] = check_scores(name, fn(samples, list(prompts), list(metadata)), n).cpu()
            except NonFiniteError as e:
                if bool(torch.isfinite(samples).all()):
                    raise
                raise NonFiniteError(f"the samples are non-finite (NaN/inf): the policy diverged; lower "
                                     f"train.lr or check the data ({e})") from None
        total = sum(self.weights[k] * parts[k] for k in parts)
        return total, parts


def build_reward(weights: Mapping[str, float], options: Mapping[str, Mapping], device,
                 metrics: Sequence[str] = ()) -> WeightedReward:
    """Build every reward with a non-zero weight, plus the `metrics` (logged, weight 0; e.g. the strict
    accuracy `scene_accuracy` next to the fractional `scene_geneval`). `options[name]` go to its factory."""
    weights = {k: float(v) for k, v in dict(weights).items() if float(v) != 0.0}
    if not weights:
        raise ValueError("config.reward.weights has no non-zero weight; set e.g. "
                         "--set reward.weights.<name>=1.0")
    options = dict(options or {})
    unknown = set(options) - set(REWARDS.names())
    if unknown:
        raise KeyError(f"config.reward.options names unknown reward(s) {sorted(unknown)}; "
                       f"known: {REWARDS.names()}")
    metrics = [m for m in metrics if m not in weights]
    unknown = [m for m in metrics if m not in REWARDS.names()]
    if unknown:
        raise KeyError(f"config.reward.metrics names unknown reward(s) {unknown}; known: {REWARDS.names()}")
    names = list(weights) + metrics
    fns = {name: _build_one(name, device, dict(options.get(name, {}) or {})) for name in names}
    return WeightedReward(fns, {**weights, **{m: 0.0 for m in metrics}})


def _build_one(name: str, device, options: Dict):
    """REWARDS.build, with a factory's refusal of its options (ValueError; an unknown option, which
    the registry reports as a TypeError saying "Fix the options") raised as a ConfigError: a user
    error, one line and exit 2 from the CLI, naming the reward."""
    from flowrl.config import ConfigError
    from flowrl.errors import UserError
    try:
        return REWARDS.build(name, device, **options)
    except UserError:
        raise
    except (ValueError, TypeError) as e:
        if isinstance(e, TypeError) and "Fix the options" not in str(e):
            raise                                   # a bug, not the options: keep the traceback
        raise ConfigError(f"reward {name!r} refused its options {options}: {e}") from e
