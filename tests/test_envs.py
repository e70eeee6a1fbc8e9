"""flowrl.make: flow_gym-style environments on the registries (ids, domains, errors, sampling)."""
import subprocess
import sys

import pytest
import torch

import flowrl
from flowrl.envs import BASES, Environment, reward_ids
from flowrl.policies.gmm1d import gmm_sample
from flowrl.rewards.toy1d import gaussian_pdf_reward, interval_reward

SMALL_MOONS = {"hidden": 16, "depth": 1, "base_iters": 30, "base_batch": 64}   # cached in seconds


def test_import_flowrl_stays_cheap_and_make_is_lazy():
    code = "import sys, flowrl; assert 'torch' not in sys.modules and 'flowrl.envs' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    import flowrl.envs
    assert flowrl.make is flowrl.envs.make
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        flowrl.nope


def test_1d_rewards_by_hand():
    x = torch.tensor([[-0.1], [0.0], [0.5], [1.0], [1.2]])
    assert interval_reward(x).tolist() == [0, 1, 1, 1, 0]
    pdf = gaussian_pdf_reward(torch.tensor([[-2.5], [-1.7]]))
    peak = 1 / (0.8 * (2 * torch.pi) ** 0.5)
    assert pdf.tolist() == pytest.approx([peak, peak * float(torch.exp(torch.tensor(-0.5)))], rel=1e-6)
    with pytest.raises(ValueError, match=r"\(B, 1\)"):
        interval_reward(torch.zeros(3, 2))


def test_gmm_base_samples_the_mixture():
    env = flowrl.make("1d/gmm", "1d/binary", discretization_steps=50)
    assert isinstance(env, Environment) and env.domain == "1d" and env.sample_shape == (1,)
    x = env.sample(4000, torch.Generator().manual_seed(0))
    exact = gmm_sample(200000, torch.tensor([0.0, 3.0]), torch.tensor([1.0, 0.4]), torch.tensor([0.5, 0.5]),
                       torch.Generator().manual_seed(0))
    assert x.shape == (4000, 1)
    assert x.mean().item() == pytest.approx(exact.mean().item(), abs=0.1)
    assert env.reward(x).mean().item() == pytest.approx(0.1707, abs=0.025)   # ODE, 50 Euler steps
    assert not any(p.requires_grad for p in env.policy.net.parameters())


def test_gaussian_reward_and_options_pass_through():
    env = flowrl.make("1d/gmm", "1d/gaussian", reward_kwargs={"mean": 0.0, "std": 1.0},
                      base_kwargs={"means": [0.0], "stds": [1.0], "weights": [1.0]}, reward_scale=3.0)
    assert env.reward_scale == 3.0
    assert env.reward(torch.zeros(2, 1)).tolist() == pytest.approx([0.3989423] * 2, rel=1e-5)


def test_moons_base_with_the_registered_rewards():
    env = flowrl.make("2d/moons", "2d/fidelity", discretization_steps=8, base_kwargs=SMALL_MOONS)
    x = env.sample(16, torch.Generator().manual_seed(0))
    assert x.shape == (16, 2) and env.reward(x).shape == (16,)
    # fidelity = max(1 - |x^2 + y^2 - 1|, 1 - |(x-1)^2 + (y-0.5)^2 - 1|): 1 on the outer moon's circle,
    # 0.75 at the origin, max(1 - 8, 1 - 6.25) = -5.25 at (0, 3)
    pts = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 3.0]])
    assert env.reward(pts).tolist() == pytest.approx([1.0, 0.75, -5.25])
    assert flowrl.make("2d/moons", "2d/moons_unlearning", base_kwargs=SMALL_MOONS).domain == "2d"


def test_domain_mismatch_and_unknown_ids():
    with pytest.raises(ValueError, match="'1d'.*'2d'.*1d/binary"):
        flowrl.make("1d/gmm", "2d/fidelity")
    with pytest.raises(KeyError, match="unknown base id '3d/cube'.*1d/gmm.*2d/moons"):
        flowrl.make("3d/cube", "1d/binary")
    with pytest.raises(KeyError, match="unknown reward id '1d/nope'.*1d/binary"):
        flowrl.make("1d/gmm", "1d/nope")


def test_id_tables_cover_the_brief():
    assert {"2d/moons", "1d/gmm"} <= set(BASES)
    ids = reward_ids()
    assert ids["2d/unlearning"] == "moons_unlearning" and ids["2d/fidelity"] == "moons_fidelity"
    assert ids["1d/binary"] == "binary_1d" and ids["1d/gaussian"] == "gaussian_1d"


def test_controlled_sampling_switches_on_with_a_value_net():
    from flowrl.algorithms.value_matching import ValueMLP
    env = flowrl.make("1d/gmm", "1d/binary", discretization_steps=10)
    env.value_net = ValueMLP(1, 8, 1)
    traj, rewards = env.rollout(5, torch.Generator().manual_seed(0))
    assert traj.latents.shape == (5, 11, 1) and traj.running_costs.shape == (5, 10) and rewards.shape == (5,)
    assert torch.equal(env.sample(5, torch.Generator().manual_seed(0)), traj.final)
