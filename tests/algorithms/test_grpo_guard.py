"""GRPO-Guard's normalised ratio: by hand, its identity with mean((mu - mu_old) * eps), the bias
and 1/s scale it removes, the old means, the on-policy ratio of 1, and a moons run."""
import pytest
import torch

from flowrl.algorithms.grpo import GRPO
from flowrl.algorithms.grpo_guard import guard_log_ratio, old_transition_means
from flowrl.batch import Batch
from flowrl.sampling.rollout import RolloutSettings
from flowrl.sampling.sde import gaussian_log_prob, sde_mean_std
from tests.algorithms.tiny import LinearPolicy, moons_run


def test_by_hand_one_element():
    x, mu_old, mu, s = torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([[0.5]]), torch.tensor([0.5])
    lp, lp_old = gaussian_log_prob(x, mu, s), gaussian_log_prob(x, mu_old, s)
    # log r = (1 - 0.25) / (2 * 0.25) = 1.5; 1.5 * 0.5 + 0.25 / (2 * 0.5) = 1.0 = (0.5 - 0) * eps, eps = 2
    assert (lp - lp_old).item() == pytest.approx(1.5)
    assert guard_log_ratio(lp, lp_old, mu, mu_old, s).item() == pytest.approx(1.0)


def test_equals_mean_of_mean_shift_times_noise_and_removes_bias_and_scale():
    g = torch.Generator().manual_seed(0)
    n, d = 2000, 16
    delta = 0.05 * torch.randn(1, d, generator=g).expand(n, d)
    for s_val in (0.1, 0.4):
        s = torch.full((n,), s_val)
        mu_old = torch.randn(n, d, generator=g)
        eps = torch.randn(n, d, generator=g)
        x = mu_old + s_val * eps
        lp, lp_old = gaussian_log_prob(x, mu_old + delta, s), gaussian_log_prob(x, mu_old, s)
        guard = guard_log_ratio(lp, lp_old, mu_old + delta, mu_old, s)
        assert torch.allclose(guard, (delta * eps).mean(1), atol=1e-5)
        plain = lp - lp_old
        bias = -(delta[0] ** 2).mean() / (2 * s_val ** 2)           # E[log r] = -KL
        assert plain.mean().item() == pytest.approx(bias.item(), rel=0.1)
        assert abs(guard.mean().item()) < 3 * guard.std().item() / n ** 0.5 + 1e-6
        expected_std = (delta[0] ** 2).mean().sqrt().item() / d ** 0.5   # independent of s
        assert guard.std().item() == pytest.approx(expected_std, rel=0.1)
        assert plain.std().item() == pytest.approx(expected_std / s_val, rel=0.1)


def _settings():
    sig = torch.linspace(1, 0, 5)
    return RolloutSettings(sig, torch.ones(4, dtype=torch.bool), torch.tensor([True, True, False, False]),
                           0.7, "sde", 1.0)


def _batch(policy, st, n=6):
    from flowrl.sampling.rollout import rollout
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        traj = rollout(lambda x, s: policy.velocity(x, s), noise, st.sigmas, st.sde_mask, 0.7, "sde",
                       torch.Generator().manual_seed(3))
    return Batch({"latents": traj.latents, "log_probs": traj.log_probs, "rewards": torch.arange(n).float(),
                  "group_ids": torch.zeros(n, dtype=torch.long), "prompt_ids": torch.zeros(n, dtype=torch.long)})


def test_old_means_are_the_sampling_policys():
    policy, st = LinearPolicy(), _settings()
    batch = _batch(policy, st)
    means = old_transition_means(policy, batch, st, [0, 1], chunk=4)
    assert means.shape == (6, 2, 2)
    x = batch["latents"][:, 1]
    with torch.no_grad():
        m, _ = sde_mean_std(x, policy.net(x), st.sigmas[1].expand(6), st.sigmas[2].expand(6), 0.7, 0.75)
    assert torch.allclose(means[:, 1], m, atol=1e-6)


def test_on_policy_ratio_is_one_and_old_means_are_computed_once():
    policy, st = LinearPolicy(), _settings()
    alg = GRPO(clip_range=0.1, beta=0.0, ratio_norm=True)
    batch = _batch(policy, st)
    gathered = Batch({k: batch[k] for k in ("rewards", "group_ids", "prompt_ids")})
    alg.prepare(policy, batch, gathered, slice(0, 6))
    terms = list(alg.loss_terms(policy, batch.select(torch.tensor([5, 0, 3])), st))
    assert len(terms) == 2 and all(t[1]["ratio"] == pytest.approx(1.0, abs=1e-6) for t in terms)
    assert alg._pending is None and alg._old_means.shape == (6, 2, 2)
    with torch.no_grad():
        policy.net.bias.add_(0.3)                  # an update: the ratio moves, the old means stay
    kept = alg._old_means.clone()
    terms = list(alg.loss_terms(policy, batch.select(torch.tensor([1, 2])), st))
    assert torch.equal(kept, alg._old_means) and any(abs(t[1]["ratio"] - 1) > 1e-4 for t in terms)


def test_moons_reward_rises_and_parameters_change(tmp_path):
    summary, changed = moons_run("grpo.py:moons", ["sample.group_size=128", "num_epochs=3", "algorithm.ratio_norm=True"], tmp_path / "run")
    assert changed and summary["reward_after"] > summary["reward_before"] + 0.2   # measured: 0.51 -> 0.96
