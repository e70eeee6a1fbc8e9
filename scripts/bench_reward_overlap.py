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
    """Reward = mean of each sample, after sleeping a fixed latency per call (a slow scorer): the
    `latency` attribute, or metadata[0]["latency"] when a remote client sends it."""
    def fn(samples, prompts, metadata):
        time.sleep(metadata[0].get("latency", fn.latency) if metadata else fn.latency)
        return samples.flatten(1).float().mean(1)
    fn.latency = float(latency)
    return fn


class RemoteLatency:
    """The `remote` reward, passing its latency to the server's fixed_latency reward in the metadata."""

    def __init__(self, url: str):
        self.remote, self.latency = REWARDS.build("remote", torch.device("cpu"), url=url), 0.0

    def __call__(self, samples, prompts, metadata):
        return self.remote(samples, prompts, [{**m, "latency": self.latency} for m in metadata])


def start_server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "flowrl", "serve-reward", "fixed_latency", "--port", str(port), "--import",
           __file__, "--threads", "1"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import httpx
    for _ in range(1200):
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0)
            return proc, f"http://127.0.0.1:{port}"
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("reward server did not start")


def collect_seconds(trainer: Trainer, overlap: bool, epoch: int):
    """collect()'s wall time for one epoch, its sampling (encode + sample + decode) time, its reward
    time (synchronous: the reward's own; overlapped: the wait) and the rewards."""
    trainer.c.reward.overlap = overlap
    trainer.timers = defaultdict(float)
    t = time.perf_counter()
    batch = trainer.collect(epoch, trainer.step_settings(epoch))
    wall = time.perf_counter() - t
    sampling = sum(v for k, v in trainer.timers.items() if k != "reward")
    return wall, sampling, trainer.timers["reward"], batch["rewards"]


def one_round(trainer: Trainer, fn, batches: int, epoch: int):
    """Sampling alone (latency 0) sets the latency; then one synchronous and one overlapped epoch,
    back to back (the machine's load changes slowly compared with them)."""
    fn.latency = 0.0
    _, sample_s, _, _ = collect_seconds(trainer, False, epoch)
    fn.latency = sample_s / batches
    sync = collect_seconds(trainer, False, epoch)
    over = collect_seconds(trainer, True, epoch)
    return fn.latency, sync, over


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=10, help="sampling batches per epoch")
    ap.add_argument("--repeats", type=int, default=3, help="rounds (the median ratio is printed)")
    ap.add_argument("--remote", action="store_true", help="score through a `flowrl serve-reward` process")
    args = ap.parse_args()
    torch.set_num_threads(1)
    over = ["model.resolution=64", "sample.num_steps=6", "sample.batch_size=4", "sample.group_size=4",
            f"sample.num_batches_per_epoch={args.batches}", "train.batch_size=4", "eval.num_samples=4",
            "logging.progress=False", "cpu_threads=1"]
    cfg = load_config("grpo.py:tiny_sd3", over)
    with cfg.unlocked():
        cfg.reward.weights = ml_collections.ConfigDict({"fixed_latency": 1.0})
    trainer = Trainer(cfg, Path(tempfile.mkdtemp()) / "run")
    fn, proc = trainer.reward.fns["fixed_latency"], None
    if args.remote:   # the server's reward reads its latency from the client's first request
        proc, url = start_server()
        trainer.reward.fns["fixed_latency"] = RemoteLatency(url)
    rows = []
    try:
        for r in range(args.repeats):
            latency, (sync_s, sample_s, reward_s, r_sync), (over_s, _, _, r_over) = one_round(
                trainer, trainer.reward.fns["fixed_latency"], args.batches, r)
            bound = max(sample_s, reward_s)     # both measured in the synchronous epoch
            rows.append((sync_s / bound, over_s / bound, sync_s, over_s, sample_s, reward_s, latency,
                         torch.equal(r_sync, r_over)))
    finally:
        if proc is not None:
            proc.terminate()
    print(f"{'remote' if args.remote else 'local'} reward, {args.batches} batches per epoch; per round: "
          f"sampling / reward / synchronous / overlapped seconds, ratios to max(sampling, reward)")
    for r in rows:
        print(f"  latency {r[6] * 1000:4.0f} ms: {r[4]:.2f} / {r[5]:.2f} / {r[2]:.2f} / {r[3]:.2f} s  ->  "
              f"synchronous {r[0]:.2f}, overlapped {r[1]:.2f}; scores identical: {r[7]}")
    sync_ratio, over_ratio = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
    print(f"median ratio to max(sampling, reward): synchronous {sync_ratio:.2f}, overlapped {over_ratio:.2f} "
          f"(ideal {(args.batches + 1) / args.batches:.3f}); speed-up {sync_ratio / over_ratio:.2f}x")


if __name__ == "__main__":
    main()
