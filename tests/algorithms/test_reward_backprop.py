"""Reward backprop: the per-step surrogate carries exactly the full (stop-grad) reward gradient."""
import pytest
import torch

from flowrl.algorithms.reward_backprop import (RewardBackprop, check_differentiable, last_steps,
                                               reward_gradient, surrogate_loss)
from flowrl.batch import Batch
from flowrl.policies.toy2d import Toy2DPolicy, VelocityMLP
from flowrl.rewards.combine import WeightedReward
from flowrl.rewards.toy import fidelity_reward
from flowrl.sampling.rollout import RolloutSettings, rollout


def tiny_net(seed=0):
    torch.manual_seed(seed)
    return VelocityMLP(2, 16, 2)


def reward_fn(x):                                    # any smooth reward of the final sample, (B, 2) -> (B,)
    return torch.sin(2 * x[:, 0]) - (x[:, 1] - 0.5) ** 2


def full_gradient(net, noise, sigmas, reward):
    """Unroll the Euler ODE with a detach at each network input; autograd through R(x_S)."""
    net.zero_grad()
    x = noise
    for j in range(len(sigmas) - 1):
        s = sigmas[j].expand(len(x))
        x = x + (sigmas[j + 1] - sigmas[j]) * net(x.detach(), s)
    (-reward(x).mean()).backward()
    return [p.grad.clone() for p in net.parameters()]


def test_surrogate_gradient_equals_the_full_gradient_on_a_small_case():
    net, sigmas = tiny_net(), torch.linspace(1, 0, 6)
    noise = torch.randn(7, 2, generator=torch.Generator().manual_seed(3))
    full = full_gradient(net, noise, sigmas, reward_fn)

    with torch.no_grad():                           # the stored trajectory, as the trainer keeps it
        traj = rollout(lambda x, s: net(x, s), noise, sigmas)
    x_final = traj.final.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(reward_fn(x_final).sum(), x_final)
    net.zero_grad()
    for j in range(len(sigmas) - 1):                # one backward per step, grads accumulate
        s = sigmas[j].expand(len(noise))
        surrogate_loss(net(traj.latents[:, j], s), sigmas[j + 1] - sigmas[j], g).backward()
    for a, b in zip(full, (p.grad for p in net.parameters())):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


def _fidelity():
    return WeightedReward({"moons_fidelity": lambda x, p, m: fidelity_reward(x.float())}, {"moons_fidelity": 2.0})


def test_the_algorithm_prepare_and_loss_terms_give_the_full_gradient():
    policy = Toy2DPolicy(tiny_net(1), torch.device("cpu"))
    S = 5
    st = RolloutSettings(torch.linspace(1, 0, S + 1), torch.zeros(S, dtype=torch.bool),
                         torch.zeros(S, dtype=torch.bool), 0.7, "sde", 1.0)
    noise = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    full = full_gradient(policy.net, noise, st.sigmas, lambda x: 2.0 * fidelity_reward(x))

    algo = RewardBackprop(grad_chunk=4)
    algo.setup(policy, _fidelity())
    assert algo.num_loss_terms(S) == S
    with torch.no_grad():
        traj = algo.rollout(policy, noise, {}, st, None)
    batch = Batch({"latents": traj.latents}, {"prompts": [""] * 6, "metadata": [{}] * 6})
    algo.prepare(policy, batch, batch, slice(0, 6))
    policy.net.zero_grad()
    for loss, _ in algo.loss_terms(policy, batch, st):
        loss.backward()
    for a, p in zip(full, policy.net.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6, rtol=1e-4)


def test_last_k_trains_only_the_last_steps():
    assert last_steps(10, 3) == [7, 8, 9]
    algo = RewardBackprop(last_k=3)
    assert algo.num_loss_terms(10) == 3 and algo.train_steps(10) == [7, 8, 9]
    assert RewardBackprop(last_k=30).num_loss_terms(10) == 10     # capped by the sampler's steps
    assert RewardBackprop().num_loss_terms(9) == 9                # timestep_fraction 0.9 of 10 steps
    with pytest.raises(ValueError, match="last_k"):
        last_steps(4, 5)


def test_non_differentiable_reward_is_refused_naming_it_and_suggesting_grpo():
    reward = WeightedReward({"moons_fidelity": None, "jpeg_compressibility": None},
                            {"moons_fidelity": 1.0, "jpeg_compressibility": 1.0})
    with pytest.raises(ValueError, match=r"\['jpeg_compressibility'\].*differentiable.*grpo"):
        RewardBackprop().setup(None, reward)
    check_differentiable(WeightedReward({"moons_unlearning": None}, {"moons_unlearning": 1.0}))


def test_a_reward_that_drops_the_graph_gets_a_clear_error():
    policy = Toy2DPolicy(tiny_net(), torch.device("cpu"))
    detached = WeightedReward({"moons_fidelity": lambda x, p, m: fidelity_reward(x).detach()},
                              {"moons_fidelity": 1.0})
    with pytest.raises(RuntimeError, match="no gradient"):
        reward_gradient(policy, torch.zeros(2, 2), detached, ["", ""], [{}, {}])
