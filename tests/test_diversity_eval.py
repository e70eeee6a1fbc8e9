"""`flowrl eval-diversity` on samples files and on a tiny synthetic run dir (toy2d, 16 units)."""
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from flowrl.cli import app

REPO = Path(__file__).resolve().parent.parent
TINY = ["model.hidden=16", "model.depth=1", "model.base_iters=30", "model.base_batch=64",
        "eval.num_samples=64", "eval.batch_size=32", "sample.eval_num_steps=4",
        "reward.weights={'moons_fidelity': 1.0}"]


def _clusters(m, per=30, sep=20.0, seed=0):
    g = np.random.default_rng(seed)
    return np.repeat(sep * g.standard_normal((m, 2)), per, 0) + 1e-3 * g.standard_normal((m * per, 2))


def invoke(*args):
    return CliRunner().invoke(app, ["eval-diversity", *map(str, args)])


def test_samples_file_writes_json_next_to_it(tmp_path):
    f = tmp_path / "final.npz"
    np.savez(f, x=_clusters(3), reward=np.full(90, 0.25))
    res = invoke("--samples", f, "--bandwidth", 1.0)
    assert res.exit_code == 0, res.output
    assert "Vendi" in res.output and "final" in res.output
    report = json.loads((tmp_path / "final_diversity.json").read_text())
    (row,) = report["rows"]
    assert row["vendi"] == pytest.approx(3.0, abs=1e-3) and row["rke"] == pytest.approx(3.0, abs=1e-3)
    assert row["reward_mean"] == pytest.approx(0.25) and row["entropy"] is None
    assert report["settings"]["kernel"] == "gaussian" and report["settings"]["encoder"] == "raw"


def test_samples_file_images_with_pixels_and_output(tmp_path):
    f, out = tmp_path / "imgs.npz", tmp_path / "sub" / "d.json"
    imgs = np.zeros((6, 3, 16, 16), np.uint8)
    imgs[3:] = 255  # two distinct images, three copies each
    np.savez(f, x=imgs)
    res = invoke("--samples", f, "--encoder", "pixels", "--bandwidth", 1.0, "--output", out)
    assert res.exit_code == 0, res.output
    row = json.loads(out.read_text())["rows"][0]
    assert row["vendi"] == pytest.approx(2.0, abs=1e-6) and row["reward_mean"] is None


@pytest.mark.parametrize("content, message", [
    ({"y": np.zeros((4, 2))}, "no key 'x'"),
    ({"x": np.zeros((4, 2, 5))}, r"must be \(N, D\) points or \(N, 3, H, W\)"),
    ({"x": np.zeros((1, 2))}, "N >= 2"),
    ({"x": np.zeros((4, 2)), "reward": np.zeros(3)}, "'reward' has 3 values"),
])
def test_samples_file_errors(tmp_path, content, message):
    f = tmp_path / "bad.npz"
    np.savez(f, **content)
    res = invoke("--samples", f)
    assert res.exit_code == 2
    assert "error:" in res.output and re.search(message, res.output), res.output


def test_argument_errors(tmp_path):
    assert "not both" in invoke().output
    assert "does not exist" in invoke("--samples", tmp_path / "nope.npz").output
    (tmp_path / "junk.npz").write_text("not a zip")
    assert "not a readable .npz" in invoke("--samples", tmp_path / "junk.npz").output


def make_run(root: Path, monkeypatch) -> Path:
    """A run dir with config.yaml and two checkpoints: the base weights, and a zero velocity field
    (samples = the eval noise, so the entropy is that of N(0, I) exactly)."""
    from flowrl.config import load_config
    from flowrl.runs import build_policy
    monkeypatch.setenv("FLOWRL_CACHE", str(root / "cache"))
    cfg = load_config("grpo.py:moons", TINY)
    run = root / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    policy = build_policy(cfg, torch.device("cpu"))
    from safetensors.torch import save_file
    state = policy.trainable_state_dict()
    for step, sd in ((3, state), (6, {k: torch.zeros_like(v) for k, v in state.items()})):
        (run / "checkpoints" / f"step_{step}").mkdir(parents=True)
        save_file(sd, run / "checkpoints" / f"step_{step}" / "trainable.safetensors")
    return run


@pytest.fixture
def tiny_run(tmp_path, monkeypatch):
    return make_run(tmp_path, monkeypatch)


