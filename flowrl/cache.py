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


def _umask_mode() -> int:
    """0o666 minus the process umask: what a plain open() would have given the file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_save_safetensors(state: Dict[str, torch.Tensor], path: Path, metadata: dict = None) -> None:
    """Write to a temp file in the same folder, then rename: readers never see half a file."""
    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, tmp, metadata=metadata)
        os.chmod(tmp, _umask_mode())
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


def build_folder_atomically(target: Path, build: Callable[[Path], None],
                            is_current: Callable[[Path], bool]) -> Path:
    """Return `target`, (re)building it with build(tmp) unless is_current(target). The build goes to a
    temporary sibling folder renamed into place (a stale one is moved aside first), so other
    processes never see half a folder; losing a race to a concurrent build of the same thing is fine."""
    import shutil
    import time

    target = Path(target)
    if is_current(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.build."))
    old = target.parent / f".{target.name}.old.{os.getpid()}.{time.time_ns()}"
    try:
        build(tmp)
        if target.exists():
            os.rename(target, old)
        try:
            os.rename(tmp, target)
        except OSError:
            if not is_current(target):   # not a concurrent build that got there first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return target


def resolve_local_model(path: str, option: str) -> Path:
    """A model location -> a local path: an existing file/folder, or a hub id ("org/name") that is
    already in the LOCAL Hugging Face cache (nothing is downloaded). Raises FileNotFoundError
    naming the config `option` to set."""
    if not path:
        raise FileNotFoundError(f"no model path given: set {option}=/path/to/model (a local folder or a "
                                f"hub id in the local Hugging Face cache; models are never downloaded)")
    text = str(path)
    p = Path(text).expanduser()
    if p.exists():
        return p
    if not p.is_absolute() and text.count("/") == 1 and not text.startswith("."):
        from huggingface_hub import snapshot_download
        from huggingface_hub.constants import HF_HUB_CACHE
        try:
            return Path(snapshot_download(text, local_files_only=True))
        except Exception:
            raise FileNotFoundError(
                f"{option}={text!r} is neither a local path nor in the local Hugging Face cache "
                f"({HF_HUB_CACHE}); flowrl never downloads models. Download it once (`hf download {text}`)"
                f" or set {option} to a local folder") from None
    raise FileNotFoundError(f"{option}={text!r} does not exist; set {option} to a local folder or file "
                            f"(models are never downloaded)")
