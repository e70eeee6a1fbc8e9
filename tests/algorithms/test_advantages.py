import pytest
import torch

from flowrl.algorithms.advantages import PerPromptStatTracker, group_advantages
from flowrl.algorithms.losses import clipped_surrogate


def test_constant_reward_group_has_zero_advantage_and_is_flagged():
    r = torch.tensor([1.0, 1.0, 1.0, 0.0, 2.0, 4.0])
    g = torch.tensor([0, 0, 0, 1, 1, 1])
    adv, zero = group_advantages(r, g)
    assert torch.equal(adv[:3], torch.zeros(3))
    assert zero.tolist() == [True] * 3 + [False] * 3


def test_group_advantages_hand_computed():
    r = torch.tensor([0.0, 2.0, 10.0, 14.0])
    g = torch.tensor([0, 0, 1, 1])
    std = r.std(unbiased=False).item()                       # global std, population
    adv, _ = group_advantages(r, g, eps=0.0, clip=100)
    assert adv.tolist() == pytest.approx([-1 / std, 1 / std, -2 / std, 2 / std], rel=1e-6)
    adv_g, _ = group_advantages(r, g, std_per_group=True, eps=0.0)
    assert adv_g.tolist() == pytest.approx([-1, 1, -1, 1], rel=1e-6)


def test_advantages_are_clipped():
    r = torch.tensor([0.0] * 99 + [1.0])
    adv, _ = group_advantages(r, torch.zeros(100, dtype=torch.long), clip=5.0)
    assert adv.max().item() == 5.0


def test_clipped_loss_on_policy_is_minus_mean_advantage():
    lp = torch.randn(8)
    adv = torch.randn(8)
    loss, ratio, clipped = clipped_surrogate(lp, lp.clone(), adv, 1e-4)
    assert torch.equal(ratio, torch.ones(8))
    assert loss.item() == pytest.approx(-adv.mean().item(), abs=1e-7)
    assert not clipped.any()


def test_clipped_loss_clips_only_in_the_pessimistic_direction():
    adv = torch.tensor([1.0, -1.0])
    lp_old = torch.zeros(2)
    lp = torch.log(torch.tensor([1.5, 1.5]))                  # ratio 1.5, clip 0.2 -> 1.2
    loss, _, clipped = clipped_surrogate(lp, lp_old, adv, 0.2)
    # A=+1: max(-1.5, -1.2) = -1.2 ; A=-1: max(1.5, 1.2) = 1.5
    assert loss.item() == pytest.approx((-1.2 + 1.5) / 2)
    assert clipped.all()


def test_stat_tracker_uses_batch_stats_until_min_count():
    t = PerPromptStatTracker(buffer_size=4, min_count=3)
    a = t.update(["p", "p"], torch.tensor([0.0, 2.0]))
    assert a.tolist() == pytest.approx([-1, 1], abs=1e-5)
    a = t.update(["p"], torch.tensor([4.0]))                  # buffer [0,2,4]: mean 2, std sqrt(8/3)
    assert a.item() == pytest.approx(2 / (8 / 3) ** 0.5, rel=1e-5)


def test_clipped_loss_lower_clip_branch_hand_computed():
    # A < 0 and rho < 1 - eps: the clip at 1 - eps is the pessimistic branch.
    # A=-1, rho=0.5, eps 0.2: max(0.5, 0.8) = 0.8; A=+2, rho=0.5: max(-1.0, -1.6) = -1.0 (no clip)
    adv = torch.tensor([-1.0, 2.0])
    lp = torch.log(torch.tensor([0.5, 0.5]))
    loss, ratio, clipped = clipped_surrogate(lp, torch.zeros(2), adv, 0.2)
    assert loss.item() == pytest.approx((0.8 - 1.0) / 2)
    assert ratio.tolist() == pytest.approx([0.5, 0.5]) and clipped.all()   # |rho - 1| > eps on both
    # weights multiply each sample's term before the mean: (2 * 0.8 + 0 * -1.0) / 2
    wl, _, _ = clipped_surrogate(lp, torch.zeros(2), adv, 0.2, weights=torch.tensor([2.0, 0.0]))
    assert wl.item() == pytest.approx(0.8)
