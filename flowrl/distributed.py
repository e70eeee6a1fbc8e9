"""Accelerate setup: one Accelerator for every launch (CPU, one GPU, DDP, DeepSpeed)."""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path


def build_accelerator(config, gradient_accumulation_steps: int):
    """`gradient_accumulation_steps` counts backward passes per optimizer step (minibatches x
    trained timesteps). On CPU, process groups use gloo."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs
    import torch

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    kwargs = [InitProcessGroupKwargs(backend=backend, timeout=timedelta(minutes=30))] if distributed else []
    log_with = None
    if config.logging.wandb:
        os.environ.setdefault("WANDB_MODE", "offline" if not os.environ.get("WANDB_API_KEY") else "online")
        log_with = "wandb"
    acc = Accelerator(mixed_precision=config.mixed_precision, log_with=log_with,
                      gradient_accumulation_steps=gradient_accumulation_steps, kwargs_handlers=kwargs)
    from flowrl.fsdp import enable_fsdp_on_cpu
    enable_fsdp_on_cpu(acc)   # accelerate never picks FSDP for CPU processes: see flowrl.fsdp
    if distributed and acc.distributed_type == "NO":
        raise ValueError(f"{os.environ['WORLD_SIZE']} processes were launched but accelerate runs each alone "
                         f"(a GPU config on a machine without GPUs?): on CPU processes set ACCELERATE_USE_CPU=1")
    plugin = acc.state.deepspeed_plugin
    if plugin is not None:   # DeepSpeed sizes its buffers from these; there is no dataloader to read
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = config.train.batch_size
        plugin.deepspeed_config["gradient_accumulation_steps"] = gradient_accumulation_steps
    return acc


def init_tracking(acc, config, run_dir) -> None:
    """Start the wandb tracker (if logging.wandb) writing into the run dir; call after the run dir
    is validated, so a refused run leaves nothing behind."""
    if config.logging.wandb:
        init = {"wandb": {"dir": str(run_dir), "name": os.path.basename(str(run_dir))}}
        acc.init_trackers(config.logging.project, config=config.to_dict(), init_kwargs=init)


def dump_epoch(folder, epoch: int, rank: int, batch, params) -> None:
    """Debugging aid (FLOWRL_DUMP_DIR; the distributed tests): this rank's rewards, group ids and
    advantages of epoch `epoch` (0-based) and the full trained weights (FSDP shards gathered)."""
    import torch

    from flowrl.cache import atomic_save_safetensors
    from flowrl.fsdp import full
    keep = {k: v for k, v in batch.tensors.items() if k in ("rewards", "group_ids", "advantages")}
    keep["params"] = torch.cat([full(p.detach()).flatten().float().cpu() for p in params])
    atomic_save_safetensors(keep, Path(folder) / f"epoch{epoch + 1}_rank{rank}.safetensors")
