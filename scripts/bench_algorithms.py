"""Benchmark: every method x task on the one trainer. Prints one table.

    python scripts/bench_algorithms.py                       # moons + moons_fidelity (+ digits if shipped)
    python scripts/bench_algorithms.py --tasks moons digits --methods grpo ddpo
    python scripts/bench_algorithms.py --methods orw --tasks moons_fidelity \
        --sweep algorithm.w2_coefficient=0,0.1,1,10          # a trade-off: one row per value

For each config file config/<method>.py that has experiment <task>: reward before/after (ODE eval,
fixed noise), diversity kept (Vendi of the final eval samples / the base model's, on the base
model's kernel scale), fine-tuning seconds (sampling + training, evaluation excluded), and the
fine-tuning seconds at which the eval reward first reached the task's target.
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

from flowrl.config import config_dirs, load_config, sibling
from flowrl.trainer import Trainer

TARGETS = {"moons": 0.9, "moons_fidelity": 0.92, "digits": 0.9, "tiny_geneval": None}


def available(methods, tasks):
    cdir = config_dirs()[0]
    for f in sorted(cdir.glob("*.py")):
        if f.stem == "base" or (methods and f.stem not in methods):
            continue
        names = sibling(str(f), f.stem).EXPERIMENTS
        for t in tasks:
            if t in names:
                yield f.name, t


def run_one(spec: str, task: str, every: int, overrides=()):
    cfg = load_config(spec, [f"eval.every={every}", "logging.progress=False", "checkpoint.every=0",
                             *overrides])
    with tempfile.TemporaryDirectory() as d:
        t0 = time.time()
        summary = Trainer(cfg, Path(d) / "run").train()
        wall = time.time() - t0
        rows = [json.loads(l) for l in (Path(d) / "run" / "metrics.jsonl").read_text().splitlines()]
    work, hit, target = 0.0, None, TARGETS.get(task)
    for r in rows[1:]:
        work += r["time_collect"] + r["time_train"]
        if hit is None and target is not None and r.get("eval_reward", float("-inf")) >= target:
            hit = work
    div = [r["eval_diversity"] for r in rows if "eval_diversity" in r]
    return {"spec": " ".join([spec, *overrides]), "task": task, "before": summary["reward_before"], "after": summary["reward_after"],
            "diversity_kept": div[-1] / div[0] if len(div) > 1 else None, "finetune_s": work,
            "wall_s": wall, "to_target_s": hit, "target": target}


def fmt(x, spec="{:.3f}"):
    return "-" if x is None else spec.format(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", nargs="*", default=["moons", "moons_fidelity", "digits"])
    ap.add_argument("--methods", nargs="*", default=[])
    ap.add_argument("--eval-every", type=int, default=1)
    ap.add_argument("--set", nargs="*", default=[], help="overrides for every run, KEY=VALUE")
    ap.add_argument("--sweep", default="", help="KEY=V1,V2,...: one row per value")
    a = ap.parse_args()
    key, _, values = a.sweep.partition("=")
    variants = [[f"{key}={v}"] for v in values.split(",")] if a.sweep else [[]]
    results = []
    for file, task in available(a.methods, a.tasks):
        for extra in variants:
            try:
                results.append(run_one(f"{file}:{task}", task, a.eval_every, [*a.set, *extra]))
            except Exception as e:  # one broken method must not hide the rest of the table
                results.append({"spec": f"{file}:{task}", "task": task, "error": f"{type(e).__name__}: {e}"})
    print(f"\n| config | reward before -> after | diversity kept | fine-tune s | s to target | wall s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        if "error" in r:
            print(f"| {r['spec']} | error: {r['error'][:80]} | | | | |")
            continue
        tgt = f"{fmt(r['to_target_s'], '{:.2f}')} (>= {r['target']})" if r["target"] else "-"
        print(f"| {r['spec']} | {r['before']:.3f} -> {r['after']:.3f} | {fmt(r['diversity_kept'], '{:.2f}')} | "
              f"{r['finetune_s']:.1f} | {tgt} | {r['wall_s']:.1f} |")


if __name__ == "__main__":
    main()
