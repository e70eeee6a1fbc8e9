"""Shared by the algorithm tests: a linear policy with the protocol's methods the losses use, and
a short moons run through the real trainer that reports whether the parameters moved."""
import contextlib
from typing import List

import torch

MOONS_FAST = ["model.base_iters=300", "sample.batch_size=64", "sample.num_batches_per_epoch=2",
              "train.batch_size=64", "eval.num_samples=200", "eval.batch_size=200",
              "sample.eval_num_steps=10", "sample.num_steps=6", "logging.progress=False",
              "eval.every=0", "checkpoint.every=0"]


class LinearPolicy:
    """v(x, sigma) = (W x + b) * (sigma if scale_by_sigma else 1); the reference is the policy."""
    sample_shape = (2,)

    def __init__(self, scale_by_sigma: bool = False):
        torch.manual_seed(0)
        self.net = torch.nn.Linear(2, 2)
        self.model, self.scale = self.net, scale_by_sigma

    def sigmas(self, n):
        return torch.linspace(1, 0, n + 1)

    def velocity(self, x, sigma, cond=None, guidance=None):
        v = self.model(x)
        return v * sigma[:, None] if self.scale else v

    def reference(self):
        return contextlib.nullcontext()


def moons_run(config: str, overrides: List[str], run_dir):
    """Train `config` with the fast moons overrides. -> (summary, whether any parameter changed)."""
    from flowrl.config import load_config
    from flowrl.trainer import Trainer
    trainer = Trainer(load_config(config, MOONS_FAST + overrides), run_dir)
    before = [p.detach().clone() for p in trainer.params]
    summary = trainer.train()
    return summary, any(not torch.equal(a, b) for a, b in zip(before, trainer.params))
