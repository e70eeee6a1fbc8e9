"""Every bad input of tests/bad_inputs.py ends in ONE line `error: ...` on stderr naming the file /
line / key at fault, exit code 2, no traceback (or, for a log line cut off by a crash, a warning and
success); an unexpected internal error keeps its traceback. The CLI runs in-process (CliRunner);
a few cases also run as real processes."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bad_inputs import CASES, invoke, make_tiny_run, run_case, tiny_args

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A finished tiny moons run (built on first use) and a private model cache."""
    root = tmp_path_factory.mktemp("tiny")
    old = os.environ.get("FLOWRL_CACHE")
    os.environ["FLOWRL_CACHE"] = str(root / "cache")
    yield lambda: make_tiny_run(root)
    if old is None:
        os.environ.pop("FLOWRL_CACHE")
    else:
        os.environ["FLOWRL_CACHE"] = old


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_ends_in_one_clear_line(case, tmp_path, tiny):
    ok, why, line = run_case(case, tmp_path / "case", tiny)
    assert ok, why


def test_an_internal_error_keeps_its_traceback(tmp_path, monkeypatch):
    """A bug (here: a TypeError raised inside the trainer) is not dressed up as a user error."""
    import flowrl.trainer

    def broken(*args, **kwargs):
        raise TypeError("a bug")
    monkeypatch.setattr(flowrl.trainer.Trainer, "__init__", broken)
    result = invoke(["train", "--config", "grpo.py:moons", *tiny_args(), "--output-dir", str(tmp_path / "r")])
    assert result.exit_code == 1 and isinstance(result.exception, TypeError)


@pytest.mark.parametrize("argv, pattern", [
    (["train", "--config", "grpo.py:moons", "--set", "sample.num_steps=0"], "sample.num_steps=0"),
    (["eval-diversity", "--samples", "/nonexistent.npz"], "does not exist"),
])
def test_real_process_prints_one_line_and_exits_2(argv, pattern, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "flowrl", *argv], capture_output=True, text=True, cwd=tmp_path,
                         env=env, timeout=120)
    err = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(err) == 1 and err[0].startswith("error: ") and pattern in err[0], out.stderr
    assert "Traceback" not in out.stdout + out.stderr
