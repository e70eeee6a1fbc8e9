"""Benchmark: time to reward on the tiny text-to-image world, every `tiny_geneval` config over seeds.

    flowrl init tiny-t2i                    # once: the base model (~10 min on 2 cores)
    python scripts/bench_tiny_t2i.py [--configs grpo.py:tiny_geneval ...] [--seeds 0 1 2]
        [--max-seconds 150] [--eval-every 5] [--target 0.70] [--jobs 1] [--threads 2] [--out DIR]
        [--procs 1] [--plot PNG] [--set K=V ...]
    python scripts/bench_tiny_t2i.py --only-speedup [--speedup-epochs 4]   # 1 vs 2 processes

Runs every config (default: each config/*.py with a `tiny_geneval` experiment, as shipped: nothing
is tuned per seed) once per seed (`--set seed=S`; the evaluation set is fixed by eval.seed), --jobs
runs at a time, each a fresh `flowrl train` process, optionally stopped once its fine-tuning time reaches
--max-seconds (train.max_seconds: sampling + reward + training, evaluation excluded; then a final
evaluation). Runs are kept in --out and a finished run is not run again, so the table can be built
in pieces. Prints one markdown table: per config the held-out reward and strict (GenEval) accuracy
at the end (mean and 95% t-interval over seeds), fine-tuning seconds, seconds / samples to the
target (mean over the seeds that reached it, and how many did), diversity kept (final Vendi / the
base model's, same kernel scale), objects per image beyond the prompt's (`scene_extra_objects`:
clutter, which scene_geneval like GenEval does not penalise), and the evaluation's own noise: the
standard error of the held-out mean over its samples, and of the improvement (final - base: same
prompts and noise, paired).
--plot draws held-out reward vs fine-tuning seconds, one band (mean, 95% interval) per config.
--speedup-epochs N (after the table) or --only-speedup: the same config with the same GLOBAL batch
on 1 process x 2 threads and on 2 processes x 1 thread (`accelerate launch --multi_gpu`, gloo).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC = "grpo.py:tiny_geneval"
TASK = "tiny_geneval"


def launch(run_dir: Path, procs: int, overrides, threads: int, spec: str = SPEC) -> list:
    """One `flowrl train` run in a fresh process (or two under accelerate) -> its metrics rows."""
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": str(threads)}
    sets = [a for o in overrides for a in ("--set", o)] + ["--set", f"cpu_threads={threads}"]
    train = ["train", "--config", spec, "--output-dir", str(run_dir), *sets]
    if procs == 1:
        cmd = [sys.executable, "-m", "flowrl", *train]
    else:
        env["ACCELERATE_USE_CPU"] = "1"
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
               str(procs), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "flowrl", *train]
    subprocess.run(cmd, env=env, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def speedup(epochs: int, overrides):
    """Seconds per epoch (sampling + training, first epoch dropped) on 1 process vs 2 processes."""
    same = [*overrides, f"num_epochs={epochs}", "eval.every=0", "eval.num_samples=8", "eval.batch_size=8",
            "checkpoint.every=0", "eval.diversity=False"]
    per = {}
    with tempfile.TemporaryDirectory() as d:
        for procs, threads in ((1, 2), (2, 1)):
            # same global batch: 2 processes each take half of every sampling batch
            extra = per_rank_batches(SPEC, same, procs)
            rows = launch(Path(d) / f"p{procs}", procs, same + extra, threads)
            per[procs] = statistics.mean(r["time_collect"] + r["time_train"] for r in rows[2:])
    print(f"seconds per epoch: 1 process x 2 threads {per[1]:.2f}, 2 processes x 1 thread {per[2]:.2f}: "
          f"speed-up {per[1] / per[2]:.2f}x")




def tiny_geneval_configs():
    """Every config file with a `tiny_geneval` experiment -> ["ddpo.py:tiny_geneval", ...]."""
    from flowrl.config import config_dirs, sibling
    out = []
    for f in sorted(config_dirs()[0].glob("*.py")):
        if f.stem != "base" and TASK in getattr(sibling(str(f), f.stem), "EXPERIMENTS", {}):
            out.append(f"{f.name}:{TASK}")
    return out


def run_dir_of(out: Path, spec: str, seed: int) -> Path:
    return out / spec.replace(".py:", "_") / f"seed{seed}"


def per_rank_batches(spec: str, overrides, procs: int) -> list:
    """--set overrides that keep `spec`'s GLOBAL batches on `procs` processes."""
    if procs == 1:
        return []
    from flowrl.bench import per_rank_overrides
    from flowrl.config import load_config
    return per_rank_overrides(load_config(spec, overrides), procs)


