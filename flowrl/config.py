"""Load `FILE.py:NAME` configs through ml_collections, apply typed overrides, check batch arithmetic.

Overrides go through ml_collections' own `config_flags` (a private absl FlagValues, no hand-written
parser), so types are checked by ml_collections and a misspelt key gets absl's "did you mean".
"""
from __future__ import annotations

import importlib.util
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Sequence

from flowrl.errors import UserError


class ConfigError(UserError, ValueError):
    """A config problem, with a message that says what to change."""


def config_dirs() -> List[Path]:
    """Where bare config file names are looked up: the project's config/ folder, then ./config."""
    return [Path(__file__).resolve().parent.parent / "config", Path.cwd() / "config"]


def sibling(file: str, name: str):
    """Import config module `name` that lives next to `file` (named experiments import base.py)."""
    path = Path(file).with_name(f"{name}.py")
    key = f"flowrl_config_{name}_{abs(hash(str(path)))}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[key] = module
    return sys.modules[key]


def resolve_config_path(spec: str) -> str:
    """'grpo.py:moons' -> '/repo/config/grpo.py:moons'.

    A bare file name (no '/') is looked up in config_dirs() FIRST (the project's config/, then
    ./config), and only then in the current folder, so a stray ./grpo.py never shadows the project's
    config. A path with a folder (`./grpo.py`, `path/to/x.py`) loads exactly that file."""
    file, sep, name = spec.partition(":")
    bare = "/" not in file and "\\" not in file
    candidates = [d / file for d in config_dirs()] + [Path(file)] if bare else [Path(file)]
    for cand in candidates:
        if cand.is_file():
            return f"{cand.resolve()}{sep}{name}"
    looked = ", ".join(str(c) for c in candidates)
    raise ConfigError(f"config file {file!r} not found (looked for {looked}); pass a path "
                      f"or a file of the config/ folder, e.g. --config grpo.py:moons")


def check_config_file(file: str) -> None:
    """Compile the config file first, so a syntax error or non-UTF-8 text names FILE:LINE."""
    from flowrl.errors import decode_utf8
    text = decode_utf8(Path(file), "config file")
    try:
        compile(text, file, "exec")
    except SyntaxError as e:
        raise ConfigError(f"{e.filename}:{e.lineno}: syntax error in the config file ({e.msg}); fix that "
                          f"line") from None


def load_config(spec: str, overrides: Sequence[str] = ()):
    """Build config `spec` ('FILE.py:NAME'), lock it, then apply 'key=value' overrides."""
    from absl import flags
    from ml_collections import config_flags

    path = resolve_config_path(spec)
    check_config_file(path.partition(":")[0])
    argv = ["flowrl", f"--config={path}"] + [f"--config.{o}" for o in overrides]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", default=None, flag_values=fv, lock_config=True,
                                    sys_argv=argv)
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"override {o!r} needs the form key=value, e.g. train.lr=1e-4")
    # ml_collections loads the file as module "config_config" with SourceFileLoader.load_module, which
    # re-executes into an existing module of that name: drop it, or an earlier file's names survive
    sys.modules.pop("config_config", None)
    try:
        fv(argv)
    except flags.Error as e:
        msg = str(e).replace("--config.", "").replace("config.", "")
        raise ConfigError(f"bad override: {msg}") from None
    except (AttributeError, KeyError) as e:  # a locked ConfigDict refuses unknown keys
        text = (str(e.args[0]) if e.args else str(e)).replace("\\n", "\n").replace("\\'", "'")
        text = text.strip("'\"")
        if "has no experiment" in text:
            raise ConfigError(text) from None
        if "has no attribute 'get_config" in text:
            raise ConfigError(f"{path.partition(':')[0]} has no get_config(): a config file defines "
                              f"get_config(name) returning an ml_collections.ConfigDict (see "
                              f"config/grpo.py)") from None
        bad, _, hint = text.partition("\n")
        bad = bad.strip("'\"")
        where = next((o for o in overrides if bad in o.split("=")[0].split(".")), "")
        raise ConfigError(f"unknown config key {bad!r} in --set {where}. {hint}".strip()) from None
    from flowrl.config_checks import check_values
    check_values(fv.config, path, overrides)
    return fv.config


