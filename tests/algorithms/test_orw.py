import math
from contextlib import contextmanager

import pytest
import torch

from flowrl.algorithms.orw import ORWCFMW2, orw_cfm_w2_loss, ot_pair, reward_weights
from flowrl.batch import Batch


def test_unit_weights_and_no_w2_is_plain_cfm():
    g = torch.Generator().manual_seed(0)
    v, u, ref = (torch.randn(6, 3, 4, 4, generator=g) for _ in range(3))
    loss, fm, w2 = orw_cfm_w2_loss(v, u, ref, torch.ones(6), alpha=0.0)
    assert loss.item() == pytest.approx(((v - u) ** 2).mean().item(), rel=1e-6)


def test_w2_term_vanishes_when_policy_equals_reference():
    v, u = torch.randn(4, 2), torch.randn(4, 2)
    loss, fm, w2 = orw_cfm_w2_loss(v, u, v.clone(), torch.ones(4), alpha=3.0)
    assert torch.equal(w2, torch.zeros(4))
    assert loss.item() == pytest.approx(fm.mean().item())


def test_loss_hand_computed_and_w2_gradient_only_through_policy():
    v = torch.tensor([[1.0, 1.0]], requires_grad=True)
    u, ref = torch.zeros(1, 2), torch.tensor([[3.0, 1.0]], requires_grad=True)
    loss, _, _ = orw_cfm_w2_loss(v, u, ref, torch.tensor([2.0]), alpha=0.5)
    assert loss.item() == pytest.approx(2 * 1.0 + 0.5 * (4 + 0) / 2)
    loss.backward()
    assert ref.grad is None                       # v_ref is detached (stop-gradient)


def test_reward_weights_exp_and_normalised():
    r = torch.tensor([0.0, 1.0])
    assert reward_weights(r, 0.5, False).tolist() == pytest.approx([1.0, math.exp(0.5)])
    w = reward_weights(r, 0.5, True)
    assert w.mean().item() == pytest.approx(1.0) and w[1] / w[0] == pytest.approx(math.exp(0.5))


def test_ot_pairing_is_optimal_on_a_permuted_copy():
    x1 = torch.randn(7, 3)
    perm = torch.randperm(7)
    assert torch.equal(ot_pair(x1, x1[perm]), x1)


@pytest.mark.parametrize("kw,msg", [({"w2_coefficient": -1.0}, "alpha"), ({"temperature": 0.0}, "tau")])
def test_bad_options_are_refused(kw, msg):
    with pytest.raises(ValueError, match=msg):
        ORWCFMW2(**kw)


def test_ot_pairing_stays_within_each_prompt():
    x1 = torch.tensor([[0.0], [10.0], [0.1], [10.1]])
    keys = torch.tensor([0, 0, 1, 1])
    x0 = torch.tensor([[10.0], [0.0], [0.0], [10.0]])
    out = ot_pair(x1, x0, keys)
    assert out.flatten().tolist() == [0.0, 10.0, 0.0, 10.0]
    assert sorted(out[:2].flatten().tolist()) == sorted(x0[:2].flatten().tolist())   # a permutation per prompt


class _Recorder:
    """v = x (the reference: v = 0); records the (x_sigma, sigma) it is called at."""

    def __init__(self):
        self.calls, self._ref = [], False

    def velocity(self, x, sigma, cond, guidance=None):
        self.calls.append((x.clone(), sigma.clone()))
        return torch.zeros_like(x) if self._ref else x

    @contextmanager
    def reference(self):
        self._ref = True
        try:
            yield self
        finally:
            self._ref = False


def test_loss_terms_interpolate_from_samples_to_noise():
    # x1 = the stored samples (latents[:, -1]); x0 and sigma are the algorithm's draws in this order:
    # x0 = randn(x1.shape), sigma = rand(B) from its generator (here seeded 7, no OT pairing).
    x1 = torch.tensor([[3.0, -1.0], [0.5, 2.0]])
    batch = Batch({"latents": torch.stack([torch.zeros(2, 2), x1], dim=1), "weights": torch.tensor([1.0, 3.0]),
                   "prompt_ids": torch.zeros(2, dtype=torch.long)})
    algo = ORWCFMW2(w2_coefficient=0.5, ot_pairing=False)
    algo._generator.manual_seed(7)
    g = torch.Generator().manual_seed(7)
    x0, sigma = torch.randn(2, 2, generator=g), torch.rand(2, generator=g)
    policy = _Recorder()
    (loss, _), = list(algo.loss_terms(policy, batch, None))
    xt = (1 - sigma[:, None]) * x1 + sigma[:, None] * x0          # sigma = 0 data, sigma = 1 noise
    assert torch.allclose(policy.calls[0][0], xt) and torch.allclose(policy.calls[0][1], sigma)
    fm = ((xt - (x0 - x1)) ** 2).mean(1)                          # v = x_sigma, target u = x0 - x1
    w2 = (xt ** 2).mean(1)                                        # v_ref = 0
    assert loss.item() == pytest.approx((torch.tensor([1.0, 3.0]) * fm + 0.5 * w2).mean().item(), rel=1e-5)


def test_ot_pairing_minimises_squared_not_other_powers_of_distance():
    # x1 = a, b and x0 = c, d with |a-c| = 0, |b-d| = 3, |a-d| = |b-c| = 2.2: keeping the order costs
    # 0 + 9 = 9 in squared distance (< 2 x 4.84 = 9.68) but 27 in cubed (> 2 x 10.65): squared keeps it
    b = torch.tensor([[2.2 * 0.0702, 2.2 * math.sqrt(1 - 0.0702 ** 2)]])
    x1 = torch.cat([torch.zeros(1, 2), b])
    x0 = torch.tensor([[0.0, 0.0], [2.2, 0.0]])
    assert torch.cdist(x1, x0)[1, 1].item() == pytest.approx(3.0, abs=1e-3)
    assert torch.equal(ot_pair(x1, x0), x0)


def test_group_weights_normalise_within_each_prompt():
    # groups {0, 1} and {2, 3}: softmax(tau r) x group size inside each, so each group's mean is 1
    r = torch.tensor([0.0, 1.0, 0.5, 0.5])
    w = reward_weights(r, 2.0, True, group_ids=torch.tensor([3, 3, 8, 8]))
    e = math.exp(2.0)
    assert w.tolist() == pytest.approx([2 / (1 + e), 2 * e / (1 + e), 1.0, 1.0], rel=1e-6)
    # the batch-wide version weighs the whole second group by its (middle) reward instead
    assert reward_weights(r, 2.0, True)[2].item() == pytest.approx(4 * math.exp(1.0) / (1 + e + 2 * math.exp(1.0)))


class _GuidanceRecorder(_Recorder):
    def __init__(self):
        super().__init__()
        self.guidances = []

    def velocity(self, x, sigma, cond, guidance=None):
        self.guidances.append(guidance)
        return super().velocity(x, sigma, cond, guidance)


@pytest.mark.parametrize("cfg,expected", [(False, [1.0, 1.0]), (True, [4.5, 4.5])])
def test_cfg_option_matches_the_training_guidance_for_policy_and_reference(cfg, expected):
    from types import SimpleNamespace
    batch = Batch({"latents": torch.zeros(2, 2, 3), "weights": torch.ones(2),
                   "prompt_ids": torch.zeros(2, dtype=torch.long)})
    policy = _GuidanceRecorder()
    list(ORWCFMW2(ot_pairing=False, cfg=cfg).loss_terms(policy, batch, SimpleNamespace(guidance=4.5, cfg_detach_uncond=False)))
    assert policy.guidances == expected            # [policy, reference]
