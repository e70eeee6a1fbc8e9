import os

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long test covered by a benchmark script; run with FLOWRL_SLOW=1")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("FLOWRL_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow (covered by a scripts/bench_*.py benchmark); FLOWRL_SLOW=1 runs it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
