"""Statistics for benchmarks over seeds: pure functions over numbers and metrics rows, no config.

Used by scripts/bench_tiny_t2i.py: a run's learning curve (held-out reward against fine-tuning
seconds) from its metrics rows, time / samples to a target, curves of several seeds on one time
grid, and the mean with a Student-t 95% interval over seeds.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import numpy as np

# two-sided 95% Student-t quantiles t_{0.975, df}, df = 1..30 (beyond: the normal 1.96)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
         2.052, 2.048, 2.045, 2.042)


def t_quantile_975(df: int) -> float:
    """t_{0.975} with `df` >= 1 degrees of freedom (1.96 for df > 30)."""
    if df < 1:
        raise ValueError("t_quantile_975: need df >= 1")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def standard_error(values: Sequence[float]) -> float:
    """Sample std (n - 1) / sqrt(n) of `values` (n >= 2; nan for fewer)."""
    x = np.asarray(values, dtype=float)
    return float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) >= 2 else float("nan")


def mean_interval(values: Sequence[float]) -> Dict[str, float]:
    """Mean and two-sided 95% Student-t interval of the mean over independent runs (seeds).
    NaNs are dropped; one value gives a zero-width interval flagged by n = 1.
    -> {"mean", "lo", "hi", "half", "n"}."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if len(x) == 0:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "half": float("nan"), "n": 0}
    m = float(x.mean())
    half = t_quantile_975(len(x) - 1) * standard_error(x) if len(x) >= 2 else 0.0
    return {"mean": m, "lo": m - half, "hi": m + half, "half": half, "n": len(x)}


def learning_curve(rows: List[dict], key: str = "eval_reward", clock: str = "time") -> Dict[str, np.ndarray]:
    """A run's evaluations against its cumulative fine-tuning work. rows: metrics.jsonl rows, row 0
    the base model's evaluation (epoch 0), then one per epoch with time_collect + time_train
    (seconds, evaluation excluded) and reward_samples_per_rank (samples drawn per process).
    -> {"seconds" (E,), "samples" (E,), "epochs" (E,), "values" (E,)} over the E rows that carry
    `key` (the base row at 0 s, 0 samples). clock "time": wall seconds, "cpu": the process's CPU
    seconds (cpu_collect + cpu_train, all threads: robust to other jobs on a shared CPU)."""
    secs, samples = 0.0, 0
    out = {"seconds": [], "samples": [], "epochs": [], "values": []}
    for r in rows:
        if r.get("epoch", 0) > 0:
            secs += r[f"{clock}_collect"] + r[f"{clock}_train"]
            samples += int(sum(r.get("reward_samples_per_rank", [0])))
        if key in r:
            for k, v in (("seconds", secs), ("samples", samples), ("epochs", r.get("epoch", 0)),
                         ("values", r[key])):
                out[k].append(v)
    return {k: np.asarray(v, dtype=float) for k, v in out.items()}


def first_reaching(at: Sequence[float], values: Sequence[float], target: float) -> Optional[float]:
    """The `at` (seconds, samples, ...) of the first evaluation whose value is >= target, or None.
    An evaluation is a point measurement: no interpolation between evaluations."""
    for a, v in zip(at, values):
        if v >= target:
            return float(a)
    return None


def on_grid(times: Sequence[float], values: Sequence[float], grid: Sequence[float]) -> np.ndarray:
    """Linear interpolation of one curve (increasing `times`) onto `grid`; nan outside the curve's
    measured span [times[0], times[-1]] (no extrapolation). -> (len(grid),)."""
    t, v, g = (np.asarray(a, dtype=float) for a in (times, values, grid))
    out = np.interp(g, t, v)
    out[(g < t[0]) | (g > t[-1])] = np.nan
    return out


def band(curves: np.ndarray) -> Dict[str, np.ndarray]:
    """Per grid point mean and 95% t-interval over the curves (R, G) that are defined there (nan =
    undefined; a point with fewer than 2 curves has nan bounds). -> {"mean", "lo", "hi", "n"} (G,)."""
    c = np.asarray(curves, dtype=float)
    stats = [mean_interval(c[:, i]) for i in range(c.shape[1])]
    out = {k: np.array([s[k] for s in stats], dtype=float) for k in ("mean", "lo", "hi", "n")}
    few = out["n"] < 2
    out["lo"][few], out["hi"][few] = np.nan, np.nan
    return out


def paired_standard_error(after: Sequence[float], before: Sequence[float]) -> float:
    """Standard error of mean(after - before) over paired samples (same prompt and noise): the
    evaluation's own noise on an improvement."""
    return standard_error(np.asarray(after, dtype=float) - np.asarray(before, dtype=float))


