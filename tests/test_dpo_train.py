"""D3PO, Diffusion-DPO and reward backprop through the one trainer: short moons runs raise the eval
reward; the tiny SD3 runs D3PO end to end; bad set-ups fail with the key to change."""
import pytest
import torch

from flowrl.config import ConfigError, load_config
from flowrl.registry import REWARDS
from flowrl.trainer import Trainer

FAST = ["model.base_iters=300", "sample.batch_size=64", "sample.num_batches_per_epoch=2",
        "train.batch_size=64", "eval.num_samples=200", "eval.batch_size=200", "sample.eval_num_steps=10",
        "eval.every=0", "checkpoint.every=0", "logging.progress=False"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(spec, tmp_path, *extra):
    trainer = Trainer(load_config(spec, FAST + list(extra)), tmp_path / "run")
    before = {k: v.clone() for k, v in trainer.policy.net.state_dict().items()}
    summary = trainer.train()
    after = trainer.policy.net.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    return summary


def test_d3po_raises_the_moons_reward(tmp_path):
    s = run("dpo.py:moons", tmp_path, "num_epochs=6", "train.lr=1e-3")
    assert s["reward_after"] > s["reward_before"] + 0.2


def test_diffusion_dpo_raises_the_moons_reward(tmp_path):
    s = run("dpo.py:moons_dpo", tmp_path, "num_epochs=15")
    assert s["reward_after"] > s["reward_before"] + 0.1


def test_reward_backprop_raises_the_moons_reward_fast(tmp_path):
    s = run("reward_backprop.py:moons", tmp_path, "num_epochs=3")
    assert s["reward_after"] > s["reward_before"] + 0.2 and s["optimizer_steps"] == 6


def test_d3po_on_the_tiny_sd3_runs_end_to_end(tmp_path):
    tiny = ["num_epochs=2", "model.resolution=32", "model.max_sequence_length=16", "sample.num_steps=3",
            "sample.eval_num_steps=3", "sample.batch_size=4", "sample.num_batches_per_epoch=2",
            "train.batch_size=4", "eval.num_samples=4", "eval.batch_size=4", "logging.progress=False"]
    trainer = Trainer(load_config("dpo.py:tiny_sd3", tiny), tmp_path / "run")
    summary = trainer.train()
    assert summary["optimizer_steps"] == 4 and summary["reward_after"] is not None
    lora = [p for k, p in trainer.policy.net.named_parameters() if "lora_B" in k]
    assert any(p.abs().sum() > 0 for p in lora)                   # the LoRA left its zero init


def test_d3po_with_groups_of_4_fails_naming_the_keys(tmp_path):
    cfg = load_config("dpo.py:moons", FAST + ["num_epochs=1", "sample.group_size=4"])
    with pytest.raises(ConfigError, match="sample.group_size=2 and sample.same_latent=True"):
        Trainer(cfg, tmp_path / "run").train()


def test_d3po_without_same_latent_fails_naming_the_key(tmp_path):
    cfg = load_config("dpo.py:moons", FAST + ["num_epochs=1", "sample.same_latent=False"])
    with pytest.raises(ConfigError, match="sample.same_latent=True"):
        Trainer(cfg, tmp_path / "run").train()


@REWARDS.register("test_rb_not_differentiable", domain="2d")
def _values_only(device):
    return lambda samples, prompts, metadata: samples[:, 0].detach()


def test_reward_backprop_refuses_a_non_differentiable_reward_before_training(tmp_path):
    cfg = load_config("reward_backprop.py:moons", FAST + ["num_epochs=1"])
    with cfg.unlocked():
        cfg.reward.weights = {"moons_unlearning": 1.0, "test_rb_not_differentiable": 0.5}
    with pytest.raises(ValueError, match="test_rb_not_differentiable.*not differentiable.*grpo"):
        Trainer(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def _moons_preferences(tmp_path, n=128):
    """People's labels, simulated: n pairs of real moon points, the upper moon's point preferred."""
    import json

    import numpy as np
    from sklearn.datasets import make_moons
    x, y = make_moons(n_samples=2 * n, noise=0.05, random_state=0)
    up, down = x[y == 0].astype(np.float32), x[y == 1].astype(np.float32)
    d, rows = tmp_path / "prefs", []
    d.mkdir()
    for i in range(n):
        np.save(d / f"u{i}.npy", up[i])
        np.save(d / f"d{i}.npy", down[i])
        a, b = (f"u{i}.npy", f"d{i}.npy") if i % 2 else (f"d{i}.npy", f"u{i}.npy")
        rows.append({"prompt": "", "image_a": a, "image_b": b, "preferred": "a" if i % 2 else "b"})
    (d / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d / "pairs.jsonl"


def test_diffusion_dpo_learns_from_a_preference_file_without_sampling(tmp_path):
    path = _moons_preferences(tmp_path)
    trainer = Trainer(load_config("dpo.py:human", FAST + ["num_epochs=15", f"algorithm.preference_file={path}"]),
                      tmp_path / "run")
    summary = trainer.train()
    assert summary["reward_after"] > summary["reward_before"] + 0.1
    assert trainer.timers["sample"] == 0.0 and trainer.opt_steps == 30   # 64 pairs x 2 rows = 2 minibatches


def test_preference_file_route_needs_a_file():
    with pytest.raises(ConfigError, match="preference_file=PATH"):
        Trainer(load_config("dpo.py:human", FAST), "/tmp/never-created-run")
