"""Value checks of a loaded config, run by flowrl.config.load_config before anything is built.

Each failure is a ConfigError naming the key, its value, where it came from (the config file or the
`--set` that gave it) and the allowed values, so a typo never reaches the trainer as a traceback.
"""
from __future__ import annotations

import math
from typing import Callable, List, Sequence, Tuple

from flowrl.lr_schedule import SCHEDULES


def _number(pred: Callable[[float], bool]) -> Callable[[object], bool]:
    def check(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and pred(v)
    return check


# (key, test, what is allowed)
RANGES: List[Tuple[str, Callable[[object], bool], str]] = [
    ("num_epochs", _number(lambda v: v >= 1), "an integer >= 1"),
    ("cpu_threads", _number(lambda v: v >= 0), "an integer >= 0 (0 = torch's default)"),
    ("mixed_precision", lambda v: v in ("no", "fp16", "bf16"), 'one of "no", "fp16", "bf16"'),
    ("sample.num_steps", _number(lambda v: v >= 1), "an integer >= 1"),
    ("sample.eval_num_steps", _number(lambda v: v >= 1), "an integer >= 1"),
    ("sample.kind", lambda v: v in ("sde", "cps"), 'one of "sde", "cps"'),
    ("sample.noise_level", _number(lambda v: v >= 0), "a number >= 0"),
    ("sample.timestep_fraction", _number(lambda v: 0 < v <= 1), "a number in (0, 1]"),
    ("train.lr", _number(lambda v: v > 0), "a finite number > 0 (e.g. 1e-4)"),
    ("train.lr_schedule", lambda v: v in SCHEDULES, f"one of {', '.join(map(repr, SCHEDULES))}"),
    ("train.lr_decay_epochs", _number(lambda v: v >= 0), "an integer >= 0 (0 = num_epochs)"),
    ("train.lr_final", _number(lambda v: 0 <= v <= 1), "a number in [0, 1] (a fraction of train.lr)"),
    ("train.num_inner_epochs", _number(lambda v: v >= 1), "an integer >= 1"),
    ("train.max_grad_norm", _number(lambda v: v > 0), "a finite number > 0"),
    ("train.ema_decay", _number(lambda v: 0 <= v < 1), "a number in [0, 1)"),
    ("eval.every", _number(lambda v: v >= 0), "an integer >= 0 (0: only before and after training)"),
    ("checkpoint.every", _number(lambda v: v >= 0), "an integer >= 0"),
    ("checkpoint.keep_last", _number(lambda v: v >= 0), "an integer >= 0 (0 = keep all)"),
]


def origin(key: str, file: str, overrides: Sequence[str]) -> str:
    """'--set KEY=...' when an override gave `key` (the last one wins), else the config file."""
    given = [o for o in overrides if o.split("=", 1)[0].strip() == key]
    return f"--set {given[-1]}" if given else file


def _get(config, key: str):
    node = config
    for part in key.split("."):
        if part not in node:
            return None
        node = node[part]
    return node


def check_values(config, spec: str, overrides: Sequence[str] = ()) -> None:
    """Raise ConfigError for the first value out of range or a name no registry knows."""
    from flowrl.config import ConfigError
    file = spec.partition(":")[0]
    for key, ok, allowed in RANGES:
        value = _get(config, key)
        if value is not None and not ok(value):
            raise ConfigError(f"{key}={value!r} (from {origin(key, file, overrides)}) must be {allowed}; "
                              f"change it there or pass --set {key}=...")
    _check_names(config, file, overrides)


def _check_names(config, file: str, overrides: Sequence[str]) -> None:
    import difflib

    from flowrl.config import ConfigError
    from flowrl.registry import ALGORITHMS, POLICIES, REWARDS
    names = [("model.name", config.model.name, POLICIES), ("algorithm.name", config.algorithm.name, ALGORITHMS)]
    names += [(f"reward.weights.{k}", k, REWARDS) for k in config.reward.weights.keys()]
    names += [("reward.metrics", k, REWARDS) for k in config.reward.get("metrics", ())]
    for key, value, registry in names:
        known = registry.names()
        if value not in known:
            close = difflib.get_close_matches(str(value), known, n=1)
            hint = f'Did you mean "{close[0]}"? ' if close else ""
            raise ConfigError(f"{key}: unknown {registry.kind} {value!r} (from {origin(key, file, overrides)}). "
                              f"{hint}Known: {', '.join(known)}")
