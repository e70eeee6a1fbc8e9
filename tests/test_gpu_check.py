"""scripts/gpu_check.py: refuses clearly without CUDA; its --tiny dry run trains one epoch of the
same code path (random-weight pipeline registered as a policy, the one trainer, the overhead ratio)."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.py"


def load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_without_cuda_it_says_so(capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs the real check")
    assert load().main([]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_tiny_dry_run_trains_one_epoch(capsys):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert load().main(["--tiny", "--models", "flux", "--set", "sample.num_steps=2"]) == 0
    finally:
        torch.set_num_threads(n)
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])[0]
    assert result["model"] == "flux" and result["images_per_epoch"] == 8 and result["trainable_params"] > 0
    assert result["images_per_s"] > 0 and result["overhead_ratio"] > 0
    assert "memory estimate (transformer" in out
