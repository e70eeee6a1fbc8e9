"""Checkpoints: safetensors + JSON only (nothing that runs code on load), written atomically.

RUN_DIR/checkpoints/step_N/
    trainable.safetensors   the policy's trainable weights (LoRA or the whole toy MLP)
    optimizer.safetensors   optimizer state tensors (+ optimizer.json, the structure; per-rank
                            optimizer.rank<r>.* when DeepSpeed ZeRO shards the state)
    ema.safetensors         EMA weights (if train.ema)
    rng.safetensors         torch CPU (and CUDA) RNG states
    algorithm.safetensors   the algorithm's own state, e.g. DDPO's per-prompt reward buffers
                            (+ algorithm.json, its structure)
    state.json              epoch, optimizer steps, python/numpy RNG, reward before training, and
                            "files": {relative path: SHA-256} of every other file (the manifest)
    + whatever policy.export() writes (e.g. pytorch_lora_weights.safetensors for diffusers)
The folder is written as .step_N.tmp, every file and the folder fsync'ed, then renamed (and the
parent fsync'ed): a killed run or a power cut never leaves a half checkpoint. Loading verifies the
hashes (a flipped byte fails naming the file); checkpoints written before the manifest load unverified.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from flowrl.cache import atomic_save_safetensors
from flowrl.errors import UserError
from flowrl.tree_io import flatten_tree, merge_tree

STATE_FILES = ("trainable.safetensors", "rng.safetensors", "state.json", "algorithm.safetensors",
               "algorithm.json")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, incomplete, corrupt or does not fit (the CLI: one line, exit 2)."""


def list_checkpoints(run_dir: Path) -> List[Tuple[int, Path]]:
    """[(epoch, path)] of complete checkpoints, oldest first."""
    d = Path(run_dir) / "checkpoints"
    found = [(int(m.group(1)), p) for p in d.glob("step_*") if (m := re.fullmatch(r"step_(\d+)", p.name))]
    return sorted(found)


