"""Benchmark: Flow-GRPO on the tiny text-to-image world (`grpo.py:tiny_geneval`), CPU.

    flowrl init tiny-t2i                              # once: the base model (~10 min on 2 cores)
    python scripts/bench_tiny_t2i.py [--epochs 40] [--target 0.58] [--eval-every 10] [--set KEY=V ...]
                                     [--run-dir DIR]     # keep the run (eval/base, eval/final: grids)
    python scripts/bench_tiny_t2i.py --speedup-epochs 4   # only the 1- vs 2-process comparison

Prints (1) held-out mean reward and strict (GenEval) accuracy before -> after, the Vendi diversity
of the held-out samples before -> after, the fine-tuning seconds (sampling + reward + training,
evaluation excluded) at which the held-out reward first reached --target, and the time split of an
epoch (sampling / decode / reward / training); (2) the same config with the same GLOBAL batch on
1 process x 2 threads and on 2 processes x 1 thread (`accelerate launch --multi_gpu`, gloo): seconds
per epoch of each and the ratio, measured back to back in one run.
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


def launch(run_dir: Path, procs: int, overrides, threads: int) -> list:
    """One `flowrl train` run in a fresh process (or two under accelerate) -> its metrics rows."""
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": str(threads)}
    sets = [a for o in overrides for a in ("--set", o)] + ["--set", f"cpu_threads={threads}"]
    train = ["train", "--config", SPEC, "--output-dir", str(run_dir), *sets]
    if procs == 1:
        cmd = [sys.executable, "-m", "flowrl", *train]
    else:
        env["ACCELERATE_USE_CPU"] = "1"
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
               str(procs), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "flowrl", *train]
    subprocess.run(cmd, env=env, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def learning(rows, target: float):
    """-> summary of one run's metrics rows (row 0 = the base model's evaluation)."""
    work, hit = 0.0, None
    for r in rows[1:]:
        work += r["time_collect"] + r["time_train"]
        if hit is None and r.get("eval_reward", float("-inf")) >= target:
            hit = (r["epoch"], work)
    evals = [r for r in rows if "eval_reward" in r]
    split = {k: statistics.mean(r[f"time_{k}"] for r in rows[1:]) for k in
             ("sample", "decode", "reward", "train")}
    return {"first": evals[0], "last": evals[-1], "hit": hit, "finetune_s": work, "split": split,
            "epochs": len(rows) - 1}


def report_learning(s, target):
    f, l = s["first"], s["last"]
    print(f"held-out reward   {f['eval_reward']:.3f} -> {l['eval_reward']:.3f}   "
          f"strict accuracy {f.get('eval_scene_accuracy', float('nan')):.3f} -> "
          f"{l.get('eval_scene_accuracy', float('nan')):.3f}   "
          f"Vendi {f.get('eval_diversity', float('nan')):.1f} -> {l.get('eval_diversity', float('nan')):.1f}")
    hit = f"epoch {s['hit'][0]}, {s['hit'][1]:.0f} s" if s["hit"] else "not reached"
    print(f"to held-out reward >= {target}: {hit}; {s['epochs']} epochs = {s['finetune_s']:.0f} s of "
          f"fine-tuning")
    total = sum(s["split"].values())
    print("epoch split: " + ", ".join(f"{k} {v:.2f} s ({v / total:.0%})" for k, v in s["split"].items()))


def speedup(epochs: int, overrides):
    """Seconds per epoch (sampling + training, first epoch dropped) on 1 process vs 2 processes."""
    same = [*overrides, f"num_epochs={epochs}", "eval.every=0", "eval.num_samples=8", "eval.batch_size=8",
            "checkpoint.every=0", "eval.diversity=False"]
    per = {}
    with tempfile.TemporaryDirectory() as d:
        for procs, threads in ((1, 2), (2, 1)):
            # same global batch: 2 processes each take half of every sampling batch
            extra = [] if procs == 1 else ["sample.batch_size=16", "train.batch_size=16"]
            rows = launch(Path(d) / f"p{procs}", procs, same + extra, threads)
            per[procs] = statistics.mean(r["time_collect"] + r["time_train"] for r in rows[2:])
    print(f"seconds per epoch: 1 process x 2 threads {per[1]:.2f}, 2 processes x 1 thread {per[2]:.2f}: "
          f"speed-up {per[1] / per[2]:.2f}x")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--target", type=float, default=0.58)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--speedup-epochs", type=int, default=4)
    ap.add_argument("--only-speedup", action="store_true")
    ap.add_argument("--set", nargs="*", default=[])
    ap.add_argument("--run-dir", default="", help="keep the learning run here (eval images for grids)")
    a = ap.parse_args()
    if not a.only_speedup:
        with tempfile.TemporaryDirectory() as d:
            run_dir = Path(a.run_dir) if a.run_dir else Path(d) / "run"
            t0 = time.time()
            rows = launch(run_dir, 1, [*a.set, f"num_epochs={a.epochs}", f"eval.every={a.eval_every}",
                                       "checkpoint.every=0"], threads=2)
            print(f"{SPEC}: {a.epochs} epochs, wall {time.time() - t0:.0f} s (evaluations included)")
        report_learning(learning(rows, a.target), a.target)
    if a.speedup_epochs:
        speedup(a.speedup_epochs, a.set)


if __name__ == "__main__":
    main()
