"""PNG pictures of a run dir (matplotlib, no torch import)."""
from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np

from flowrl.rundir import read_metrics


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_reward_curve(run_dir: Path, out: Path) -> Path:
    """Training reward (mean over each epoch's samples) and eval reward against epochs."""
    plt = _plt()
    rows = read_metrics(run_dir)
    fig, ax = plt.subplots(figsize=(6, 4))
    tr = [(r["epoch"], r["reward_mean"]) for r in rows if "reward_mean" in r]
    ev = [(r["epoch"], r["eval_reward"]) for r in rows if "eval_reward" in r]
    if tr:
        ax.plot(*zip(*tr), label="train (SDE samples)")
    if ev:
        ax.plot(*zip(*ev), "o-", label="eval (ODE, fixed noise)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("reward")
    ax.legend()
    ax.grid(alpha=0.3)
    path = out / "reward_curve.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_2d_before_after(run_dir: Path, out: Path) -> Path:
    """Scatter of base vs final eval samples, coloured by reward (blue low, red high)."""
    plt = _plt()
    base, final = (np.load(Path(run_dir) / "eval" / f"{t}.npz") for t in ("base", "final"))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True, sharey=True)
    for ax, d, title in zip(axes, (base, final), ("base model", "fine-tuned")):
        sc = ax.scatter(d["x"][:, 0], d["x"][:, 1], c=d["reward"], cmap="coolwarm", s=6, vmin=0, vmax=1)
        ax.set_title(f"{title}: mean reward {d['reward'].mean():.3f}")
        ax.set_aspect("equal")
    fig.colorbar(sc, ax=axes, label="reward")
    path = out / "samples_before_after.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_run(run_dir: Path, out: Path) -> List[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [plot_reward_curve(run_dir, out)]
    if (Path(run_dir) / "eval" / "final.npz").exists() and (Path(run_dir) / "eval" / "base.npz").exists():
        paths.append(plot_2d_before_after(run_dir, out))
    return paths