def rng_state() -> Tuple[Dict[str, torch.Tensor], dict]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    np_state = np.random.get_state()
    meta = {"python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    return tensors, meta


def set_rng_state(tensors: Dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    v, st, gauss = meta["python"]
    random.setstate((v, tuple(st), gauss))
    n = meta["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))


def pick_checkpoint(run_dir: Path, name: Optional[str] = None) -> Optional[Path]:
    """The newest checkpoint, or checkpoint `name` ("step_N" or "N"; CheckpointError if absent)."""
    found = list_checkpoints(run_dir)
    if name is None:
        return found[-1][1] if found else None
    want = str(name) if str(name).startswith("step_") else f"step_{name}"
    for _, p in found:
        if p.name == want:
            return p
    raise CheckpointError(f"--resume-from {name}: no checkpoint {want} in {Path(run_dir) / 'checkpoints'}; "
                          f"there are {[p.name for _, p in found]}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def seal(folder: Path) -> Dict[str, str]:
    """fsync every file under `folder` (and the folder) -> {relative path: SHA-256 hex}."""
    hashes = {}
    for f in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        hashes[f.relative_to(folder).as_posix()] = hashlib.sha256(f.read_bytes()).hexdigest()
        _fsync(f)
    _fsync(folder)
    return hashes


def verify_checkpoint(path: Path, files: Optional[Dict[str, str]] = None) -> None:
    """CheckpointError naming the first file of the manifest `files` (default: state.json's) that is
    missing or whose SHA-256 differs. No manifest (written before manifests): nothing to verify."""
    if files is None and (Path(path) / "state.json").is_file():
        try:
            files = json.loads((Path(path) / "state.json").read_text()).get("files")
        except ValueError:
            raise CheckpointError(f"checkpoint {path}: state.json is corrupt; use an older checkpoint") from None
    for name, digest in (files or {}).items():
        f = Path(path) / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint {path} is incomplete: {name} is missing; --resume-from "
                                  f"an older step_N, or delete it")
        if hashlib.sha256(f.read_bytes()).hexdigest() != digest:
            raise CheckpointError(f"checkpoint {path} is corrupt: {f} does not match its SHA-256 in "
                                  f"state.json; resume from an older one with --resume-from step_N")


def _test_pause(epoch: int) -> None:
    """FLOWRL_TEST_PAUSE_CHECKPOINT=N: sleep inside the writer of step_N, its .tmp folder half
    written (the kill-during-checkpoint tests)."""
    if os.environ.get("FLOWRL_TEST_PAUSE_CHECKPOINT") == str(epoch):
        import time
        time.sleep(120)


def begin_checkpoint(run_dir: Path, epoch: int) -> Path:
    """Create the temp folder checkpoints/.step_<epoch>.tmp (main process)."""
    tmp = Path(run_dir) / "checkpoints" / f".step_{epoch}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def write_optimizer(tmp: Path, optimizer, shard: Optional[int] = None) -> None:
    """optimizer.safetensors + optimizer.json; per-rank files optimizer.rank<r>.* when the state is
    sharded (DeepSpeed ZeRO): every rank then writes its own."""
    name = "optimizer" if shard is None else f"optimizer.rank{shard}"
    from flowrl.fsdp import local
    tensors, skeleton = flatten_tree(optimizer.state_dict())
    tensors = {k: local(v) for k, v in tensors.items()}   # FSDP: this rank's shard of each moment
    atomic_save_safetensors(tensors, tmp / f"{name}.safetensors")
    (tmp / f"{name}.json").write_text(json.dumps(skeleton))


def finish_checkpoint(tmp: Path, epoch: int, policy, ema=None, extra: dict = None,
                      keep_last: int = 0, algorithm_state: dict = None) -> Path:
    """Write weights, EMA, RNG, the algorithm's state (trackers) and state.json into `tmp`, rename
    it to step_<epoch>, prune old ones."""
    alg_tensors, alg_skeleton = flatten_tree(algorithm_state or {})
    atomic_save_safetensors(alg_tensors, tmp / "algorithm.safetensors")
    (tmp / "algorithm.json").write_text(json.dumps(alg_skeleton))
    atomic_save_safetensors(policy.trainable_state_dict(), tmp / "trainable.safetensors")
    if ema is not None:
        atomic_save_safetensors(ema.state_dict(), tmp / "ema.safetensors")
    rng_tensors, rng_meta = rng_state()
    atomic_save_safetensors(rng_tensors, tmp / "rng.safetensors")
    with ema.applied() if ema is not None else contextlib.nullcontext():
        policy.export(tmp)   # what users load for inference: the EMA weights when there are some
    _test_pause(epoch)
    files = seal(tmp)
    (tmp / "state.json").write_text(json.dumps({"epoch": epoch, "rng": rng_meta, **(extra or {}),
                                                "files": files}))
    _fsync(tmp / "state.json")
    final = tmp.parent / f"step_{epoch}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(tmp.parent)
    if keep_last > 0:   # only older ones: after --resume-from, newer (abandoned) ones are overwritten
        older = [p for e, p in list_checkpoints(tmp.parent.parent) if e < epoch]
        for old in older[:max(0, len(older) - (keep_last - 1))]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, policy, optimizer, ema=None, shard: Optional[int] = None,
                    num_shards: int = 1) -> dict:
    """Restore weights, optimizer (this rank's `shard` if sharded), EMA and RNG from `path`; returns
    state.json's dict. Raises CheckpointError saying which file is missing or unreadable."""
    from safetensors.torch import load_file
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist")
    opt_name = "optimizer" if shard is None else f"optimizer.rank{shard}"
    missing = [f for f in STATE_FILES + (f"{opt_name}.safetensors", f"{opt_name}.json")
               if not (path / f).exists()]
    if ema is not None and not (path / "ema.safetensors").exists():
        missing.append("ema.safetensors")
    if missing:
        hint = (" (optimizer shards are per process: resume with the same number of processes and "
                "the same launcher)" if any(m.startswith("optimizer") for m in missing) else "")
        raise CheckpointError(f"checkpoint {path} is incomplete: missing {missing}{hint}; delete it to "
                              f"resume from the previous one")
    try:
        state = json.loads((path / "state.json").read_text())
    except Exception as e:
        raise CheckpointError(f"checkpoint {path}: state.json is corrupt ({type(e).__name__}: {e}); resume "
                              f"from an older one with --resume-from step_N") from None
    verify_checkpoint(path, state.get("files"))
    try:
        weights = load_file(path / "trainable.safetensors")
        opt = merge_tree(json.loads((path / f"{opt_name}.json").read_text()),
                         load_file(path / f"{opt_name}.safetensors"), optimizer.state_dict())
        rng = load_file(path / "rng.safetensors")
        state["algorithm"] = merge_tree(json.loads((path / "algorithm.json").read_text()),
                                        load_file(path / "algorithm.safetensors"))
        ema_state = load_file(path / "ema.safetensors") if ema is not None else None
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is corrupt ({type(e).__name__}: {e}); resume from an "
                              f"older one with --resume-from step_N") from None
    try:
        policy.load_trainable_state_dict(weights)
        from flowrl.fsdp import is_sharded, shard_optimizer_state
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if shard is not None and any(is_sharded(p) for p in params):   # FSDP: moments back to DTensors
            optimizer.load_state_dict(shard_optimizer_state(opt, params))
        else:   # DeepSpeed's ZeRO optimizer takes one state dict per data-parallel rank, reads its own
            optimizer.load_state_dict(opt if shard is None else [opt] * num_shards)
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit this model/optimizer: {e}") from None
    if ema is not None:
        ema.load_state_dict(ema_state)
    set_rng_state(rng, state["rng"])
    return state