def test_run_dir_rows_fixed_noise_and_entropy(tiny_run):
    from flowrl.evaluation import eval_indices, eval_noise
    res = invoke(tiny_run, "--entropy-steps", 4)
    assert res.exit_code == 0, res.output
    report = json.loads((tiny_run / "diversity.json").read_text())
    rows = report["rows"]
    assert [r["tag"] for r in rows] == ["base", "step_3", "step_6"] and [r["step"] for r in rows] == [0, 3, 6]
    for r in rows:
        assert {"vendi", "rke", "reward_mean", "entropy"} <= set(r) and r["num_samples"] == 64
        assert r["reward_mean"] is not None and r["entropy"] is not None
    base, same, zero = rows
    assert same["vendi"] == pytest.approx(base["vendi"], rel=1e-9)   # same weights, same noise
    assert same["entropy"] == pytest.approx(base["entropy"], rel=1e-9)
    noise = eval_noise(eval_indices(64, 0, 1), (2,), 1234).double()
    gauss = (0.5 * (noise ** 2).sum(1) + math.log(2 * math.pi)).mean()  # -mean log N(noise; 0, I)
    assert zero["entropy"] == pytest.approx(float(gauss), abs=1e-6)
    assert report["settings"]["bandwidth_rule"].startswith("median of the base")


def test_run_dir_options(tiny_run, tmp_path):
    out = tmp_path / "d.json"
    res = invoke(tiny_run, "--no-entropy", "--no-reward", "-n", 32, "--kernel", "cosine", "--output", out)
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert not (tiny_run / "diversity.json").exists()
    assert all(r["entropy"] is None and r["reward_mean"] is None and r["num_samples"] == 32
               for r in report["rows"])
    assert report["settings"]["kernel"] == "cosine"


def test_run_dir_without_checkpoints(tmp_path):
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    res = invoke(tmp_path)
    assert res.exit_code == 2 and "has no checkpoints" in res.output
    res = invoke(tmp_path / "nothing")
    assert res.exit_code == 2 and "not a run dir" in res.output


@pytest.mark.skipif(os.environ.get("FLOWRL_SKIP_LAUNCH") == "1", reason="FLOWRL_SKIP_LAUNCH=1")
def test_two_processes_write_once_and_match_one(tiny_run, tmp_path):
    """`accelerate launch` with 2 CPU processes: same rows as one process, one JSON, one table."""
    assert invoke(tiny_run, "--entropy-steps", 4, "--output", tmp_path / "one.json").exit_code == 0
    one = json.loads((tmp_path / "one.json").read_text())
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "accelerate_configs" / "multi_cpu.yaml"), "--num_processes", "2", "-m", "flowrl",
           "eval-diversity", str(tiny_run), "--entropy-steps", "4", "--output", str(tmp_path / "two.json")]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert out.stdout.count("wrote ") == 1 and out.stdout.count("step_6") == 1
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["settings"]["num_processes"] == 2
    for a, b in zip(one["rows"], two["rows"]):
        for k in ("vendi", "rke", "reward_mean", "entropy"):
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), k


def test_max_samples_scores_a_fixed_subset_and_says_so(tmp_path):
    """3 tight clusters of 100 points: Vendi / RKE on a 60-point subset still count 3 modes; the
    subset is the same on every call; the JSON and the output say how many samples the kernels saw."""
    from flowrl.diversity_eval import kernel_subset
    f = tmp_path / "big.npz"
    np.savez(f, x=_clusters(3, per=100))
    res = invoke("--samples", f, "--bandwidth", 1.0, "--max-samples", 60)
    assert res.exit_code == 0, res.output
    assert "fixed random subset of 60 of 300 samples" in res.output
    (row,) = json.loads((tmp_path / "big_diversity.json").read_text())["rows"]
    assert row["num_samples"] == 300 and row["kernel_samples"] == 60
    assert row["vendi"] == pytest.approx(3.0, abs=0.05) and row["rke"] == pytest.approx(3.0, abs=0.05)
    x = torch.arange(1000.0).view(-1, 1)
    a, b = kernel_subset(x, 100), kernel_subset(x, 100)
    assert torch.equal(a, b) and a.shape == (100, 1) and len(a.unique()) == 100
    assert torch.equal(kernel_subset(x, 0), x) and torch.equal(kernel_subset(x, 1000), x)
    res = invoke("--samples", f, "--bandwidth", 1.0, "--max-samples", 0)
    assert "Vendi / RKE on all samples" in res.output
