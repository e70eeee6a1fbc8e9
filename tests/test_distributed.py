"""Two processes under `accelerate launch` (CPU, gloo): DDP, DeepSpeed ZeRO-2 and FSDP2 (LoRA, full).

Each rank scores only its own samples, the advantages equal a single-process computation on the
gathered rewards, the weights stay identical across ranks, and a resumed run matches an unbroken one.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flowrl.algorithms.advantages import group_advantages
from flowrl.runs import comparable_rows

REPO = Path(__file__).resolve().parent.parent
SMALL = ["model.base_iters=300", "sample.batch_size=32", "sample.num_batches_per_epoch=2",
         "sample.group_size=32", "train.batch_size=32", "eval.num_samples=100", "eval.batch_size=50",
         "sample.eval_num_steps=8", "logging.progress=False", "eval.every=1", "checkpoint.every=1"]
EXT_DIR = os.environ.get("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "flowrl" / "torch_extensions"))


TINY_SD3 = ["sample.batch_size=4", "sample.num_batches_per_epoch=2", "sample.group_size=4",
            "train.batch_size=4", "eval.num_samples=4", "eval.batch_size=2", "logging.progress=False",
            "eval.every=0", "checkpoint.every=0"]


def launch(run_dir: Path, dump: Path, epochs: int, config_file: str, resume=False,
           config: str = "grpo.py:moons", overrides=SMALL):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "accelerate_configs" / config_file), "--num_processes", "2",
           "-m", "flowrl", "train", "--config", config, "--output-dir", str(run_dir)]
    cmd += (["--resume-from", resume] if isinstance(resume, str) else ["--resume"]) if resume else []
    for o in list(overrides) + [f"num_epochs={epochs}"]:
        cmd += ["--set", o]
    env = {**os.environ, "FLOWRL_DUMP_DIR": str(dump), "OMP_NUM_THREADS": "1", "TORCH_EXTENSIONS_DIR": EXT_DIR}
    if "deepspeed" not in config_file:
        env["ACCELERATE_USE_CPU"] = "1"   # else accelerate silently runs one process
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out


def metrics(run_dir: Path):
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return comparable_rows(rows)


def check_ranks(run_dir: Path, dump: Path, epochs: int, per_rank: int = 64, groups: int = 4):
    rows = metrics(run_dir)[1:]
    assert len(rows) == epochs
    assert all(r["reward_samples_per_rank"] == [per_rank] * 2 for r in rows)   # each rank its own
    for epoch in range(1, epochs + 1):
        ranks = [load_file(dump / f"epoch{epoch}_rank{r}.safetensors") for r in range(2)]
        rewards = torch.cat([d["rewards"] for d in ranks])
        group_ids = torch.cat([d["group_ids"] for d in ranks])
        expected, _ = group_advantages(rewards, group_ids, clip=5.0)
        assert torch.allclose(torch.cat([d["advantages"] for d in ranks]), expected, atol=1e-6)
        assert torch.equal(ranks[0]["params"], ranks[1]["params"])
        assert len(group_ids.unique()) == groups          # samples per epoch / group size


@pytest.mark.parametrize("config_file", ["multi_cpu.yaml", "deepspeed_zero2_cpu.yaml"])
def test_two_processes_and_resume(tmp_path, config_file):
    if "deepspeed" in config_file:
        pytest.importorskip("deepspeed")
    out = launch(tmp_path / "full", tmp_path / "dump", 2, config_file)
    assert ("DEEPSPEED x 2" if "deepspeed" in config_file else "x 2 on cpu") in out.stdout
    check_ranks(tmp_path / "full", tmp_path / "dump", 2)
    if "deepspeed" in config_file:
        ckpt = tmp_path / "full" / "checkpoints" / "step_2"
        assert all((ckpt / f"optimizer.rank{r}.safetensors").exists() for r in range(2))
    launch(tmp_path / "part", tmp_path / "dump2", 1, config_file)
    launch(tmp_path / "part", tmp_path / "dump2", 2, config_file, resume=True)
    assert metrics(tmp_path / "part") == metrics(tmp_path / "full")


@pytest.mark.parametrize("config_file", ["multi_cpu.yaml", "deepspeed_zero2_cpu.yaml"])
def test_tiny_sd3_lora_on_two_processes(tmp_path, config_file):
    """The SD3 + LoRA path: rewards per rank, global advantages, LoRA identical on both ranks."""
    if "deepspeed" in config_file:
        pytest.importorskip("deepspeed")
    launch(tmp_path / "run", tmp_path / "dump", 2, config_file, config="grpo.py:tiny_sd3", overrides=TINY_SD3)
    check_ranks(tmp_path / "run", tmp_path / "dump", 2, per_rank=8)


def test_fsdp2_tiny_sd3_lora_shards_checkpoints_and_resumes_exactly(tmp_path):
    """FSDP2 through accelerate on 2 CPU processes (flowrl.fsdp switches accelerate to FSDP there):
    advantages from the gathered rewards, the same (gathered) LoRA on both ranks, one optimizer shard
    per rank, a whole LoRA exported, and 1 epoch + resume = 2 epochs, weights and EMA bit for bit."""
    over = TINY_SD3 + ["checkpoint.every=1", "train.ema=True", "train.ema_every=1", "model.resolution=32",
                       "model.max_sequence_length=16", "sample.num_steps=3"]
    out = launch(tmp_path / "full", tmp_path / "dump", 2, "fsdp_cpu.yaml", config="grpo.py:tiny_sd3", overrides=over)
    assert "FSDP x 2" in out.stdout
    check_ranks(tmp_path / "full", tmp_path / "dump", 2, per_rank=8)
    ckpt = tmp_path / "full" / "checkpoints" / "step_2"
    assert all((ckpt / f"optimizer.rank{r}.safetensors").exists() for r in range(2))
    lora = load_file(ckpt / "trainable.safetensors")
    assert lora and all(v.shape[0] in (8, 16, 32) or v.shape[1] in (8, 16, 32) for v in lora.values())
    assert load_file(ckpt / "pytorch_lora_weights.safetensors").keys()
    launch(tmp_path / "part", tmp_path / "dump2", 1, "fsdp_cpu.yaml", config="grpo.py:tiny_sd3", overrides=over)
    launch(tmp_path / "part", tmp_path / "dump2", 2, "fsdp_cpu.yaml", resume=True, config="grpo.py:tiny_sd3",
           overrides=over)
    resumed = tmp_path / "part" / "checkpoints" / "step_2"
    for name in ("trainable.safetensors", "ema.safetensors"):
        a, b = load_file(ckpt / name), load_file(resumed / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    train_only = lambda r: {k: v for k, v in r.items() if not k.startswith("eval_")}   # noqa: E731
    assert train_only(metrics(tmp_path / "part")[-1]) == train_only(metrics(tmp_path / "full")[-1])


def test_fsdp2_tiny_sd3_full_finetuning_resumes_exactly_and_exports_a_transformer_folder(tmp_path):
    """model.finetune="full" under FSDP2 (2 CPU processes): every transformer weight sharded and
    trained, the same gathered weights on both ranks, one optimizer shard per rank; resuming the run's
    step_1 (in a copy of its folder) rewrites step_2 bit for bit; the exported transformer/ folder (the
    EMA weights, gathered) loads with SD3Transformer2DModel.from_pretrained."""
    import shutil

    from diffusers import SD3Transformer2DModel
    over = TINY_SD3 + ["checkpoint.every=1", "checkpoint.keep_last=0", "train.ema=True", "train.ema_every=1",
                       "model.resolution=32", "model.max_sequence_length=16", "sample.num_steps=3"]
    out = launch(tmp_path / "full", tmp_path / "dump", 2, "fsdp_cpu.yaml", config="grpo.py:tiny_sd3_full",
                 overrides=over)
    assert "FSDP x 2" in out.stdout
    check_ranks(tmp_path / "full", tmp_path / "dump", 2, per_rank=8)
    ckpt = tmp_path / "full" / "checkpoints" / "step_2"
    assert all((ckpt / f"optimizer.rank{r}.safetensors").exists() for r in range(2))
    assert not (ckpt / "pytorch_lora_weights.safetensors").exists()
    net = SD3Transformer2DModel.from_pretrained(str(ckpt / "transformer"))
    params, ema = list(net.named_parameters()), load_file(ckpt / "ema.safetensors")
    assert len(params) == len(ema) and all(torch.equal(p, ema[str(i)]) for i, (_, p) in enumerate(params))
    assert set(load_file(ckpt / "trainable.safetensors")) == {k for k, _ in params}
    shutil.copytree(tmp_path / "full", tmp_path / "part")
    launch(tmp_path / "part", tmp_path / "dump2", 2, "fsdp_cpu.yaml", resume="step_1",
           config="grpo.py:tiny_sd3_full", overrides=over)
    resumed = tmp_path / "part" / "checkpoints" / "step_2"
    for name in ("trainable.safetensors", "ema.safetensors", "transformer/diffusion_pytorch_model.safetensors"):
        a, b = load_file(ckpt / name), load_file(resumed / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    train_only = lambda r: {k: v for k, v in r.items() if not k.startswith("eval_")}   # noqa: E731
    assert train_only(metrics(tmp_path / "part")[-1]) == train_only(metrics(tmp_path / "full")[-1])


def test_awm_on_two_processes_keeps_the_ranks_identical(tmp_path):
    """AWM's several backward passes per optimizer step (one per drawn sigma) under DDP: both ranks
    hold the same weights after every epoch, and each scored only its own samples."""
    launch(tmp_path / "run", tmp_path / "dump", 2, "multi_cpu.yaml", config="awm.py:moons", overrides=SMALL)
    assert all(r["reward_samples_per_rank"] == [64] * 2 for r in metrics(tmp_path / "run")[1:])
    for epoch in (1, 2):
        ranks = [load_file(tmp_path / "dump" / f"epoch{epoch}_rank{r}.safetensors") for r in range(2)]
        assert torch.equal(ranks[0]["params"], ranks[1]["params"])
    first = load_file(tmp_path / "dump" / "epoch1_rank0.safetensors")["params"]
    assert not torch.equal(first, ranks[0]["params"])                 # and they trained
