"""The run directory: config.yaml, metrics.jsonl, summary.json, eval/, checkpoints/."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Dict, List

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


def check_run_dir(run_dir: Path, config, resume: bool) -> None:
    """New run: the folder must not hold a run already. Resume: it must, with the same config
    (up to keys in flowrl.config.RESUMABLE_CHANGES). Raises ConfigError; writes nothing."""
    import yaml
    run_dir = Path(run_dir)
    saved = run_dir / "config.yaml"
    if resume:
        if not saved.exists():
            raise ConfigError(f"--resume: {run_dir} holds no run (no config.yaml); drop --resume to "
                              f"start a new run there, or pass the run's --output-dir")
        conflicts = resume_conflicts(yaml.safe_load(saved.read_text()), config.to_dict())
        if conflicts:
            raise ConfigError(f"--resume: {run_dir} belongs to another config; differing keys:\n  "
                              + "\n  ".join(conflicts) + "\nUse the run's own --config/--set, or "
                              "another --output-dir")
    elif saved.exists():
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it or choose "
                          f"another --output-dir")


def write_run_config(run_dir: Path, config) -> None:
    """Create the run dir with its config.yaml (after the models loaded: a failed start leaves none)."""
    import yaml
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
