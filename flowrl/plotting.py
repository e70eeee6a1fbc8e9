"""PNG pictures of a run dir (matplotlib, no torch import), one picture per question:

    samples_checkpoints.png   what do the samples look like at each evaluation (same noise/prompts)?
    reward_curve.png          did reward go up?
    diversity_curve.png       did diversity go down (Vendi / RKE / entropy over steps)?
    tradeoff.png              what did each step of reward cost in diversity?

Data come from flowrl.report.load_run_view (numpy only).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np


MAX_PANELS = 6      # checkpoints shown in the sample picture (base and final always included)
GRID_COLUMNS = 8    # images per checkpoint in the image grid


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> Path:
    plt = _plt()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def pick_evenly(items: Sequence, k: int) -> List:
    """At most k items, evenly spaced, always the first and the last."""
    if len(items) <= k:
        return list(items)
    idx = np.unique(np.round(np.linspace(0, len(items) - 1, k)).astype(int))
    return [items[i] for i in idx]


def plot_reward_curve(run_dir: Path, out: Path) -> Path:
    """Training reward (mean over each epoch's samples) and eval reward against epochs."""
    from flowrl.report import read_jsonl
    plt = _plt()
    rows = read_jsonl(Path(run_dir) / "metrics.jsonl")
    fig, ax = plt.subplots(figsize=(6, 4))
    tr = [(r["epoch"], r["reward_mean"]) for r in rows if "reward_mean" in r]
    ev = [(r["epoch"], r["eval_reward"]) for r in rows if "eval_reward" in r]
    if tr:
        ax.plot(*zip(*tr), label="train (SDE samples)")
    if ev:
        ax.plot(*zip(*ev), "o-", label="eval (ODE, fixed noise)")
    ax.set(xlabel="epoch", ylabel="reward", title="Did reward go up?")
    if tr or ev:
        ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, Path(out) / "reward_curve.png")


def plot_points_checkpoints(evals: Sequence, out: Path, per_row: int = 3) -> Path:
    """One scatter per evaluation (2-D points, first two coordinates), coloured by reward."""
    plt = _plt()
    evals = pick_evenly(list(evals), MAX_PANELS)
    rewards = np.concatenate([e.reward for e in evals if e.reward is not None] or [np.zeros(1)])
    vmin, vmax = float(np.nanmin(rewards)), float(np.nanmax(rewards))
    cols = min(per_row, len(evals))
    rows = -(-len(evals) // cols)
    ratio = _data_ratio(evals)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols + 0.8, (3.4 * ratio + 0.5) * rows),
                             sharex=True, sharey=True, squeeze=False, layout="constrained")
    sc = None
    for ax, ev in zip(axes.flat, evals):
        y = ev.x[:, 1] if ev.x.shape[1] > 1 else np.zeros(len(ev.x))
        colour = ev.reward if ev.reward is not None else "tab:blue"
        sc = ax.scatter(ev.x[:, 0], y, c=colour, cmap="coolwarm", s=4, vmin=vmin, vmax=vmax)
        mean = f": reward {np.nanmean(ev.reward):.3f}" if ev.reward is not None else ""
        ax.set_title(f"{'base model' if ev.tag == 'base' else f'step {ev.step}'}{mean}", fontsize=9)
        ax.set_aspect("equal", adjustable="box")
    for ax in list(axes.flat)[len(evals):]:
        ax.set_visible(False)
    if sc is not None and evals[0].reward is not None:
        fig.colorbar(sc, ax=axes.ravel().tolist(), label="reward", fraction=0.03, pad=0.01)
    fig.suptitle("Samples from the same noise at each evaluation, coloured by reward")
    return _save(fig, Path(out) / "samples_checkpoints.png")


def _data_ratio(evals: Sequence) -> float:
    """Height / width of the points' common bounding box, clipped to [0.3, 1.5]."""
    x = np.concatenate([e.x for e in evals])
    if x.shape[1] < 2:
        return 0.3
    span = np.ptp(x[:, :2], axis=0) + 1e-9
    return float(np.clip(span[1] / span[0], 0.3, 1.5))


def plot_image_checkpoints(evals: Sequence, out: Path, columns: int = GRID_COLUMNS) -> Path:
    """Rows: evaluations; columns: the same eval indices (same noise and prompt) at each of them."""
    from PIL import Image
    plt = _plt()
    evals = pick_evenly(list(evals), MAX_PANELS)
    cols = min(columns, min(len(e.images) for e in evals))
    fig, axes = plt.subplots(len(evals), cols, figsize=(1.6 * cols, 1.75 * len(evals)), squeeze=False)
    for r, ev in enumerate(evals):
        for c in range(cols):
            ax = axes[r][c]
            ax.imshow(Image.open(ev.images[c]).convert("RGB"))
            ax.set_xticks([]), ax.set_yticks([])
            if ev.reward is not None:
                ax.set_xlabel(f"{ev.reward[c]:.3f}", fontsize=7, labelpad=1)
            if r == 0:
                ax.set_title(_short(ev.prompts[c] if c < len(ev.prompts) else ""), fontsize=7)
        axes[r][0].set_ylabel(f"{ev.tag}\nstep {ev.step}", fontsize=8)
    fig.suptitle("Same noise and prompt per column; reward under each image", y=1.0)
    return _save(fig, Path(out) / "samples_checkpoints.png")


