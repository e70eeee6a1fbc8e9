"""Checkpoint integrity: a SHA-256 manifest verified on load (a flipped byte fails naming the file),
fsync before the rename, --resume-from an older checkpoint, unverified loading of old checkpoints, and
atomic eval .npz files."""
import hashlib
import json
import os

import numpy as np
import pytest
import torch
from conftest import TINY_MOONS
from typer.testing import CliRunner

from flowrl.batch import Batch
from flowrl.checkpoint import CheckpointError, seal
from flowrl.cli import app
from flowrl.evaluation import save_eval
from flowrl.runs import build_policy, load_policy_weights
from flowrl.trainer import Trainer


def rows(run_dir):
    return [{k: v for k, v in json.loads(l).items() if not k.startswith(("time_", "cpu_"))}
            for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def flip_byte(path, at=-5):
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_manifest_hashes_every_file_and_seal_fsyncs_files_and_folder(tmp_path, monkeypatch):
    (tmp_path / "a.bin").write_bytes(b"abc")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.json").write_text("{}")
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real(fd))
    files = seal(tmp_path)
    assert files == {"a.bin": hashlib.sha256(b"abc").hexdigest(), "sub/b.json": hashlib.sha256(b"{}").hexdigest()}
    assert sorted(synced) == sorted([str(tmp_path / "a.bin"), str(tmp_path / "sub" / "b.json"), str(tmp_path)])


def test_a_flipped_byte_fails_naming_the_file_and_resume_from_an_older_one_is_exact(tmp_path, tiny_moons):
    cfg = tiny_moons("num_epochs=3", "checkpoint.every=1", "checkpoint.keep_last=0")
    run = tmp_path / "run"
    Trainer(cfg, run).train()
    full = rows(run)
    state = json.loads((run / "checkpoints" / "step_3" / "state.json").read_text())
    names = {p.relative_to(run / "checkpoints" / "step_3").as_posix()
             for p in (run / "checkpoints" / "step_3").rglob("*") if p.is_file()}
    assert set(state["files"]) == names - {"state.json"}
    flip_byte(run / "checkpoints" / "step_3" / "optimizer.safetensors")
    with pytest.raises(CheckpointError, match=r"step_3/optimizer.safetensors does not match its SHA-256"):
        Trainer(cfg, run, resume=True)
    sets = TINY_MOONS + ["num_epochs=3", "checkpoint.every=1", "checkpoint.keep_last=0"]
    result = CliRunner().invoke(app, ["train", "--config", "grpo.py:moons", "--output-dir", str(run), "--resume",
                                      *[a for o in sets for a in ("--set", o)]])
    assert result.exit_code == 2 and "optimizer.safetensors" in result.output
    assert "Traceback" not in result.output and result.output.count("error:") == 1
    with pytest.raises(CheckpointError, match="optimizer.safetensors"):    # eval-diversity / visualize too
        load_policy_weights(build_policy(cfg, torch.device("cpu")), run / "checkpoints" / "step_3")
    with pytest.raises(CheckpointError, match=r"no checkpoint step_7 .* \['step_1', 'step_2', 'step_3'\]"):
        Trainer(cfg, run, resume_from="step_7")
    resumed = Trainer(cfg, run, resume_from="step_1")
    assert resumed.start_epoch == 1
    resumed.train()
    assert rows(run) == full
    Trainer(cfg, run, resume=True)      # step_3 was written again, and verifies


def test_checkpoints_without_hashes_still_load_unverified(tmp_path, tiny_moons, capsys):
    cfg = tiny_moons("num_epochs=1")
    Trainer(cfg, tmp_path / "run").train()
    path = tmp_path / "run" / "checkpoints" / "step_1" / "state.json"
    state = json.loads(path.read_text())
    del state["files"]
    path.write_text(json.dumps(state))
    flip_byte(tmp_path / "run" / "checkpoints" / "step_1" / "rng.safetensors", at=-1)   # not checked
    capsys.readouterr()
    assert Trainer(tiny_moons("num_epochs=2"), tmp_path / "run", resume=True).start_epoch == 1
    assert "predates checkpoint checksums: its files are not verified" in capsys.readouterr().out


def test_eval_npz_is_written_atomically(tmp_path, monkeypatch):
    gathered = {"samples": torch.ones(4, 2), "rewards": torch.zeros(4)}
    local = Batch({"samples": torch.ones(4, 2)})
    save_eval(tmp_path, "final", local, gathered, None, True)
    before = (tmp_path / "eval" / "final.npz").read_bytes()

    def dying_savez(file, **arrays):      # a full disk / a kill in the middle of the write
        (file.write if hasattr(file, "write") else open(file, "wb").write)(b"PK\x03\x04half")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(np, "savez", dying_savez)
    with pytest.raises(OSError):
        save_eval(tmp_path, "final", local, {**gathered, "samples": torch.zeros(4, 2)}, None, True)
    assert (tmp_path / "eval" / "final.npz").read_bytes() == before
    assert [p.name for p in (tmp_path / "eval").iterdir()] == ["final.npz"]
