"""Benchmark: rewards overlapped with sampling (config reward.overlap) vs scored synchronously.

    python scripts/bench_reward_overlap.py                 # tiny random SD3 on the CPU, ~1-2 min
    python scripts/bench_reward_overlap.py --remote        # the reward behind `flowrl serve-reward`

The reward sleeps a fixed latency per batch, set to the measured sampling time of a batch, so the
reward takes as long as sampling. It times the trainer's collect phase (encode, sample, decode and
score every batch of an epoch) both ways and prints the ratios to max(sampling, reward):
synchronous ~2, overlapped (N + 1) / N for N batches (batch b is scored while b + 1 samples; the last
one is not hidden). Sampling and reward times are those of the synchronous epochs (a remote reward's
includes its HTTP round trips). Scores are checked identical both ways.
"""
import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import ml_collections
import torch

from flowrl.config import load_config
from flowrl.registry import REWARDS
from flowrl.trainer import Trainer

REPO = Path(__file__).resolve().parent.parent


@REWARDS.register("fixed_latency", domain="any")
def fixed_latency(device, latency: float = 0.0):
    """Reward = mean of each sample, after sleeping `latency` seconds per call (a slow scorer)."""
    def fn(samples, prompts, metadata):
        time.sleep(fn.latency)
        return samples.flatten(1).float().mean(1)
    fn.latency = float(latency)
    return fn


def start_server(latency: float):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "flowrl", "serve-reward", "fixed_latency", "--port", str(port), "--import",
           __file__, "--option", f"fixed_latency.latency={latency}", "--threads", "1"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import httpx
    for _ in range(600):
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0)
            return proc, f"http://127.0.0.1:{port}"
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("reward server did not start")


def collect_seconds(trainer: Trainer, overlap: bool, repeats: int):
    """Medians over `repeats` epochs of collect()'s wall time, its sampling (encode + sample + decode)
    time and its reward time (synchronous: the reward's own time; overlapped: the wait), + the rewards."""
    trainer.c.reward.overlap = overlap
    walls, sampling, reward, rewards = [], [], [], []
    for epoch in range(repeats):
        trainer.timers = defaultdict(float)
        t = time.perf_counter()
        batch = trainer.collect(epoch, trainer.step_settings(epoch))
        walls.append(time.perf_counter() - t)
        sampling.append(sum(v for k, v in trainer.timers.items() if k != "reward"))
        reward.append(trainer.timers["reward"])
        rewards.append(batch["rewards"])
    return statistics.median(walls), statistics.median(sampling), statistics.median(reward), torch.cat(rewards)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=10, help="sampling batches per epoch")
    ap.add_argument("--repeats", type=int, default=3, help="epochs timed per mode (median)")
    ap.add_argument("--remote", action="store_true", help="score through a `flowrl serve-reward` process")
    args = ap.parse_args()
    torch.set_num_threads(1)
    over = ["model.resolution=64", "sample.num_steps=6", "sample.batch_size=4", "sample.group_size=4",
            f"sample.num_batches_per_epoch={args.batches}", "train.batch_size=4", "eval.num_samples=4",
            "logging.progress=False", "cpu_threads=1"]
    cfg = load_config("grpo.py:tiny_sd3", over)
    with cfg.unlocked():
        cfg.reward.weights = ml_collections.ConfigDict({"fixed_latency": 1.0})
    local = Trainer(cfg, Path(tempfile.mkdtemp()) / "run")
    fn = local.reward.fns["fixed_latency"]
    _, sample_s, _, _ = collect_seconds(local, False, args.repeats)       # latency 0: sampling alone
    latency = sample_s / args.batches
    fn.latency = latency
    trainer, proc = local, None
    if args.remote:
        proc, url = start_server(latency)
        trainer = Trainer(load_config("grpo.py:tiny_sd3_remote", over + [f"reward.options.remote.url={url}"]),
                          Path(tempfile.mkdtemp()) / "run")
    try:
        sync_s, sample_s, reward_s, r_sync = collect_seconds(trainer, False, args.repeats)
        over_s, _, _, r_over = collect_seconds(trainer, True, args.repeats)
    finally:
        if proc is not None:
            proc.terminate()
    bound = max(sample_s, reward_s)    # both measured in the synchronous epochs
    print(f"{'remote' if args.remote else 'local'} reward, {args.batches} batches per epoch, latency "
          f"{latency * 1000:.0f} ms per batch (= sampling time of a batch, measured first)")
    print(f"sampling {sample_s:.2f} s, reward {reward_s:.2f} s per epoch; collect phase: synchronous "
          f"{sync_s:.2f} s, overlapped {over_s:.2f} s")
    print(f"ratio to max(sampling, reward): synchronous {sync_s / bound:.2f}, overlapped {over_s / bound:.2f} "
          f"(ideal {(args.batches + 1) / args.batches:.3f}); speed-up {sync_s / over_s:.2f}x; "
          f"scores identical: {torch.equal(r_sync, r_over)}")


if __name__ == "__main__":
    main()
