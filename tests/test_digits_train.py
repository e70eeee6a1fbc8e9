"""End to end: the digits experiments (a class-conditional 8x8 flow that flowrl trained itself, the
digit classifier reward) raise the eval reward through the one trainer, for each method."""
import json

import pytest
import torch

from flowrl.config import load_config
from flowrl.trainer import Trainer

SHORT = ["num_epochs=12", "eval.every=0", "checkpoint.every=0", "eval.num_samples=100",
         "eval.batch_size=100", "logging.progress=False"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("spec", ["grpo.py:digits", "ddpo.py:digits", "orw.py:digits"])
def test_digits_eval_reward_rises(tmp_path, spec):
    trainer = Trainer(load_config(spec, SHORT), tmp_path / "run")
    before = {k: v.clone() for k, v in trainer.policy.net.state_dict().items()}
    summary = trainer.train()
    assert any(not torch.equal(before[k], v) for k, v in trainer.policy.net.state_dict().items())
    assert summary["reward_after"] > summary["reward_before"] + 0.05, summary
    with trainer.policy.reference():        # the frozen base did not move
        assert all(torch.equal(before[k], v) for k, v in trainer.policy.ref.state_dict().items())
    rows = (tmp_path / "run" / "eval" / "final" / "prompts.jsonl").read_text().splitlines()
    assert len(rows) == 100 and json.loads(rows[7])["prompt"] == "7"
