"""`import flowrl` chooses a passive OpenMP wait policy unless the user set one (read when torch loads)."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _policy_after_import(env_value):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(REPO)
    if env_value is not None:
        env["OMP_WAIT_POLICY"] = env_value
    code = "import flowrl, os, sys; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.split()


def test_passive_by_default_before_torch_is_loaded():
    assert _policy_after_import(None) == ["PASSIVE", "False"]


def test_the_users_choice_wins():
    assert _policy_after_import("ACTIVE")[0] == "ACTIVE"