def run_all(specs, seeds, out: Path, common, threads: int, jobs: int = 1, procs: int = 1):
    """Each (config, seed) not finished yet in `out`, `jobs` at a time (config-major order, so a cut
    run still has whole configs), each on `procs` processes with the same global batches;
    -> {spec: [run_dir, ...]}."""
    import shutil
    from concurrent.futures import ThreadPoolExecutor
    dirs, todo = {}, []
    for spec in specs:
        for seed in seeds:
            d = run_dir_of(out, spec, seed)
            dirs.setdefault(spec, []).append(d)
            if not (d / "summary.json").exists():
                todo.append((spec, seed, d))

    def one(job):
        spec, seed, d = job
        if d.exists():          # an interrupted run: start it again
            shutil.rmtree(d)
        d.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        try:
            sets = [*common, f"seed={seed}"]
            launch(d, procs, sets + per_rank_batches(spec, sets, procs), threads, spec)
            print(f"{spec} seed {seed}: wall {time.time() - t0:.0f} s", flush=True)
        except subprocess.CalledProcessError as e:   # reported, left out of the table
            print(f"{spec} seed {seed}: FAILED (exit {e.returncode}); see {d}", flush=True)

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        list(pool.map(one, todo))
    return dirs


def eval_rewards(run_dir: Path, tag: str):
    """Per-sample held-out rewards of one saved evaluation (ordered by eval index)."""
    rows = [json.loads(l) for l in (run_dir / "eval" / tag / "prompts.jsonl").read_text().splitlines()]
    return [r["reward"] for r in sorted(rows, key=lambda r: r["index"])]


