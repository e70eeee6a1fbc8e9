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


TINY_MOONS = ["model.hidden=16", "model.depth=1", "model.base_iters=30", "model.base_batch=64",
              "sample.num_steps=4", "sample.eval_num_steps=4", "sample.batch_size=16",
              "sample.num_batches_per_epoch=2", "sample.group_size=32", "train.batch_size=16",
              "eval.num_samples=32", "eval.batch_size=32", "eval.every=0", "eval.diversity=False",
              "logging.progress=False"]


@pytest.fixture
def tiny_moons():
    """tiny_moons(*overrides) -> a locked grpo.py:moons config that trains an epoch in milliseconds."""
    from flowrl.config import load_config
    return lambda *extra: load_config("grpo.py:moons", TINY_MOONS + list(extra))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors gain nothing from intra-op threads (and on a busy 2-core machine OpenMP barriers
    make 2 threads far slower than 1): `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

