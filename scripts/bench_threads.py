"""Benchmark: seconds per epoch on a quiet vs a contended CPU, per thread setting, in one run.

    python scripts/bench_threads.py [--config grpo.py:tiny_sd3] [--epochs 5] [--rounds 2] [--set K=V ...]

Settings (each a fresh `flowrl train` process, so OpenMP reads its environment at torch's load):
  spin 2 threads     torch imported BEFORE flowrl: libgomp's default wait policy (spin ~3 ms, then sleep)
  passive 2 threads  flowrl's default (flowrl/__init__.py sets OMP_WAIT_POLICY=PASSIVE before torch)
  passive 1 thread   cpu_threads=1
Loads: quiet (whatever else runs on the box) and contended (ONE busy-looping Python process that this
script starts before and stops after the run). Rounds alternate settings and loads so drift in the
machine's other load hits all alike. Reports the median s/epoch (first epoch dropped) and the
contended / quiet ratio per setting, and each run's voluntary / involuntary context switches.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {  # name -> (python prefix, threads)
    "spin 2 threads": (["-c", "import torch, flowrl.cli; flowrl.cli.main()"], 2),
    "passive 2 threads": (["-m", "flowrl"], 2),
    "passive 1 thread": (["-m", "flowrl"], 1),
}


def run(setting: str, spec: str, epochs: int, overrides, busy: bool):
    """One training run -> (median s/epoch without the first epoch, voluntary, involuntary switches)."""
    prefix, threads = SETTINGS[setting]
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(WANDB_MODE="disabled", OMP_NUM_THREADS=str(threads))
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        with tempfile.TemporaryDirectory() as d:
            sets = [a for o in [*overrides, f"num_epochs={epochs}", f"cpu_threads={threads}", "eval.every=0",
                                "checkpoint.every=0", "logging.progress=False"] for a in ("--set", o)]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run([sys.executable, *prefix, "train", "--config", spec, "--output-dir", f"{d}/run",
                            *sets], env=env, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            rows = [json.loads(l) for l in Path(d, "run", "metrics.jsonl").read_text().splitlines()]
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    per = [r["time_collect"] + r["time_train"] for r in rows[2:]]
    return statistics.median(per), after.ru_nvcsw - before.ru_nvcsw, after.ru_nivcsw - before.ru_nivcsw


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="grpo.py:tiny_sd3")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--settings", nargs="*", default=list(SETTINGS))
    ap.add_argument("--set", nargs="*", default=[])
    a = ap.parse_args()
    res = {(s, b): [] for s in a.settings for b in (False, True)}
    for r in range(a.rounds):
        order = [(s, b) for b in ((False, True) if r % 2 == 0 else (True, False)) for s in a.settings]
        for s, b in (order if r % 2 == 0 else order[::-1]):
            res[(s, b)].append(run(s, a.config, a.epochs, a.set, b))
            print(f"round {r + 1}: {s:18s} {'contended' if b else 'quiet':9s} {res[(s, b)][-1][0]:.3f} s/epoch",
                  flush=True)
    print(f"\n{a.config}, {a.epochs} epochs x {a.rounds} rounds, median s/epoch (first epoch dropped)")
    print("| setting | quiet s/epoch | contended s/epoch | contended / quiet | vol. / invol. ctx switches (contended) |")
    print("| --- | --- | --- | --- | --- |")
    for s in a.settings:
        q = statistics.median(x[0] for x in res[(s, False)])
        c = statistics.median(x[0] for x in res[(s, True)])
        vol = statistics.median(x[1] for x in res[(s, True)])
        inv = statistics.median(x[2] for x in res[(s, True)])
        print(f"| {s} | {q:.3f} | {c:.3f} | {c / q:.2f}x | {vol:.0f} / {inv:.0f} |")


if __name__ == "__main__":
    main()
