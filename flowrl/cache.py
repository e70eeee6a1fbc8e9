"""A small cache of trained artefacts (base models, reward classifiers) as safetensors files."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Dict

import torch


def cache_dir() -> Path:
    """$FLOWRL_CACHE, else ~/.cache/flowrl."""
    return Path(os.environ.get("FLOWRL_CACHE", Path.home() / ".cache" / "flowrl"))


def atomic_save_safetensors(state: Dict[str, torch.Tensor], path: Path, metadata: dict = None) -> None:
    """Write to a temp file in the same folder, then rename: readers never see half a file."""
    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def cached_state_dict(name: str, build: Callable[[], Dict[str, torch.Tensor]],
                      root: Path = None) -> Dict[str, torch.Tensor]:
    """Load `root/name.safetensors`, or call `build()` and cache its result. `name` must encode every
    setting that changes the artefact (it is the cache key)."""
    from safetensors.torch import load_file
    path = Path(root or cache_dir()) / f"{name}.safetensors"
    if path.exists():
        try:
            return load_file(path)
        except Exception:  # a corrupt cache entry is rebuilt, never trusted
            path.unlink()
    state = build()
    atomic_save_safetensors(state, path)
    return state
