"""The one loop on the 2-D flow: it learns, resumes exactly, and refuses bad input."""
import json

import pytest
import torch

from flowrl.checkpoint import CheckpointError, list_checkpoints
from flowrl.config import ConfigError, load_config
from flowrl.registry import REWARDS
from flowrl.trainer import Trainer

FAST = ["model.base_iters=300", "sample.batch_size=64", "sample.num_batches_per_epoch=2",
        "sample.group_size=128", "train.batch_size=64", "eval.num_samples=200", "eval.batch_size=200",
        "sample.eval_num_steps=10", "logging.progress=False"]


def fast_config(*extra):
    return load_config("grpo.py:moons", FAST + list(extra))


def rows(run_dir, drop_time=True):
    out = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not (drop_time and k.startswith(("time_", "cpu_")))} for r in out]


def test_reward_rises_and_parameters_change(tmp_path):
    cfg = fast_config("num_epochs=6", "eval.every=0", "checkpoint.every=0")
    trainer = Trainer(cfg, tmp_path / "run")
    before = {k: v.clone() for k, v in trainer.policy.net.state_dict().items()}
    summary = trainer.train()
    after = trainer.policy.net.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert summary["reward_after"] > summary["reward_before"] + 0.2
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert {"reward_before", "reward_after", "steps", "wall_seconds"} <= set(s)
    assert (tmp_path / "run" / "eval" / "final.npz").exists() and (tmp_path / "run" / "eval" / "base.npz").exists()


def test_resume_after_a_crash_reproduces_the_uninterrupted_metrics(tmp_path, monkeypatch):
    extra = ["num_epochs=4", "checkpoint.every=2", "eval.every=1", "train.lr_schedule=cosine"]
    Trainer(fast_config(*extra), tmp_path / "full").train()
    lr = fast_config(*extra).train.lr   # cosine to 0 over the 4 epochs: factors 1, (1 + cos(pi/4))/2, 1/2, ...
    assert [r["lr"] for r in rows(tmp_path / "full")[1:3]] == pytest.approx([lr, lr * 0.853553])

    crashed = Trainer(fast_config(*extra), tmp_path / "crash")
    real_epoch = Trainer.epoch

    def dying_epoch(self, epoch):
        if epoch == 3:
            raise KeyboardInterrupt("killed")
        return real_epoch(self, epoch)
    monkeypatch.setattr(Trainer, "epoch", dying_epoch)
    with pytest.raises(KeyboardInterrupt):
        crashed.train()
    monkeypatch.setattr(Trainer, "epoch", real_epoch)
    assert [e for e, _ in list_checkpoints(tmp_path / "crash")] == [2]

    Trainer(fast_config(*extra), tmp_path / "crash", resume=True).train()
    assert rows(tmp_path / "crash") == rows(tmp_path / "full")


def test_run_dir_of_another_config_is_refused_and_left_alone(tmp_path):
    Trainer(fast_config("num_epochs=1"), tmp_path / "run").train()
    saved = (tmp_path / "run" / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="already holds a run"):
        Trainer(fast_config("num_epochs=1"), tmp_path / "run")
    with pytest.raises(ConfigError, match="train.lr"):
        Trainer(fast_config("num_epochs=2", "train.lr=0.5"), tmp_path / "run", resume=True)
    assert (tmp_path / "run" / "config.yaml").read_text() == saved


