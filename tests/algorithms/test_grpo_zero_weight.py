"""GRPO's loss skips zero-weight rows (zero-spread groups) without changing the loss or its gradient."""
from contextlib import contextmanager

import pytest
import torch

from flowrl.algorithms.grpo import clipped_step_losses, drop_zero_weight_rows, reference_kl, step_log_prob
from flowrl.algorithms.losses import clipped_surrogate
from flowrl.batch import Batch
from flowrl.sampling.rollout import RolloutSettings


class LinearFlow:
    """v = x @ W (the reference: W0, fixed), enough to re-score SDE transitions."""

    def __init__(self):
        self.w = torch.nn.Parameter(torch.tensor([[0.3, -0.2], [0.1, 0.4]]))
        self.w0, self.off = torch.tensor([[0.2, 0.0], [0.0, 0.2]]), False

    def velocity(self, x, sigma, cond, guidance=1.0):
        return x @ (self.w0 if self.off else self.w)

    @contextmanager
    def reference(self):
        self.off = True
        yield
        self.off = False


ST = RolloutSettings(torch.tensor([1.0, 0.6, 0.3]), torch.tensor([True, True]), torch.tensor([True, True]),
                     0.7, "sde", 1.0)


def _batch(weights):
    g = torch.Generator().manual_seed(0)
    n = len(weights)
    return Batch({"latents": torch.randn(n, 3, 2, generator=g), "log_probs": torch.randn(n, 2, generator=g) * 0.1 - 2,
                  "advantages": torch.tensor([1.0, -1.0, 0.5, 2.0])[:n], "weights": torch.tensor(weights)})


def test_drop_zero_weight_rows_by_hand():
    kept, frac, idx = drop_zero_weight_rows(_batch([1.0, 0.0, 1.0, 0.0]))
    assert frac == 0.5 and kept["advantages"].tolist() == [1.0, 0.5] and idx.tolist() == [0, 2]
    one, frac, idx = drop_zero_weight_rows(_batch([0.0, 0.0, 0.0, 0.0]))
    assert len(one) == 1 and frac == 0.25 and idx.tolist() == [0]
    full = _batch([1.0, 1.0, 1.0, 1.0])
    assert drop_zero_weight_rows(full) == (full, 1.0, None)


def _grad(losses, policy):
    policy.w.grad = None
    total = sum(losses)
    total.backward()
    return float(total), policy.w.grad.clone()


@pytest.mark.parametrize("guard", [False, True])
@pytest.mark.parametrize("weights", [[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
def test_same_loss_and_gradient_as_the_full_weighted_batch(weights, guard):
    from flowrl.algorithms.grpo_guard import guard_log_ratio
    policy, mb, beta, clip = LinearFlow(), _batch(weights), 0.3, 0.05
    old_means = torch.randn(4, 2, 2, generator=torch.Generator().manual_seed(1)) if guard else None
    full = []          # the definition: weighted mean over ALL rows, every row re-scored
    for t, j in enumerate(ST.train_steps):
        out = step_log_prob(policy, mb, j, ST)
        lr = (guard_log_ratio(out.log_prob, mb["log_probs"][:, j], out.mean, old_means[:, t], out.std) if guard
              else out.log_prob - mb["log_probs"][:, j])
        pg, _, _ = clipped_surrogate(lr, torch.zeros_like(lr), mb["advantages"], clip, mb["weights"])
        full.append(pg + beta * (reference_kl(policy, mb, j, ST, out) * mb["weights"]).mean())
    want_loss, want_grad = _grad(full, policy)
    got_loss, got_grad = _grad([l for l, _ in clipped_step_losses(policy, mb, ST, clip, beta, old_means)],
                               policy)
    assert got_loss == pytest.approx(want_loss, abs=1e-7)
    assert torch.allclose(got_grad, want_grad, atol=1e-7)
    assert (want_grad.abs().sum() > 0) == any(w > 0 for w in weights)
