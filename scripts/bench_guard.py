"""Benchmark: what the reliability work costs a normal epoch, before/after in one run.

    python scripts/bench_guard.py [--config grpo.py:moons] [--epochs 40] [--set key=value ...]

One trainer; epochs alternate between the guarded optimizer step (flowrl.guards.StepGuard: device-side
finiteness flags, one host sync per step) and the step as it was before it (backward -> clip ->
step). Prints the median epoch and training-phase times of each and their ratio, and the time of one
checkpoint write (now with fsync and SHA-256 of every file; once per checkpoint, not per epoch).
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from flowrl.checkpoint import seal
from flowrl.config import load_config
from flowrl.trainer import Trainer


class Unguarded:
    """The optimizer step before flowrl.guards (trainer.optimize's old body)."""

    def __init__(self, guard):
        self.g = guard

    def backward_and_step(self, loss, epoch, step):
        acc = self.g.acc
        acc.backward(loss)
        if not acc.sync_gradients:
            return None
        norm = acc.clip_grad_norm_(self.g.params, self.g.max_grad_norm)
        self.g.optimizer.step()
        self.g.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def pop_skipped(self):
        return 0


def guard_ops_seconds(terms: int, steps: int, reps: int = 200) -> float:
    """The work the guard adds per epoch, timed bare: a finiteness flag per loss term, and per
    optimizer step the flag stack and host read (single process: no reduce)."""
    loss, norm = torch.tensor(1.0), torch.tensor(1.0)
    t = time.perf_counter()
    for _ in range(reps):
        flag = None
        for _ in range(terms):
            bad = ~torch.isfinite(loss.detach())
            flag = bad if flag is None else flag | bad
        for _ in range(steps):
            torch.stack([flag, ~torch.isfinite(norm)]).float().tolist()
    return (time.perf_counter() - t) / reps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="grpo.py:moons")
    ap.add_argument("--epochs", type=int, default=40, help="epochs in all (half guarded)")
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args()
    cfg = load_config(a.config, ["logging.progress=False", "checkpoint.every=0", "eval.every=0",
                                 f"num_epochs={a.epochs}"] + a.set)
    with tempfile.TemporaryDirectory() as d:
        tr = Trainer(cfg, Path(d) / "run")
        guarded, plain = tr.guard, Unguarded(tr.guard)
        times = {"guarded": [], "unguarded": []}
        train = {"guarded": [], "unguarded": []}
        tr.epoch(0)                                 # warm-up (caches, first allocations)
        for e in range(1, a.epochs + 1):
            name = "guarded" if (e // 2) % 2 else "unguarded"    # ABBA order: drift cancels
            tr.guard = guarded if name == "guarded" else plain
            t = time.perf_counter()
            row = tr.epoch(e)
            times[name].append(time.perf_counter() - t)
            train[name].append(row["time_train"])
        tr.guard = guarded
        t = time.perf_counter()
        tr.save(a.epochs + 1)
        ckpt_s = time.perf_counter() - t
        t = time.perf_counter()
        seal(Path(d) / "run" / "checkpoints" / f"step_{a.epochs + 1}")   # the new part, again
        seal_s = time.perf_counter() - t
        tr.lock.release()
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    paired = statistics.median(g / u for g, u in zip(times["guarded"], times["unguarded"]))
    paired_train = statistics.median(g / u for g, u in zip(train["guarded"], train["unguarded"]))
    steps = tr.plan.optimizer_steps_per_epoch
    terms = steps * tr.acc.gradient_accumulation_steps     # backward passes per epoch
    bare = guard_ops_seconds(terms, steps)
    print(f"{a.config}: the guard's own work, timed bare: {bare * 1e6:.0f} us per epoch ({terms} loss terms, "
          f"{steps} steps) = {100 * bare / med['unguarded']:.3f}% of the median epoch")
    print(f"{a.config}: {a.epochs} epochs | epoch time unguarded / guarded: median {med['unguarded'] * 1e3:.1f} / "
          f"{med['guarded'] * 1e3:.1f} ms, min {best['unguarded'] * 1e3:.1f} / {best['guarded'] * 1e3:.1f} ms | "
          f"guarded/unguarded ratio: of medians {med['guarded'] / med['unguarded']:.4f}, of minima "
          f"{best['guarded'] / best['unguarded']:.4f}, median of paired epochs {paired:.4f} (training phase "
          f"{paired_train:.4f}) | one checkpoint write: {ckpt_s * 1e3:.1f} ms, of which fsync + SHA-256 "
          f"~{seal_s * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
