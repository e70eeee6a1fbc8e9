"""Evaluation: ODE samples from FIXED noise and prompts (comparable across checkpoints), scored.

2-D samples are saved as RUN_DIR/eval/<tag>.npz (key `x`, (N, 2)); images as
RUN_DIR/eval/<tag>/<index>.png with prompts.jsonl, each rank writing its own samples.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import numpy as np
import torch

from flowrl.batch import Batch
from flowrl.cache import _umask_mode
from flowrl.rundir import atomic_write_text
from flowrl.sampling.rollout import ode_sample


def eval_indices(num_samples: int, rank: int, world_size: int) -> torch.Tensor:
    n = num_samples // world_size
    return torch.arange(rank * n, (rank + 1) * n)


def eval_noise(indices: torch.Tensor, shape, seed: int) -> torch.Tensor:
    """Noise for global eval indices, one generator per index, so sample i gets the same noise
    whatever the number of processes or the batch size. -> (n, *shape)."""
    from flowrl.data.sampler import mix_seed
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(mix_seed(seed, int(i))))
                        for i in indices]) if len(indices) else torch.zeros((0, *shape))


@torch.no_grad()
def ode_eval_sample(policy, noise, cond, num_steps: int, guidance: float = 1.0, generator=None):
    """The default evaluation sampler: the policy's deterministic Euler ODE. -> (B, *shape)."""
    return ode_sample(lambda z, s: policy.velocity(z, s, cond, guidance=guidance), noise,
                      policy.sigmas(num_steps))


def evaluate(policy, reward_fn, prompt_set, indices: torch.Tensor, num_steps: int, guidance: float,
             batch_size: int, seed: int, device, sample_fn=ode_eval_sample) -> Batch:
    """Sample (default: ODE) and score this rank's eval indices. -> Batch(samples, rewards, index,
    "reward.<name>" (B,) per reward component; prompts). `sample_fn(policy, noise, cond, num_steps,
    guidance, generator)`: an algorithm's own sampler (e.g. value matching's controlled SDE), given
    a generator seeded per batch."""
    from flowrl.data.sampler import mix_seed
    noise = eval_noise(indices, policy.sample_shape, seed)
    out = []
    for start in range(0, len(indices), batch_size):
        idx = indices[start:start + batch_size]
        prompts = [prompt_set.prompts[i % len(prompt_set)] for i in idx.tolist()]
        meta = [prompt_set.metadata[i % len(prompt_set)] for i in idx.tolist()]
        cond = policy.encode(prompts)
        gen = torch.Generator().manual_seed(mix_seed(seed, int(idx[0]), 21))
        x = sample_fn(policy, noise[start:start + batch_size].to(device), cond, num_steps, guidance, gen)
        samples = policy.decode(x).float()
        total, parts = reward_fn(samples, prompts, meta)
        out.append(Batch({"samples": samples.cpu(), "rewards": total, "index": idx,
                          **{f"reward.{k}": v for k, v in parts.items()}}, {"prompts": prompts}))
    return Batch.cat(out)


def save_npz_atomically(path: Path, **arrays) -> None:
    """np.savez to a temp file in the same folder, fsync, rename: readers never see half a file."""
    import os
    import tempfile
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_eval(run_dir: Path, tag: str, local: Batch, gathered: Dict[str, torch.Tensor], prompt_set,
              is_main: bool) -> None:
    """2-D: main saves eval/<tag>.npz. Images: every rank saves its PNGs, main writes prompts.jsonl."""
    d = Path(run_dir) / "eval"
    if local["samples"].ndim == 2:
        if is_main:
            d.mkdir(parents=True, exist_ok=True)
            save_npz_atomically(d / f"{tag}.npz", x=gathered["samples"].numpy(),
                                reward=gathered["rewards"].numpy())
        return
    from PIL import Image
    out = d / tag
    out.mkdir(parents=True, exist_ok=True)
    for img, i in zip(local["samples"], local["index"].tolist()):
        arr = (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(arr).save(out / f"{i:05d}.png")
    if is_main:
        parts = {k[7:]: gathered[k].tolist() for k in gathered if k.startswith("reward.")}
        rows = [{"index": i, "image": f"{i:05d}.png", "prompt": prompt_set.prompts[i % len(prompt_set)],
                 "reward": float(r), **({k: v[n] for k, v in parts.items()} if len(parts) > 1 else {})}
                for n, (i, r) in enumerate(zip(gathered["index"].tolist(), gathered["rewards"].tolist()))]
        atomic_write_text(out / "prompts.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
