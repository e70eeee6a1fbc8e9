"""Advantage Weighted Matching: the weighting and the loss against hand-computed values, the
draws of prepare, the trainer-facing gradient, and a moons run that learns."""
import pytest
import torch

from flowrl.algorithms.awm import AWM, awm_advantages, awm_loss, weighted_matching_error
from flowrl.batch import Batch
from flowrl.registry import ALGORITHMS
from tests.algorithms.tiny import LinearPolicy, moons_run


def test_weightings_by_hand():
    err, sig = torch.tensor([4.0, 0.25]), torch.tensor([0.5, 1.0])
    assert weighted_matching_error(err, sig, "uniform").tolist() == pytest.approx([4.0, 0.25])
    assert weighted_matching_error(err, sig, "t").tolist() == pytest.approx([2.0, 0.25])
    # ghuber p = 1/2: sigma * (sqrt(err) - sqrt(1e-10)) / (1/2) = 2 sigma (sqrt(err) - 1e-5)
    assert weighted_matching_error(err, sig, "ghuber", 0.5).tolist() == pytest.approx(
        [2 * 0.5 * (2.0 - 1e-5), 2 * 1.0 * (0.5 - 1e-5)])
    with pytest.raises(ValueError, match="weighting"):
        weighted_matching_error(err, sig, "huber")


def test_advantage_scaling():
    a = torch.tensor([-10.0, -5.0, 0.0, 2.5, 5.0, 7.0])
    assert awm_advantages(a, 5.0, 1.0).tolist() == pytest.approx([-1, -1, 0, 0.5, 1, 1])
    assert awm_advantages(a, 5.0, 2.0).tolist() == pytest.approx([-2, -2, 0, 1, 2, 2])
    assert awm_advantages(a, 5.0, 2.0, negative_scale=0.25).tolist() == pytest.approx([-0.5, -0.5, 0, 1, 2, 2])
    assert awm_advantages(a, 5.0, 1.0, negative_scale=0.0).tolist() == pytest.approx([0, 0, 0, 0.5, 1, 1])


def test_loss_by_hand_and_the_sign_of_its_gradient():
    v = torch.tensor([[1.0, 2.0], [1.0, 2.0]], requires_grad=True)
    u = torch.zeros(2, 2)
    loss, err = awm_loss(v, u, torch.tensor([0.5, -0.5]), torch.ones(2), "uniform")
    assert err.tolist() == pytest.approx([2.5, 2.5])
    assert loss.item() == pytest.approx((0.5 * 2.5 - 0.5 * 2.5) / 2)
    grad, = torch.autograd.grad(loss, v)
    # d/dv of A * mean((v - u)^2) / B = A * 2 (v - u) / (2 * 2)
    assert grad.flatten().tolist() == pytest.approx([0.25, 0.5, -0.25, -0.5])   # A > 0: descent pulls v to u


def _batch(n=8, steps=4):
    g = torch.Generator().manual_seed(1)
    return Batch({"latents": torch.randn(n, steps + 1, 2, generator=g), "rewards": torch.linspace(0, 1, n),
                  "group_ids": torch.zeros(n, dtype=torch.long), "prompt_ids": torch.zeros(n, dtype=torch.long)})


def test_prepare_draws_schedule_sigmas_without_one_and_the_gradient_is_weighted_fm():
    policy, alg = LinearPolicy(scale_by_sigma=True), ALGORITHMS.build("awm", weighting="t", timesteps_per_sample=3)
    assert isinstance(alg, AWM) and alg.sampling == "ode" and alg.num_loss_terms(4) == 3
    batch = _batch()
    gathered = Batch({k: batch[k] for k in ("rewards", "group_ids", "prompt_ids")})
    alg.prepare(policy, batch, gathered, slice(0, 8))
    sig = batch["awm_sigma"]
    assert sig.shape == (8, 3) and batch["awm_noise"].shape == (8, 3, 2)
    assert set(sig.flatten().tolist()) <= {0.75, 0.5, 0.25}               # never 1, never 0
    a = batch["awm_adv"]
    assert a[0] < 0 < a[-1] and a.abs().max() <= 1.0
    terms = list(alg.loss_terms(policy, batch, None))
    assert len(terms) == 3
    loss = terms[0][0]
    x0, s, eps = batch["latents"][:, -1], sig[:, 0], batch["awm_noise"][:, 0]
    xs = (1 - s[:, None]) * x0 + s[:, None] * eps
    ref = (a * s * ((policy.velocity(xs, s) - (eps - x0)) ** 2).mean(1)).mean()
    params = list(policy.net.parameters())
    for g1, g2 in zip(torch.autograd.grad(loss, params), torch.autograd.grad(ref, params)):
        assert torch.allclose(g1, g2, atol=1e-6)


@pytest.mark.parametrize("kw", [{"adv_clip_max": 0.0}, {"advantage_max": -1.0}, {"kl_beta": -0.1}, {"negative_scale": -0.5},
                                {"timesteps_per_sample": -1}, {"weighting": "l1"}, {"ghuber_power": 0.0}])
def test_bad_options_are_refused(kw):
    with pytest.raises(ValueError, match="algorithm awm"):
        AWM(**kw)


def test_moons_reward_rises_and_parameters_change(tmp_path):
    summary, changed = moons_run("awm.py:moons", ["sample.group_size=128", "num_epochs=4"], tmp_path / "run")
    assert changed and summary["reward_after"] > summary["reward_before"] + 0.2   # measured: 0.51 -> 1.00 (6 epochs)


class _CFGPolicy:
    """v_c = wc * x, v_u = wu * x, CFG velocity v_u + g (v_c - v_u), v_u detached on request."""

    def __init__(self):
        self.wc, self.wu = torch.tensor(1.0, requires_grad=True), torch.tensor(2.0, requires_grad=True)

    def velocity(self, x, sigma, cond, guidance=1.0, detach_uncond=False):
        vc, vu = self.wc * x, self.wu * x
        vu = vu.detach() if detach_uncond else vu
        return vc if guidance <= 1 else vu + guidance * (vc - vu)

    def sigmas(self, steps):
        return torch.linspace(1, 0, steps + 1)


@pytest.mark.parametrize("detach", [False, True])
def test_the_training_velocity_follows_cfg_detach_uncond(detach):
    # loss ~ A * w(mean (v - u)^2) with v = wu x + g (wc - wu) x: d/dwu carries the factor (1 - g) = -3.5
    # unless the unconditional half is detached (then only wc learns, with the factor g = 4.5)
    from types import SimpleNamespace
    policy, alg = _CFGPolicy(), ALGORITHMS.build("awm", weighting="uniform", timesteps_per_sample=1)
    batch = _batch()
    gathered = Batch({k: batch[k] for k in ("rewards", "group_ids", "prompt_ids")})
    alg.prepare(policy, batch, gathered, slice(0, 8))
    st = SimpleNamespace(guidance=4.5, cfg_detach_uncond=detach)
    (loss, _), = list(alg.loss_terms(policy, batch, st))
    gc, gu = torch.autograd.grad(loss, [policy.wc, policy.wu], allow_unused=True)
    if detach:
        assert gu is None or gu.item() == 0.0
    else:   # the two weights enter v only through wu (1 - g) + wc g: their gradients are in that ratio
        assert gu.item() == pytest.approx(gc.item() * (1 - 4.5) / 4.5, rel=1e-5)
    assert gc.item() != 0.0
