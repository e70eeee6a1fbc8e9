"""Benchmark: one Flow-GRPO epoch on an SD3 policy, split into phases, against pure model time.

    python scripts/bench_grpo_step.py                       # tiny random SD3 (CPU, seconds)
    python scripts/bench_grpo_step.py --set model.path=DIR  # any SD3 folder (GPU: the real size)

Prints time per epoch for text encoding / sampling / decoding / reward / training, and the overhead
ratio = epoch time / pure model time, where pure model time is the same transformer work done bare:
the sampling forward passes (with CFG) plus the training forward+backward passes (and the KL's
reference forward), timed on the same shapes in the same process.
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from flowrl.config import load_config
from flowrl.trainer import Trainer


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def pure_model_seconds(trainer: Trainer, st, uses_reference: bool) -> float:
    """The transformer work of one epoch, without the loop around it."""
    c, pol = trainer.c, trainer.policy
    cond = pol.encode(["a photo"] * c.sample.batch_size)
    x = torch.randn((c.sample.batch_size, *pol.sample_shape), device=trainer.acc.device)
    sig = st.sigmas[1].expand(len(x)).to(x.device)
    sync()
    t = time.perf_counter()
    with torch.no_grad():
        for _ in range(c.sample.num_batches_per_epoch * c.sample.num_steps):
            pol.velocity(x, sig, cond, guidance=c.sample.guidance_scale)
    n_mb = c.sample.batch_size * c.sample.num_batches_per_epoch // c.train.batch_size
    xt, ct = x[:c.train.batch_size], {k: v[:c.train.batch_size] for k, v in cond.items()}
    for _ in range(c.train.num_inner_epochs * n_mb * len(st.train_steps)):
        pol.velocity(xt, sig[:len(xt)], ct, guidance=st.guidance).float().square().mean().backward()
        if uses_reference:
            with torch.no_grad(), pol.reference():
                pol.velocity(xt, sig[:len(xt)], ct, guidance=st.guidance)
    sync()
    trainer.optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="grpo.py:tiny_sd3")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--epochs", type=int, default=5)
    a = ap.parse_args()
    cfg = load_config(a.config, ["logging.progress=False", "checkpoint.every=0", "eval.every=0"] + a.set)
    with tempfile.TemporaryDirectory() as d:
        tr = Trainer(cfg, Path(d) / "run")
        kl = getattr(tr.algorithm, "beta", 0) > 0      # the KL term adds a reference forward
        tr.epoch(0)                                   # warm-up (caches, allocator)
        rows, walls, pures = [], [], []
        for e in range(1, a.epochs + 1):      # interleaved, so machine noise hits both alike
            sync()
            t = time.perf_counter()
            rows.append(tr.epoch(e))
            sync()
            walls.append(time.perf_counter() - t)
            pures.append(pure_model_seconds(tr, tr.step_settings(e), kl))
        ratios = sorted(w / p for w, p in zip(walls, pures))
        wall, pure = sum(walls), sum(pures)
        mem = torch.cuda.max_memory_allocated() / 2 ** 30 if torch.cuda.is_available() else None
    n = a.epochs
    phases = {k[5:]: sum(r.get(k, 0.0) for r in rows) / n for k in
              ("time_encode", "time_sample", "time_decode", "time_reward", "time_train")}
    images = cfg.sample.batch_size * cfg.sample.num_batches_per_epoch
    print(f"{a.config} on {tr.acc.device}: {images} images/epoch, {cfg.sample.num_steps} steps, "
          f"CFG {cfg.sample.guidance_scale}, {len(tr.step_settings(0).train_steps)} trained steps")
    print("per epoch (s): " + "  ".join(f"{k} {v:.3f}" for k, v in phases.items()) + f"  | total {wall / n:.3f}")
    print(f"images/s (epoch, sampling+training): {images * n / wall:.2f}")
    print(f"overhead ratio = epoch time / pure model time = {ratios[len(ratios) // 2]:.3f} (median of "
          f"{n} interleaved pairs; min {ratios[0]:.3f}, max {ratios[-1]:.3f}; target <= 1.15)")
    if mem is not None:
        print(f"peak GPU memory: {mem:.2f} GiB")
    print(json.dumps({"phases": phases, "epoch_s": wall / n, "pure_model_s": pure / n,
                      "overhead_median": ratios[len(ratios) // 2], "peak_gib": mem}))


if __name__ == "__main__":
    main()
