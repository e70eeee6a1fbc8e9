"""Benchmark: Flow-GRPO on the 2-D moons configs. Prints seconds-to-target and throughput.

    python scripts/bench_moons.py [--target 0.9] [--config grpo.py:moons]

Evaluates every epoch (ODE, fixed noise) so the first epoch reaching the target is known; the
"fine-tune seconds" count only sampling + training time (evaluation excluded).
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

from flowrl.config import load_config
from flowrl.trainer import Trainer


def run(spec: str, target: float, extra):
    cfg = load_config(spec, ["eval.every=1", "logging.progress=False", "checkpoint.every=0"] + extra)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.time()
        trainer = Trainer(cfg, Path(d) / "run")
        setup = time.time() - t0
        summary = trainer.train()
        rows = [json.loads(l) for l in (Path(d) / "run" / "metrics.jsonl").read_text().splitlines()]
    work, hit = 0.0, None
    for r in rows[1:]:
        work += r["time_collect"] + r["time_train"]
        if hit is None and r.get("eval_reward", 0) >= target:
            hit = (r["epoch"], work)
    train_s = sum(r["time_collect"] + r["time_train"] for r in rows[1:])
    sample_s = sum(r["time_collect"] for r in rows[1:])
    return {"config": spec, "setup_s": setup, "reward_before": summary["reward_before"],
            "reward_after": summary["reward_after"], "epochs": cfg.num_epochs,
            "epoch_to_target": hit[0] if hit else None, "seconds_to_target": hit[1] if hit else None,
            "epochs_per_s": cfg.num_epochs / train_s, "optimizer_steps_per_s": summary["optimizer_steps"] / train_s,
            "sampling_share": sample_s / train_s}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", type=float, default=0.9)
    ap.add_argument("--config", action="append")
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args()
    for spec in a.config or ["grpo.py:moons", "grpo.py:moons_fidelity"]:
        target = a.target if "fidelity" not in spec else max(a.target, 0.92)
        r = run(spec, target, a.set)
        print(f"{r['config']}: reward {r['reward_before']:.3f} -> {r['reward_after']:.3f} | target {target}: "
              f"epoch {r['epoch_to_target']}, {r['seconds_to_target'] and round(r['seconds_to_target'], 2)} s "
              f"fine-tuning | {r['epochs_per_s']:.1f} epochs/s, {r['optimizer_steps_per_s']:.1f} optimizer steps/s, "
              f"sampling {100 * r['sampling_share']:.0f}% of fine-tune time | setup {r['setup_s']:.1f} s")


if __name__ == "__main__":
    main()
