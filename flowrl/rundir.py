"""The run directory: config.yaml, metrics.jsonl, summary.json, eval/, checkpoints/, .lock.

One writer per run dir: the main process holds an exclusive flock on RUN_DIR/.lock for the whole run
(the OS drops it when the process dies, so kill -9 leaves no stale lock); a second `train` or
`--resume` on the same dir is refused naming the holder's PID."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

from flowrl.cache import _umask_mode
from flowrl.config import ConfigError, resume_conflicts


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, _umask_mode())
    os.replace(tmp, path)


LOCK_FILE = ".lock"
RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "eval", "checkpoints", "wandb")


def default_run_dir(name: str, root: Path = Path("runs")) -> Path:
    """runs/NAME-YYYYmmdd-HHMMSS-micro-pid: two launches never share a default run dir."""
    import datetime
    return Path(root) / f"{name}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S-%f')}-{os.getpid()}"


class RunLock:
    """Exclusive flock on RUN_DIR/.lock (creating RUN_DIR if needed; `created` says so). Raises
    ConfigError naming the PID of the process that holds it."""

    def __init__(self, run_dir: Path):
        import fcntl
        run_dir = Path(run_dir)
        if run_dir.exists() and not run_dir.is_dir():
            raise ConfigError(f"--output-dir {run_dir} is a file; give a folder")
        self.created, self.wrote, self.run_dir = not run_dir.exists(), False, run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / LOCK_FILE
        self.fd: Optional[int] = os.open(self.path, os.O_RDWR | os.O_CREAT, _umask_mode())
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            self.fd = None
            raise ConfigError(f"{run_dir} is in use by another flowrl process (PID {holder}); wait for "
                              f"it to end or choose another --output-dir") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self, discard: bool = False) -> None:
        """Drop the lock. `discard` (a new run that failed): if no checkpoint was written, first delete
        the run's files (`wrote`: this run wrote them) and the run dir if this run `created` it."""
        if discard and (self.wrote or self.created) and not has_checkpoint(self.run_dir):
            clear_run(self.run_dir, remove_dir=self.created)
        if self.fd is not None:
            os.close(self.fd)   # closing drops the flock; the file stays (unlinking it would race)
            self.fd = None


def has_checkpoint(run_dir: Path) -> bool:
    from flowrl.checkpoint import list_checkpoints
    return bool(list_checkpoints(run_dir))


def clear_run(run_dir: Path, remove_dir: bool = False) -> None:
    """Delete what a run wrote (config, metrics, evals, checkpoints, wandb); the folder too if
    `remove_dir` (a folder this run created). The lock file stays while it is held."""
    import shutil
    run_dir = Path(run_dir)
    for name in RUN_FILES:
        p = run_dir / name
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()
    if remove_dir:
        shutil.rmtree(run_dir, ignore_errors=True)


def check_run_dir(run_dir: Path, config, resume: bool) -> bool:
    """New run: the folder must not hold a run already. Resume: it must, with the same config
    (up to keys in flowrl.config.RESUMABLE_CHANGES). A run that stopped before its first checkpoint
    (config.yaml but no checkpoint) is started over in place, by a new run or --resume (same config).
    -> True if the run must start over (its old files are cleared later, by write_run_config).
    Raises ConfigError; writes nothing."""
    import yaml
    run_dir = Path(run_dir)
    saved = run_dir / "config.yaml"
    restart = saved.exists() and not has_checkpoint(run_dir)
    if restart and not resume:
        return True
    if resume:
        if not saved.exists():
            raise ConfigError(f"--resume: {run_dir} holds no run (no config.yaml); drop --resume to "
                              f"start a new run there, or pass the run's --output-dir")
        conflicts = resume_conflicts(yaml.safe_load(saved.read_text()), config.to_dict())
        if conflicts:
            raise ConfigError(f"--resume: {run_dir} belongs to another config; differing keys:\n  "
                              + "\n  ".join(conflicts) + "\nUse the run's own --config/--set, or "
                              "another --output-dir")
        return restart
    if saved.exists():
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it or choose "
                          f"another --output-dir")
    return False


def write_run_config(run_dir: Path, config, restart: bool = False) -> None:
    """Write the run's config.yaml (after the models loaded); `restart`: first clear the files of
    the run that stopped before its first checkpoint."""
    import yaml
    if restart:
        clear_run(run_dir)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(run_dir) / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=True))


class MetricsLog:
    """Appends one JSON line per epoch to metrics.jsonl (main process only)."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.path, self.enabled = Path(run_dir) / "metrics.jsonl", enabled

    def truncate_after(self, epoch: int) -> None:
        """On resume: drop lines written after the checkpoint, so the log matches an unbroken run."""
        if self.enabled and self.path.exists():   # a cut-off last line (crash mid-append) is dropped
            keep = [r for r in read_metrics(self.path.parent) if r.get("epoch", 0) <= epoch]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))

    def write(self, row: Dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")

    def read(self) -> List[Dict]:
        return read_metrics(self.path.parent)


def read_metrics(run_dir: Path) -> List[Dict]:
    """metrics.jsonl's rows; see flowrl.report.read_jsonl for a cut-off last line."""
    from flowrl.report import read_jsonl
    return read_jsonl(Path(run_dir) / "metrics.jsonl")


def check_output_dir(run_dir: Path) -> None:
    """--output-dir must be a folder or not exist yet (nor any file along its path): ConfigError."""
    run_dir = Path(run_dir)
    for p in [run_dir, *run_dir.parents]:
        if p.exists() and not p.is_dir():
            what = "--output-dir" if p == run_dir else f"--output-dir {run_dir}: its parent"
            raise ConfigError(f"{what} {p} is a file, not a folder; pass a folder path (a new one for a "
                              f"new run)")
