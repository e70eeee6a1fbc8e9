"""Reading finished or running run dirs back: their config, checkpoints, policy and reward."""
from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import torch

from flowrl.checkpoint import CheckpointError, list_checkpoints, verify_checkpoint


TIMING_PREFIXES = ("time_", "cpu_")   # metrics that vary from run to run (wall and CPU seconds)


def comparable_rows(rows: List[dict]) -> List[dict]:
    """metrics.jsonl rows without their timings: two runs that computed the same thing (e.g. a
    resumed run and an uninterrupted one) have equal comparable rows."""
    return [{k: v for k, v in r.items() if not k.startswith(TIMING_PREFIXES)} for r in rows]


def load_run_config(run_dir: Path):
    """The run's config.yaml as a locked ConfigDict."""
    import ml_collections
    import yaml
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} is not a run dir (no config.yaml)")
    cfg = ml_collections.ConfigDict(yaml.safe_load(path.read_text()))
    cfg.lock()
    return cfg


def run_checkpoints(run_dir: Path) -> List[Tuple[int, Path]]:
    """[(epoch, path)], oldest first; raises if the run has none."""
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"{run_dir} has no checkpoints (looked in {Path(run_dir) / 'checkpoints'})")
    return found


def build_policy(config, device: torch.device):
    """The run's base policy (untrained weights), as the trainer builds it."""
    from flowrl.cache import cache_dir
    from flowrl.protocols import Runtime
    from flowrl.registry import POLICIES
    from flowrl.trainer import options
    dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[config.mixed_precision]
    return POLICIES.build(config.model.name, Runtime(device, dtype, cache_dir(), config.seed),
                          **options(config.model))


def build_run_reward(config, device: torch.device):
    from flowrl.rewards import build_reward
    return build_reward(config.reward.weights.to_dict(), config.reward.options.to_dict(), device,
                        tuple(config.reward.get("metrics", ())))


def load_policy_weights(policy, checkpoint: Path, use_ema: bool = True) -> None:
    """Load a checkpoint's trainable weights (its EMA weights when present and `use_ema`), after
    checking its SHA-256 manifest (if it has one)."""
    from safetensors.torch import load_file
    ckpt = Path(checkpoint)
    if not (ckpt / "trainable.safetensors").exists():
        raise CheckpointError(f"{ckpt} has no trainable.safetensors")
    verify_checkpoint(ckpt)
    policy.load_trainable_state_dict(load_file(ckpt / "trainable.safetensors"))
    if use_ema and (ckpt / "ema.safetensors").exists():
        from flowrl.ema import EMA
        params = [p for p in policy.net.parameters() if p.requires_grad]
        ema = EMA(params)
        ema.load_state_dict(load_file(ckpt / "ema.safetensors"))
        with torch.no_grad():
            for s, p in zip(ema.shadow, params):
                p.copy_(s.to(p.dtype))
