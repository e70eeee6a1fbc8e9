"""End to end: `grpo.py:tiny_sd3` (Flow-GRPO + LoRA on the tiny random SD3) trains 2 epochs through the
one trainer; only the LoRA moves, checkpoints hold the diffusers LoRA file, and the run resumes. The
reward is not expected to rise (the model is random)."""
import json

import pytest
import torch
from safetensors.torch import load_file

from flowrl.config import load_config
from flowrl.trainer import Trainer

TINY = ["num_epochs=2", "model.resolution=32", "model.max_sequence_length=16", "sample.num_steps=3",
        "sample.eval_num_steps=3", "sample.batch_size=4", "sample.num_batches_per_epoch=2",
        "sample.group_size=4", "train.batch_size=4", "eval.num_samples=4", "eval.batch_size=4",
        "logging.progress=False"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_tiny_sd3_trains_only_the_lora_checkpoints_in_diffusers_format_and_resumes(tmp_path):
    trainer = Trainer(load_config("grpo.py:tiny_sd3", TINY), tmp_path / "run")
    net = trainer.policy.net
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    lora = {k for k, p in net.named_parameters() if p.requires_grad}
    assert lora and all("lora_" in k for k in lora)

    summary = trainer.train()

    after = net.state_dict()
    assert set(after) == set(before)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= lora                           # the base weights never move
    assert {k for k in changed if "lora_B" in k}                 # lora_B left its zero init

    ckpt = tmp_path / "run" / "checkpoints" / "step_2"
    assert (ckpt / "trainable.safetensors").exists() and (ckpt / "pytorch_lora_weights.safetensors").exists()
    saved = load_file(ckpt / "trainable.safetensors")
    assert set(saved) == lora and all(torch.equal(saved[k], after[k].float()) for k in lora)
    exported = load_file(ckpt / "pytorch_lora_weights.safetensors")
    assert exported and all(k.startswith("transformer.") and "lora_" in k for k in exported)

    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["reward_before"] is not None and s["reward_after"] is not None
    assert summary["optimizer_steps"] == 4                       # 2 minibatches x 2 epochs
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(abs(r["ratio"] - 1) < 1e-2 for r in rows if "ratio" in r)
    assert (tmp_path / "run" / "eval" / "final").is_dir()

    resumed = Trainer(load_config("grpo.py:tiny_sd3", TINY + ["num_epochs=3"]), tmp_path / "run", resume=True)
    assert all(torch.equal(p.detach(), after[k]) for k, p in resumed.policy.net.named_parameters() if k in lora)
    assert resumed.train()["optimizer_steps"] == 6 and (tmp_path / "run" / "checkpoints" / "step_3").is_dir()
