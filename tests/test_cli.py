import os
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from flowrl.cli import app

REPO = Path(__file__).resolve().parent.parent


def test_help_is_fast_and_imports_no_torch():
    code = "import sys, flowrl.cli; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
    t = time.time()
    out = subprocess.run([sys.executable, "-m", "flowrl", "--help"], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0 and "train" in out.stdout
    assert time.time() - t < 5  # typically ~0.2 s; generous for a loaded CI machine


def test_python_flowrl_from_repo_root_runs_the_package():
    out = subprocess.run([sys.executable, "flowrl", "train", "--help"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "--config" in out.stdout


def test_bad_override_exits_2_with_the_fix(tmp_path):
    res = CliRunner().invoke(app, ["train", "--config", "grpo.py:moons", "--set", "train.lrr=1",
                                   "--output-dir", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert "Did you mean" in res.output
    assert not (tmp_path / "r").exists()


def test_resume_without_output_dir_is_refused():
    res = CliRunner().invoke(app, ["train", "--config", "grpo.py:moons", "--resume"])
    assert res.exit_code == 2 and "--output-dir" in res.output