def run_summary(rows: List[dict], target: float, clock: str = "time") -> Dict[str, Optional[float]]:
    """One run's figures from its metrics rows (see learning_curve): base and final held-out reward,
    strict accuracy (eval_scene_accuracy, if logged), objects beyond the prompt's per image
    (eval_scene_extra_objects, if logged), diversity kept (final / base eval_diversity),
    fine-tuning seconds and samples in all, and seconds / samples / epochs at the first evaluation
    with reward >= target (None if never); seconds on `clock` (see learning_curve)."""
    c = learning_curve(rows, clock=clock)
    evals = [r for r in rows if "eval_reward" in r]
    base, last = evals[0], evals[-1]
    acc = learning_curve(rows, "eval_scene_accuracy")
    div = [r.get("eval_diversity") for r in (base, last)]
    return {"reward_base": base["eval_reward"], "reward": last["eval_reward"],
            "accuracy_base": base.get("eval_scene_accuracy"), "accuracy": last.get("eval_scene_accuracy"),
            "extra_base": base.get("eval_scene_extra_objects"), "extra": last.get("eval_scene_extra_objects"),
            "diversity_kept": div[1] / div[0] if None not in div and div[0] > 0 else None,
            "seconds": float(c["seconds"][-1]), "samples": float(c["samples"][-1]),
            "epochs": float(c["epochs"][-1]),
            "seconds_to_target": first_reaching(c["seconds"], c["values"], target),
            "samples_to_target": first_reaching(c["samples"], c["values"], target),
            "epochs_to_target": first_reaching(c["epochs"], c["values"], target),
            "curve_seconds": c["seconds"].tolist(), "curve_reward": c["values"].tolist(),
            "curve_accuracy": acc["values"].tolist()}


def variance_split(rewards) -> Dict[str, float]:
    """Law of total variance over GRPO's two sources of within-prompt spread. rewards (P, K, M):
    P prompts x K initial noises x M SDE-window draws per noise. Population variances (ddof 0), so
    total = window + initial exactly. -> {"total": E_p Var_{k,m} r, "window": E_{p,k} Var_m r,
    "initial": E_p Var_k E_m r, "window_fraction": window / total, "zero_same_x0": fraction of
    (p, k) whose M draws all score alike, "zero_mixed": fraction of prompts whose K*M all do}."""
    r = np.asarray(rewards, dtype=float)
    p = r.shape[0]
    total = float(r.reshape(p, -1).var(axis=1).mean())
    window = float(r.var(axis=2).mean())
    initial = float(r.mean(axis=2).var(axis=1).mean())
    flat = r.reshape(p, -1)
    return {"total": total, "window": window, "initial": initial,
            "window_fraction": window / total if total > 0 else float("nan"),
            "zero_same_x0": float((r.max(axis=2) == r.min(axis=2)).mean()),
            "zero_mixed": float((flat.max(axis=1) == flat.min(axis=1)).mean())}


PHASES = ("encode", "sample", "decode", "reward", "train")


def phase_split(rows: List[dict]) -> Dict[str, float]:
    """Mean seconds per epoch of each phase (time_<phase>; "train" = time_train, the rest from the
    trainer's timers, 0 where a method has no such phase), "epoch" = time_collect + time_train and
    "cpu_epoch" = cpu_collect + cpu_train (the process's CPU seconds, 0 if not logged), over the
    epochs after the first (warm-up). -> {phase: seconds}."""
    ep = [r for r in rows if r.get("epoch", 0) > 1] or [r for r in rows if r.get("epoch", 0) > 0]
    out = {p: float(np.mean([r.get(f"time_{p}", 0.0) for r in ep])) for p in PHASES}
    out["epoch"] = float(np.mean([r["time_collect"] + r["time_train"] for r in ep]))
    out["cpu_epoch"] = float(np.mean([r.get("cpu_collect", 0.0) + r.get("cpu_train", 0.0) for r in ep]))
    return out


def per_rank_overrides(c, procs: int) -> List[str]:
    """--set overrides that keep config `c`'s GLOBAL sampling and training batches on `procs`
    processes (each rank takes 1/procs of every batch). ValueError naming the sizes that do not
    divide."""
    sizes = {"sample.batch_size": int(c.sample.batch_size), "train.batch_size": int(c.train.batch_size)}
    bad = {k: v for k, v in sizes.items() if v % procs} if procs >= 1 else sizes
    if bad:
        raise ValueError(f"{bad} per process do not divide by {procs} processes: pick a number "
                         f"of processes >= 1 that divides them, or set the batch sizes")
    return [f"{k}={v // procs}" for k, v in sizes.items()]


def best_of_n(key, values: Dict[str, object], n: int) -> Dict[str, np.ndarray]:
    """Best-of-n headroom of a model's own samples. key (P, K): a score of K samples per prompt (the
    pick criterion); values: name -> (P, K) measures of the same samples. For each prompt, the
    expected value of each measure at the key's best sample of a uniformly random n-subset of its K
    samples (exact, over all C(K, n) subsets: the i-th smallest key, 1-based, is a subset's best with
    probability C(i-1, n-1) / C(K, n)); samples with tied keys share their mean measure. -> name ->
    (P,) per prompt (their mean is the headroom, their standard_error its noise over prompts).
    n = 1 gives each prompt's plain mean; n = K the best of all K."""
    key = np.asarray(key, dtype=float)
    p, k = key.shape
    if not 1 <= n <= k:
        raise ValueError(f"best_of_n needs 1 <= n <= K = {k} samples per prompt; got n = {n}")
    weight = np.array([math.comb(i, n - 1) for i in range(k)], dtype=float) / math.comb(k, n)   # (K,)
    out = {}
    for name, v in values.items():
        v = np.asarray(v, dtype=float)
        if v.shape != key.shape:
            raise ValueError(f"best_of_n: {name} has shape {v.shape}, the key {key.shape}")
        per_prompt = np.empty(p)
        for j, (row_k, row_v) in enumerate(zip(key, v)):
            order = np.argsort(row_k, kind="stable")
            ks, vs = row_k[order], row_v[order]
            tied = np.array([vs[ks == x].mean() for x in ks])           # ties share their mean
            per_prompt[j] = weight @ tied
        out[name] = per_prompt
    return out