def test_missing_and_corrupt_checkpoints_give_clear_errors(tmp_path):
    cfg = fast_config("num_epochs=2", "checkpoint.every=1")
    Trainer(cfg, tmp_path / "run").train()
    (tmp_path / "run" / "checkpoints" / "step_2" / "trainable.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        Trainer(cfg, tmp_path / "run", resume=True)
    (tmp_path / "run" / "checkpoints" / "step_2" / "optimizer.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing.*optimizer"):
        Trainer(cfg, tmp_path / "run", resume=True)
    with pytest.raises(ConfigError, match="no config.yaml"):
        Trainer(cfg, tmp_path / "elsewhere", resume=True)


@REWARDS.register("test_nan_after_base", domain="2d")
def _nan_reward(device):
    calls = {"n": 0}

    def fn(samples, prompts, metadata):
        calls["n"] += 1
        r = torch.zeros(len(samples))
        if calls["n"] > 1:          # the base evaluation passes, the first training batch is NaN
            r[3] = float("nan")
        return r
    return fn


def test_nan_reward_fails_naming_the_reward_and_writes_no_checkpoint(tmp_path):
    cfg = load_config("grpo.py:moons", FAST + ["num_epochs=2", "checkpoint.every=1"])
    with cfg.unlocked():
        cfg.reward.weights = {"test_nan_after_base": 1.0}
    with pytest.raises(ValueError, match="test_nan_after_base.*NaN"):
        Trainer(cfg, tmp_path / "run").train()
    assert list_checkpoints(tmp_path / "run") == []


def test_indivisible_batches_fail_before_any_model_loads(tmp_path):
    with pytest.raises(ConfigError, match="sample.group_size"):
        Trainer(fast_config("sample.group_size=100"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_eval_noise_does_not_depend_on_the_process_split():
    from flowrl.evaluation import eval_indices, eval_noise
    whole = eval_noise(eval_indices(10, 0, 1), (3,), seed=5)
    halves = torch.cat([eval_noise(eval_indices(10, r, 2), (3,), seed=5) for r in range(2)])
    assert torch.equal(whole, halves)


def test_wandb_offline_logs_into_the_run_dir(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    Trainer(fast_config("num_epochs=1", "logging.wandb=True"), tmp_path / "run").train()
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))


def test_the_main_job_reaches_the_issue_targets_without_collapse(tmp_path):
    """`flowrl train --config grpo.py:moons` as shipped: reward >= 0.9, samples spread on the upper moon."""
    import numpy as np
    summary = Trainer(load_config("grpo.py:moons", ["logging.progress=False"]), tmp_path / "run").train()
    assert summary["reward_before"] < 0.6 and summary["reward_after"] >= 0.9
    x = np.load(tmp_path / "run" / "eval" / "final.npz")["x"]
    lo, hi = np.percentile(x[:, 0], [5, 95])
    assert lo < -0.8 and hi > 0.8          # covers most of [-1, 1]: not collapsed to one end


def test_collapse_alarm_fires_on_a_collapsing_run(tmp_path, capsys):
    """Fidelity reward, no KL, high lr: samples shrink to a point (helper-measured Vendi 5 -> 1)."""
    cfg = load_config("grpo.py:moons_fidelity", FAST + ["algorithm.beta=0.0", "train.lr=3e-3",
                                                         "num_epochs=30", "eval.every=5"])
    Trainer(cfg, tmp_path / "run").train()
    evals = [r for r in rows(tmp_path / "run") if "eval_diversity" in r]
    assert evals[0]["epoch"] == 0 and evals[-1]["eval_diversity"] < 0.5 * evals[0]["eval_diversity"]
    assert "diversity alarm" in capsys.readouterr().out


def test_time_budget_stops_after_the_epoch_that_spends_it_with_a_final_eval_and_save(tmp_path):
    cfg = fast_config("num_epochs=50", "eval.every=0", "checkpoint.every=0", "train.max_seconds=1e-9",
                      "train.budget_clock=cpu")
    summary = Trainer(cfg, tmp_path / "run").train()
    r = rows(tmp_path / "run", drop_time=False)
    assert [x["epoch"] for x in r] == [0, 1] and "eval_reward" in r[1]     # one epoch, then final eval
    assert summary["reward_after"] == r[1]["eval_reward"]
    assert list_checkpoints(tmp_path / "run")                               # the end is saved
    assert 0 < r[1]["cpu_collect"] and 0 < r[1]["cpu_train"]               # this process's CPU seconds