@dataclass
class BatchPlan:
    """Derived batch arithmetic, checked before the first step."""
    num_processes: int
    samples_per_epoch: int          # global
    groups_per_epoch: int           # global = prompts per epoch
    samples_per_process: int        # per epoch
    minibatches_per_process: int    # per inner epoch
    optimizer_steps_per_epoch: int
    eval_samples_per_process: int

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self).items())


def plan_batches(c, num_processes: int, group_local: bool = False) -> BatchPlan:
    """Check that the batch sizes divide; raise ConfigError naming the numbers to change.
    group_local: the algorithm needs each prompt group on one rank and in one minibatch."""
    s, t, P = c.sample, c.train, num_processes
    for key, val in [("sample.batch_size", s.batch_size), ("sample.num_batches_per_epoch",
                     s.num_batches_per_epoch), ("sample.group_size", s.group_size),
                     ("train.batch_size", t.batch_size), ("train.gradient_accumulation_steps",
                     t.gradient_accumulation_steps), ("eval.num_samples", c.eval.num_samples)]:
        if val < 1:
            raise ConfigError(f"{key} must be >= 1 (got {val})")
    per_proc = s.batch_size * s.num_batches_per_epoch
    total = per_proc * P
    if total % s.group_size:
        raise ConfigError(
            f"sample.batch_size ({s.batch_size}) x sample.num_batches_per_epoch ({s.num_batches_per_epoch})"
            f" x processes ({P}) = {total} samples per epoch is not divisible by sample.group_size "
            f"({s.group_size}); change one of them so the product is a multiple of the group size")
    if per_proc % t.batch_size:
        raise ConfigError(
            f"train.batch_size ({t.batch_size}) must divide the {per_proc} samples each process draws "
            f"per epoch (sample.batch_size x sample.num_batches_per_epoch); change train.batch_size")
    minibatches = per_proc // t.batch_size
    if minibatches % t.gradient_accumulation_steps:
        raise ConfigError(
            f"train.gradient_accumulation_steps ({t.gradient_accumulation_steps}) must divide the "
            f"{minibatches} minibatches per inner epoch (= {per_proc} / train.batch_size {t.batch_size})")
    if group_local and (per_proc % s.group_size or t.batch_size % s.group_size):
        raise ConfigError(
            f"algorithm {c.algorithm.name!r} keeps each prompt group (sample.group_size = {s.group_size}) "
            f"on one process and in one minibatch: make sample.batch_size x sample.num_batches_per_epoch "
            f"({per_proc}) and train.batch_size ({t.batch_size}) multiples of the group size")
    if c.eval.num_samples % P:
        raise ConfigError(f"eval.num_samples ({c.eval.num_samples}) must be divisible by the "
                          f"{P} processes; change eval.num_samples")
    if s.sde_window_size > s.num_steps:
        raise ConfigError(f"sample.sde_window_size ({s.sde_window_size}) exceeds sample.num_steps "
                          f"({s.num_steps})")
    return BatchPlan(P, total, total // s.group_size, per_proc, minibatches,
                     t.num_inner_epochs * minibatches // t.gradient_accumulation_steps,
                     c.eval.num_samples // P)


def flatten(d: Dict, prefix: str = "") -> Dict[str, object]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:  # YAML gives lists back for tuples
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


# Keys that may differ when a run is resumed (they do not change what the run computes so far).
RESUMABLE_CHANGES = ("num_epochs", "logging.", "checkpoint.keep_last", "eval.diversity", "reward.overlap",
                     "reward.options.remote.url", "reward.options.remote.timeout",
                     "reward.options.remote.retries", "reward.options.remote.backoff",
                     "train.nonfinite", "train.max_nonfinite_steps")


def resume_conflicts(saved: Dict, current: Dict) -> List[str]:
    """Keys whose values differ between a run dir's saved config and the current one."""
    a, b = flatten(saved), flatten(current)
    keys = sorted(set(a) | set(b))
    return [f"{k}: run has {a.get(k)!r}, now {b.get(k)!r}" for k in keys
            if a.get(k) != b.get(k) and not k.startswith(RESUMABLE_CHANGES)]
