"""Exact SD3 + LoRA resume: prompt embeddings are a function of the prompt alone, and a `grpo.py:tiny_sd3`
run killed with SIGKILL (between checkpoints, and inside a checkpoint write) and resumed with --resume
reproduces the uninterrupted run's metrics and final LoRA bit for bit."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from flowrl.cache import cache_dir
from flowrl.config import load_config
from flowrl.policies.sd3 import TINY_NAME, ensure_tiny_sd3, sd3
from flowrl.protocols import Runtime
from flowrl.runs import comparable_rows
from flowrl.trainer import Trainer

TINY = ["num_epochs=3", "checkpoint.every=1", "eval.every=0", "model.resolution=32",
        "model.max_sequence_length=16", "sample.num_steps=3", "sample.eval_num_steps=3", "sample.batch_size=4",
        "sample.num_batches_per_epoch=2", "sample.group_size=4", "train.batch_size=4", "eval.num_samples=4",
        "eval.batch_size=4", "logging.progress=False", "cpu_threads=1", "eval.diversity=False"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_prompt_embeddings_do_not_depend_on_the_batch_or_the_cache():
    tiny = ensure_tiny_sd3(cache_dir() / TINY_NAME)
    make = lambda: sd3(Runtime(torch.device("cpu"), torch.float32, cache_dir(), seed=0), path=str(tiny),  # noqa: E731
                       resolution=32, max_sequence_length=16, lora_rank=4, lora_alpha=8)
    prompts = [f"a photo of {n} {c} cats" for n in ("one", "two", "three") for c in ("red", "green", "blue")]
    together = make().encode(prompts)
    alone = make()
    for i, p in enumerate(prompts):
        one = alone.encode([p])
        assert torch.equal(one["prompt_embeds"][0], together["prompt_embeds"][i]), p
        assert torch.equal(one["pooled"][0], together["pooled"][i]), p


def rows(run_dir):
    out = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return comparable_rows(out)


def launch(run_dir, log, **env):
    cmd = [sys.executable, "-m", "flowrl", "train", "--config", "grpo.py:tiny_sd3", "--output-dir", str(run_dir)]
    for o in TINY:
        cmd += ["--set", o]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})


def kill_when(proc, ready, timeout=240):
    """SIGKILL `proc` as soon as ready() holds (fails if it ends first or never gets there)."""
    t = time.time()
    while not ready():
        assert proc.poll() is None, "the run ended before the kill point"
        assert time.time() - t < timeout, "the run never reached the kill point"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_killed_tiny_sd3_runs_resume_bit_exactly(tmp_path):
    ensure_tiny_sd3(cache_dir() / TINY_NAME)   # built once, not raced by the two runs
    between, during = tmp_path / "between", tmp_path / "during"
    with open(tmp_path / "between.log", "w") as la, open(tmp_path / "during.log", "w") as lb:
        # a: killed after the epoch-1 checkpoint; b: killed inside the writer of step_3 (.step_3.tmp)
        a = launch(between, la)
        b = launch(during, lb, FLOWRL_TEST_PAUSE_CHECKPOINT="3")
        full = tmp_path / "full"
        Trainer(load_config("grpo.py:tiny_sd3", TINY), full).train()   # meanwhile: the uninterrupted run
        kill_when(a, lambda: (between / "checkpoints" / "step_1").is_dir())
        kill_when(b, lambda: (during / "checkpoints" / ".step_3.tmp" / "rng.safetensors").exists())
    assert (during / "checkpoints" / ".step_3.tmp").is_dir() and not (during / "checkpoints" / "step_3").exists()
    want = load_file(full / "checkpoints" / "step_3" / "trainable.safetensors")
    for run in (between, during):
        Trainer(load_config("grpo.py:tiny_sd3", TINY), run, resume=True).train()
        assert rows(run) == rows(full)
        got = load_file(run / "checkpoints" / "step_3" / "trainable.safetensors")
        assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
