"""DGPO: the group preference weights and the loss against hand-computed values, its gradient
against the group-DPO likelihood it stands for, shared draws per group, and a moons run."""
import math

import pytest
import torch

from flowrl.algorithms.dgpo import DGPO, dgpo_loss, draw_group_sigmas, group_preference_weights
from flowrl.batch import Batch
from flowrl.registry import ALGORITHMS
from tests.algorithms.tiny import LinearPolicy, moons_run


def _example():
    err = torch.tensor([0.2, 0.5, 1.0])
    ref = torch.tensor([0.3, 0.3, 0.5])
    adv = torch.tensor([1.0, -1.0, 2.0])
    gid = torch.tensor([7, 7, 3])
    return err, ref, adv, gid


def test_weights_and_loss_by_hand():
    err, ref, adv, gid = _example()
    w = group_preference_weights(err, ref, adv, gid, beta_dpo=10.0)
    # group 7: 10 * (1 * (0.2 - 0.3) + (-1) * (0.5 - 0.3)) / 2 = -1.5; group 3: 10 * 2 * 0.5 / 1 = 10
    s7, s3 = 1 / (1 + math.exp(1.5)), 1 / (1 + math.exp(-10.0))
    assert w.tolist() == pytest.approx([s7, s7, s3])
    loss, _ = dgpo_loss(err, ref, adv, gid, 10.0)
    assert loss.item() == pytest.approx((s7 * 1 * 0.2 + s7 * (-1) * 0.5 + s3 * 2 * 1.0) / 3)


def test_gradient_is_that_of_the_group_dpo_likelihood():
    """grad of mean_i w_g A_i e_i  x  beta N / |g|  =  grad of sum_g -log sigmoid(-S_g)."""
    err, ref, adv, gid = _example()
    e = err.clone().requires_grad_(True)
    loss, _ = dgpo_loss(e, ref, adv, gid, 10.0)
    g_ours, = torch.autograd.grad(loss, e)
    e2 = err.clone().requires_grad_(True)
    s7 = 10.0 * (adv[:2] * (e2[:2] - ref[:2])).sum() / 2
    s3 = 10.0 * adv[2] * (e2[2] - ref[2])
    nll = -torch.nn.functional.logsigmoid(-s7) - torch.nn.functional.logsigmoid(-s3)
    g_dpo, = torch.autograd.grad(nll, e2)
    size = torch.tensor([2.0, 2.0, 1.0])
    assert torch.allclose(g_ours * 10.0 * 3 / size, g_dpo, atol=1e-6)


def test_a_group_already_preferring_its_positives_stops_pulling():
    err, ref, adv = torch.tensor([0.0, 1.0]), torch.tensor([0.5, 0.5]), torch.tensor([1.0, -1.0])
    w = group_preference_weights(err, ref, adv, torch.zeros(2, dtype=torch.long), beta_dpo=100.0)
    assert w.max() < 1e-20                     # S = 100 * (-0.5 - 0.5) / 2 = -50


def test_draws_are_shared_within_a_group_and_from_the_first_levels():
    gid = torch.tensor([4, 4, 9, 9, 9])
    sig, eps = draw_group_sigmas(torch.tensor([1.0, 0.9, 0.8]), gid, 2, (3,), torch.Generator().manual_seed(0))
    assert sig.shape == (5, 2) and eps.shape == (5, 2, 3)
    assert torch.equal(sig[0], sig[1]) and torch.equal(eps[2], eps[4]) and not torch.equal(eps[0], eps[2])
    assert all(min(abs(x - lv) for lv in (1.0, 0.9, 0.8)) < 1e-6 for x in sig.flatten().tolist())
    for row in sig:
        assert row[0] != row[1]                 # distinct levels per group


def test_prepare_and_loss_terms_on_a_tiny_policy():
    alg = ALGORITHMS.build("dgpo", timestep_fraction=0.5, timesteps_per_sample=2, kl_beta=0.1)
    assert isinstance(alg, DGPO) and alg.group_local and alg.sampling == "ode"
    g = torch.Generator().manual_seed(1)
    gid = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    batch = Batch({"latents": torch.randn(8, 5, 2, generator=g), "rewards": torch.rand(8, generator=g),
                   "group_ids": gid, "prompt_ids": gid})
    gathered = Batch({k: batch[k] for k in ("rewards", "group_ids", "prompt_ids")})
    alg.num_loss_terms(4)
    alg.prepare(LinearPolicy(), batch, gathered, slice(0, 8))
    assert batch["dgpo_sigma"].shape == (8, 2)
    assert set(batch["dgpo_sigma"].flatten().tolist()) <= {1.0, 0.75}     # first half of 4 steps
    terms = list(alg.loss_terms(LinearPolicy(), batch, None))
    # the reference equals the policy here: e = e_ref, S_g = 0, every weight 1/2, KL 0
    assert len(terms) == 2 and terms[0][1]["group_weight"] == pytest.approx(0.5)
    assert terms[0][1]["kl"] == pytest.approx(0.0) and terms[0][0].requires_grad


@pytest.mark.parametrize("kw", [{"beta_dpo": 0.0}, {"kl_beta": -1.0}, {"timestep_fraction": 0.0},
                                {"timestep_fraction": 1.5}, {"adv_clip_max": 0.0}])
def test_bad_options_are_refused(kw):
    with pytest.raises(ValueError, match="algorithm dgpo"):
        DGPO(**kw)


def test_moons_reward_rises_and_parameters_change(tmp_path):
    summary, changed = moons_run("dgpo.py:moons", ["sample.group_size=32", "num_epochs=6"], tmp_path / "run")
    assert changed and summary["reward_after"] > summary["reward_before"] + 0.2   # measured: 0.51 -> 0.89