def _short(text: str, n: int = 22) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


def _series(rows: Sequence[Dict], key: str):
    pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None and r.get("step") is not None]
    return list(zip(*pts)) if pts else ([], [])


def plot_diversity_curve(rows: Sequence[Dict], out: Path, source: str = "",
                         others: Sequence[Tuple[str, Sequence[Dict]]] = ()) -> Path:
    """Vendi and RKE (effective number of samples) against step; entropy on a second axis.
    others: [(label, rows)] of runs to compare, drawn as Vendi lines."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, style in (("vendi", "o-"), ("rke", "s--")):
        x, y = _series(rows, key)
        ax.plot(x, y, style, label=("Vendi" if key == "vendi" else "RKE") + (" (this run)" if others else ""))
    for i, (label, other) in enumerate(others):
        ax.plot(*_series(other, "vendi"), "o-", color=f"C{3 + i}", alpha=0.8, label=f"Vendi ({label})")
    ax.set(xlabel="epoch", ylabel="effective number of samples", title="Did diversity go down?")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    x, y = _series(rows, "entropy")
    if len(x):
        ax2 = ax.twinx()
        ax2.plot(x, y, "^:", color="tab:green", label="entropy (nats)")
        ax2.set_ylabel("flow entropy (nats)")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=8)
    if source:
        fig.text(0.01, -0.02, f"source: {source}", fontsize=7, color="#555")
    return _save(fig, Path(out) / "diversity_curve.png")


def plot_tradeoff(rows: Sequence[Dict], out: Path, others: Sequence[Tuple[str, Sequence[Dict]]] = ()) -> Path:
    """Mean reward against Vendi diversity, checkpoints joined in training order (one line per run)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    sc = None
    for i, (label, run_rows) in enumerate([("this run", rows), *others]):
        pts = [r for r in run_rows if r.get("vendi") is not None and r.get("reward_mean") is not None]
        if not pts:
            continue
        x, y = [r["vendi"] for r in pts], [r["reward_mean"] for r in pts]
        ax.plot(x, y, "-", color=f"C{i}", alpha=0.5, zorder=1, label=label if others else None)
        sc = ax.scatter(x, y, c=[r["step"] for r in pts], cmap="viridis", zorder=2,
                        marker="os^Dv"[i % 5], edgecolors=f"C{i}")
        for r in pts:
            ax.annotate(str(r["tag"]).replace("step_", ""), (r["vendi"], r["reward_mean"]), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
    if sc is not None:
        fig.colorbar(sc, ax=ax, label="epoch")
    if others:
        ax.legend(fontsize=8)
    ax.set(xlabel="Vendi diversity", ylabel="mean eval reward", title="Reward vs diversity")
    ax.grid(alpha=0.3)
    return _save(fig, Path(out) / "tradeoff.png")


def plot_run(run_dir: Path, out: Path, compare: Sequence[Path] = ()) -> List[Path]:
    """All pictures of a run dir into `out` (samples first); `compare`: other run dirs whose
    diversity and trade-off curves are drawn beside this run's. Returns the PNG paths."""
    from flowrl.report import load_run_view
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    view = load_run_view(run_dir)
    others = []
    for other in compare:
        o = load_run_view(other)
        _fill_rewards(o.diversity, o.evals)
        others.append((Path(other).resolve().name, o.diversity))
    paths = []
    if view.evals:
        plot = plot_points_checkpoints if view.evals[0].kind == "points" else plot_image_checkpoints
        paths.append(plot(view.evals, out))
    paths.append(plot_reward_curve(run_dir, out))
    if view.diversity:
        _fill_rewards(view.diversity, view.evals)
        paths.append(plot_diversity_curve(view.diversity, out, view.diversity_source, others))
        paths.append(plot_tradeoff(view.diversity, out, others))
    return paths


def _fill_rewards(rows: Sequence[Dict], evals: Sequence) -> None:
    """Rows without reward_mean (e.g. eval-diversity --no-reward) take the eval reward of their step."""
    by_step = {e.step: float(np.nanmean(e.reward)) for e in evals if e.reward is not None}
    for r in rows:
        if r.get("reward_mean") is None and r.get("step") in by_step:
            r["reward_mean"] = by_step[r["step"]]
