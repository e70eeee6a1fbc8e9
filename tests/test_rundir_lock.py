"""One writer per run dir (an flock the OS drops on kill -9), unique default names, and run dirs that a
run killed or failed before its first checkpoint leaves restartable (or, on an error, empty)."""
import json
import os
import signal
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from flowrl.cli import app
from flowrl.config import ConfigError
from flowrl.registry import REWARDS
from flowrl.rundir import RunLock, default_run_dir
from flowrl.trainer import Trainer

HOLD = "import sys, time; from flowrl.rundir import RunLock; RunLock(sys.argv[1]); print('ready', flush=True); time.sleep(60)"


def rows(run_dir):
    return [{k: v for k, v in json.loads(l).items() if not k.startswith(("time_", "cpu_"))}
            for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_second_writer_is_refused_naming_the_pid_and_kill_9_leaves_no_stale_lock(tmp_path, tiny_moons):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        for resume in (False, True):
            with pytest.raises(ConfigError, match=rf"in use by another flowrl process \(PID {holder.pid}\)"):
                Trainer(tiny_moons("num_epochs=1"), run, resume=resume)
        result = CliRunner().invoke(app, ["train", "--config", "grpo.py:moons", "--output-dir", str(run)])
        assert result.exit_code == 2 and f"PID {holder.pid}" in result.output
        assert len(result.output.strip().splitlines()) == 1
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    Trainer(tiny_moons("num_epochs=1"), run).train()      # the dead holder's lock is gone
    assert len(rows(run)) == 2


def test_the_lock_is_held_for_the_whole_run_and_released_after(tmp_path, tiny_moons):
    trainer = Trainer(tiny_moons("num_epochs=1"), tmp_path / "run")
    with pytest.raises(ConfigError, match=f"PID {os.getpid()}"):
        RunLock(tmp_path / "run")
    trainer.train()
    RunLock(tmp_path / "run").release()


def test_default_run_dirs_are_unique():
    names = {default_run_dir("moons").name for _ in range(50)}
    assert len(names) == 50 and all(n.startswith("moons-") and n.endswith(f"-{os.getpid()}") for n in names)


def test_a_run_killed_before_its_first_checkpoint_starts_over_in_place(tmp_path, tiny_moons, monkeypatch, capsys):
    cfg = tiny_moons("num_epochs=2", "checkpoint.every=0")
    Trainer(cfg, tmp_path / "full").train()
    real_epoch = Trainer.epoch

    def dying_epoch(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt("killed")
        return real_epoch(self, epoch)
    monkeypatch.setattr(Trainer, "epoch", dying_epoch)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, tmp_path / "run").train()
    monkeypatch.setattr(Trainer, "epoch", real_epoch)
    assert (tmp_path / "run" / "config.yaml").exists() and len(rows(tmp_path / "run")) == 2
    for resume in (True, False):      # --resume and a fresh start both start over, saying so
        capsys.readouterr()
        Trainer(cfg, tmp_path / "run", resume=resume).train()
        assert "stopped before its first checkpoint: starting over in place" in capsys.readouterr().out
        assert rows(tmp_path / "run") == rows(tmp_path / "full")
        (tmp_path / "run" / "checkpoints" / "step_2" / "state.json").unlink()
        os.rename(tmp_path / "run" / "checkpoints" / "step_2", tmp_path / "run" / "checkpoints" / ".step_2.tmp")


@REWARDS.register("test_fails_on_eval", domain="2d")
def _failing_reward(device):
    def fn(samples, prompts, metadata):
        raise RuntimeError("reward server down")
    return fn


def test_a_start_that_fails_after_the_models_load_leaves_nothing_behind(tmp_path, tiny_moons):
    cfg = tiny_moons("num_epochs=1")
    with cfg.unlocked():
        cfg.reward.weights = {"test_fails_on_eval": 1.0}
    trainer = Trainer(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "config.yaml").exists()
    with pytest.raises(RuntimeError, match="reward server down"):
        trainer.train()
    assert not (tmp_path / "run").exists()
    (tmp_path / "kept").mkdir()                      # a folder that existed stays, emptied of the run
    with pytest.raises(RuntimeError):
        Trainer(cfg, tmp_path / "kept").train()
    assert [p.name for p in (tmp_path / "kept").iterdir()] == [".lock"]