def summarize(dirs, target: float, clock: str = "time"):
    """{spec: {"runs": [run_summary, ...], "se": ..., "se_gain": ..., "n_eval": ...}}."""
    from flowrl.bench import paired_standard_error, phase_split, run_summary, standard_error
    out = {}
    for spec, runs in dirs.items():
        runs = [d for d in runs if (d / "summary.json").exists()]
        if not runs:
            continue
        sums, se, se_gain = [], [], []
        for d in runs:
            rows = [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
            sums.append({**run_summary(rows, target, clock), "split": phase_split(rows)})
            after, before = eval_rewards(d, "final"), eval_rewards(d, "base")
            se.append(standard_error(after))
            se_gain.append(paired_standard_error(after, before))
        out[spec] = {"runs": sums, "se": statistics.mean(se), "se_gain": statistics.mean(se_gain),
                     "n_eval": len(after)}
    return out


def table(summary, target: float, unit: str = "s") -> str:
    from flowrl.bench import mean_interval

    def ci(key, runs, fmt="{:.3f}"):
        m = mean_interval([r[key] for r in runs if r[key] is not None])
        if m["n"] == 0:
            return "-"
        return fmt.format(m["mean"]) + (f" ± {fmt.format(m['half'])}" if m["n"] > 1 else "")

    def reached(key, runs, fmt):
        hits = [r[key] for r in runs if r[key] is not None]
        return (fmt.format(statistics.mean(hits)) if hits else "-") + f" ({len(hits)}/{len(runs)})"

    lines = [f"| config | seeds | held-out reward | strict accuracy | fine-tune {unit} | {unit} to {target} | "
             f"samples to {target} | diversity kept | extra objects | eval SE (gain SE) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for spec, s in summary.items():
        runs = s["runs"]
        base = runs[0]
        extra = "-" if base["extra"] is None else f"{base['extra_base'] or 0:.2f} -> {ci('extra', runs, '{:.2f}')}"
        lines.append(
            f"| `{spec}` | {len(runs)} | {base['reward_base']:.3f} -> {ci('reward', runs)} | "
            f"{base['accuracy_base'] or 0:.3f} -> {ci('accuracy', runs)} | {ci('seconds', runs, '{:.0f}')} | "
            f"{reached('seconds_to_target', runs, '{:.0f}')} | {reached('samples_to_target', runs, '{:.0f}')} | "
            f"{ci('diversity_kept', runs, '{:.2f}')} | {extra} | {s['se']:.3f} ({s['se_gain']:.3f}) |")
    return "\n".join(lines)


def split_table(summary) -> str:
    """Mean seconds per epoch of each phase (over seeds; first epoch dropped), per config."""
    from flowrl.bench import PHASES
    lines = ["| config | CPU s/epoch | s/epoch | " + " | ".join(PHASES) + " |",
             "| --- " * (len(PHASES) + 3) + "|"]
    for spec, s in summary.items():
        m = {k: statistics.mean(r["split"][k] for r in s["runs"]) for k in (*PHASES, "epoch", "cpu_epoch")}
        lines.append(f"| `{spec}` | {m['cpu_epoch']:.1f} | {m['epoch']:.1f} | " + " | ".join(
            f"{m[p]:.1f} ({m[p] / m['epoch']:.0%})" for p in PHASES) + " |")
    return "\n".join(lines)


def plot(summary, target: float, path: Path, points: int = 60, unit: str = "seconds") -> None:
    """Held-out reward vs fine-tuning seconds: per config the mean over seeds on a common grid (up to
    the shortest run) with its 95% t-interval as a band, and each seed's evaluations as dots."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from flowrl.bench import band, on_grid
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for spec, s in summary.items():
        runs = s["runs"]
        end = min(r["curve_seconds"][-1] for r in runs)
        grid = np.linspace(0, end, points)
        b = band(np.stack([on_grid(r["curve_seconds"], r["curve_reward"], grid) for r in runs]))
        line, = ax.plot(grid, b["mean"], label=f"{spec.replace('.py:', ':')} ({len(runs)} seeds)")
        ax.fill_between(grid, b["lo"], b["hi"], color=line.get_color(), alpha=0.2, linewidth=0)
        for r in runs:
            ax.plot(r["curve_seconds"], r["curve_reward"], ".", color=line.get_color(), alpha=0.5, ms=4)
    ax.axhline(target, color="grey", ls="--", lw=1)
    ax.set_xlabel(f"fine-tuning {unit} (sampling + reward + training; evaluation excluded)")
    ax.set_ylabel("held-out reward (scene_geneval)")
    ax.set_title("tiny text-to-image world: mean and 95% interval over seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="*", default=None, help="default: every tiny_geneval config")
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--max-seconds", type=float, default=0.0, help="fine-tuning time cap per run (0: none)")
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--target", type=float, default=0.70)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="seconds = wall clock, or each run's CPU seconds (all threads; robust on a shared CPU)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (each with --threads threads)")
    ap.add_argument("--procs", type=int, default=1,
                    help="processes per run (accelerate, gloo), same global batches; --clock cpu then "
                         "counts one process's CPU seconds: 150 CPU s x 2 processes = 150 s on 2 cores")
    ap.add_argument("--out", default="", help="keep the runs here (default: a temporary folder)")
    ap.add_argument("--plot", default="", help="PNG: held-out reward vs fine-tuning seconds")
    ap.add_argument("--no-run", action="store_true", help="only summarise the finished runs in --out")
    ap.add_argument("--speedup-epochs", type=int, default=0)
    ap.add_argument("--only-speedup", action="store_true")
    ap.add_argument("--set", nargs="*", default=[])
    a = ap.parse_args()
    if a.procs < 1 or a.jobs < 1 or a.threads < 1:
        ap.error(f"--procs, --jobs and --threads must be >= 1 (got {a.procs}, {a.jobs}, {a.threads})")
    if not a.only_speedup:
        specs = a.configs or tiny_geneval_configs()
        common = [*a.set, f"eval.every={a.eval_every}", "checkpoint.every=0", "logging.progress=False",
                  f"train.max_seconds={a.max_seconds}", f"train.budget_clock={a.clock}"]
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(a.out or tmp)
            dirs = ({sp: [run_dir_of(out, sp, s) for s in a.seeds] for sp in specs} if a.no_run
                    else run_all(specs, a.seeds, out, common, a.threads, a.jobs, a.procs))
            clock, unit = ("cpu", "CPU s") if a.clock == "cpu" else ("time", "s")
            summary = summarize(dirs, a.target, clock)
            cap = f", stopped at {a.max_seconds:.0f} {a.clock} s of fine-tuning" if a.max_seconds else ""
            print(f"\nseeds {a.seeds}, {a.jobs} run(s) at once x {a.procs} process(es) x {a.threads} threads, eval every {a.eval_every} epochs{cap}; "
                  f"mean ± 95% t-interval half-width over seeds")
            print(table(summary, a.target, unit))
            print("\nper-phase seconds per epoch (mean over seeds, first epoch dropped; share of the epoch)")
            print(split_table(summary))
            if a.plot:
                plot(summary, a.target, Path(a.plot), unit=unit.replace("s", "seconds"))
                print(f"plot: {a.plot}")
    if a.speedup_epochs or a.only_speedup:
        speedup(a.speedup_epochs or 4, a.set)


if __name__ == "__main__":
    main()
