"""Value Matching: the time/velocity conversion, the memoryless SDE, cost-to-go and weights by hand,
the exact optimal value on the 1-D GMM (seed 002's 0.359), a short learned run, and the trainer."""
import math

import pytest
import torch
from torch import nn

import flowrl
from flowrl.algorithms.value_matching import (ControlledPolicy, ValueMatching, ValueMLP, base_drift,
                                              cost_to_go, loss_weights, memoryless_sigma, running_cost,
                                              sample_controlled, t_velocity, time_grid,
                                              trajectory_costs, value_control, value_matching,
                                              value_matching_loss)
from flowrl.policies.gmm1d import gmm_velocity

P_BASE = 0.5 * (0.5 * (1 + math.erf(1 / math.sqrt(2))) - 0.5)   # N(3, 0.4^2) adds ~1e-7
P_TILT = math.e * P_BASE / (math.e * P_BASE + 1 - P_BASE)           # 0.359 at lambda = 1


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_reference_numbers():
    assert P_BASE == pytest.approx(0.1707, abs=1e-4) and P_TILT == pytest.approx(0.359, abs=1e-3)


def test_time_conversion_matches_the_interpolant():
    """flowrl: x_sigma = (1-sigma) x0 + sigma eps, v = dx/dsigma; flow_gym: x_t = t x0 + (1-t) eps,
    dx/dt = x0 - eps. With sigma = 1 - t, t_velocity(v_flowrl) must be x0 - eps; for data N(0, s^2)
    the exact t-velocity is c(t) x, c = (t s^2 - (1 - t)) / ((1 - t)^2 + t^2 s^2)."""
    x0, eps = torch.randn(6, 1), torch.randn(6, 1)
    assert torch.allclose(t_velocity(eps - x0), x0 - eps)
    s, x = 0.4, torch.linspace(-2, 2, 5)[:, None]
    for t in (0.1, 0.5, 0.9):
        v = gmm_velocity(x, torch.tensor([1 - t]), torch.tensor([0.0]), torch.tensor([s]), torch.tensor([1.0]))
        c = (t * s ** 2 - (1 - t)) / ((1 - t) ** 2 + t ** 2 * s ** 2)
        assert torch.allclose(t_velocity(v), c * x, atol=1e-5)


def test_base_memoryless_sde_has_the_gmm_marginal():
    """u = 0: the SDE with drift 2 v_t - x/t ends at 1/2 N(0,1) + 1/2 N(3, 0.4^2): mean 1.5,
    variance 1/2 (1 + 0.16) + 1.5^2 = 2.83 (4000 samples: SE 0.027 / ~0.07)."""
    env = flowrl.make("1d/gmm", "1d/binary", discretization_steps=50)
    x = env.rollout(4000, torch.Generator().manual_seed(0))[0].final
    assert x.mean().item() == pytest.approx(1.5, abs=0.1) and x.var().item() == pytest.approx(2.83, abs=0.25)


def test_memoryless_sigma_and_drift_by_hand():
    t = torch.tensor([0.5, 0.25, 1.0])
    assert memoryless_sigma(t).tolist() == pytest.approx([math.sqrt(2.0), math.sqrt(6.0), 0.0])
    x, v = torch.tensor([[1.0], [2.0]]), torch.tensor([[0.5], [-1.0]])
    assert base_drift(x, v, torch.tensor([0.5, 0.25])).flatten().tolist() == pytest.approx([1 - 2, -2 - 8])


def test_cost_to_go_and_weights_by_hand():
    costs = torch.tensor([[1.0, 2.0, 3.0]])             # L_0, L_1, L_2
    dts = torch.tensor([0.1, 0.2, 0.3])
    c = cost_to_go(costs, dts, torch.tensor([0.5]), reward_scale=2.0)
    assert c.flatten().tolist() == pytest.approx([0.1 + 0.4 + 0.9 - 1, 0.4 + 0.9 - 1, 0.9 - 1, -1.0])
    t = time_grid(2, 0.5)                                 # 0.5, 0.75, 1.0; dt = 0.25
    s2 = [2 * 0.5 / 0.5, 2 * 0.25 / 0.75, 0.0]
    w = loss_weights(t, 2.0)
    expect = [1 / (2 * (1 + 0.5 * 0.25 * sum(s2[k:]))) for k in range(3)]
    assert w.tolist() == pytest.approx(expect, rel=1e-6)
    loss = value_matching_loss(torch.zeros(1, 3), torch.tensor([[1.0, 2.0, 0.0]]), w)
    assert loss.item() == pytest.approx((expect[0] * 1 + expect[1] * 4) / 2, rel=1e-6)
    assert running_cost(torch.tensor([[3.0, 4.0]])).item() == pytest.approx(12.5)


def test_control_is_minus_sigma_grad_v():
    class Quadratic(nn.Module):                           # V = x^2 (sum), grad = 2x
        def forward(self, x, t):
            return (x ** 2).sum(dim=1)
    x, t = torch.tensor([[1.0, -2.0]]), torch.tensor([0.5])
    with torch.no_grad():
        u = value_control(Quadratic(), x, t)
    assert u.flatten().tolist() == pytest.approx([-math.sqrt(2) * 2, math.sqrt(2) * 4])
    assert torch.equal(value_control(None, x, t), torch.zeros_like(x))
    assert torch.equal(ValueMLP(2)(x, t), torch.zeros(1))   # zero head: the first rollout is the base


class ExactValue(nn.Module):
    """V*(x, t) = -log E[exp(lam 1[0 <= X1 <= 1]) | X_t = x] for the 1-D GMM base. Under the
    memoryless SDE, X1 | X_t = x is the posterior of the interpolant x_t = t X1 + (1 - t) eps."""

    def __init__(self, lam: float):
        super().__init__()
        self.lam = lam
        self.m, self.s, self.w = (torch.tensor(v, dtype=torch.float64) for v in ((0., 3.), (1., .4), (.5, .5)))

    def forward(self, x, t):
        z, t = x.double()[:, :1], t.double().reshape(-1, 1)
        m, s, w = self.m[None], self.s[None], self.w[None]
        var = t ** 2 * s ** 2 + (1 - t) ** 2
        resp = torch.softmax(torch.log(w) - 0.5 * torch.log(var) - 0.5 * (z - t * m) ** 2 / var, 1)
        mu = m + t * s ** 2 / var * (z - t * m)
        tau = torch.sqrt((s ** 2 - t ** 2 * s ** 4 / var).clamp(min=1e-12))
        cdf = lambda a: 0.5 * (1 + torch.erf(a / math.sqrt(2)))  # noqa: E731
        p = (resp * (cdf((1 - mu) / tau) - cdf(-mu / tau))).sum(1)
        return (-torch.log1p((math.exp(self.lam) - 1) * p)).float()


def _fraction(env, n=4000, seed=1):
    return env.rollout(n, torch.Generator().manual_seed(seed))[1].mean().item()


def test_base_sde_keeps_the_base_marginal_and_exact_value_tilts_it_to_0359():
    """Sampler + conversion check without learning. 4000 samples: SE ~0.006 (base) / 0.0076
    (tilted); Euler-Maruyama with 50 steps biases the tilted fraction by ~-0.005 (measured: 0.3505
    at 50 steps, 0.3543 at 100, with 20000 samples), so the tolerance is 0.025 (~3 SE + bias)."""
    env = flowrl.make("1d/gmm", "1d/binary", discretization_steps=50, reward_scale=1.0)
    assert _fraction(env) == pytest.approx(P_BASE, abs=0.02)
    env.value_net = ExactValue(1.0)
    assert _fraction(env) == pytest.approx(P_TILT, abs=0.025)


def test_value_matching_moves_the_fraction_towards_0359():
    """150 iterations (~3 s) of flow_gym's loop on 20 steps. The exact V* gives 0.347 on this grid;
    this short run gets 0.302-0.306 over seeds 0-3 (the learned V is still a smoothed V*; longer
    runs stay ~0.30-0.32). Asserted: at least 40% of the way from P = 0.171 (0.25 is 11 SE above P
    with 4000 samples) and no overshoot past the optimum (0.40 = 0.359 + 5 SE)."""
    torch.manual_seed(0)
    env = flowrl.make("1d/gmm", "1d/binary", discretization_steps=20, reward_scale=1.0)
    hist = value_matching(ValueMLP(1, 32, 2), env, batch_size=256, num_iterations=150, lr=3e-2)
    assert all(math.isfinite(h["loss"]) for h in hist)
    assert 0.25 < _fraction(env) < 0.40


class LinearPolicy:
    sample_shape, device = (1,), "cpu"

    def __init__(self):
        self.net = nn.Linear(1, 1)
        self.model = self.net

    def velocity(self, x, sigma, cond=None, guidance=None):
        return self.model(x)


def test_setup_freezes_the_policy_and_builds_the_value_net():
    policy, alg = LinearPolicy(), ValueMatching(hidden=16, depth=1)
    with pytest.raises(RuntimeError, match="setup"):
        alg.modules()
    alg.setup(policy, None)
    assert not any(p.requires_grad for p in policy.net.parameters())
    assert list(alg.modules()) == ["value_net"] and alg.modules()["value_net"] is alg.value_net


def test_prepare_recomputes_the_rollout_costs():
    env = flowrl.make("1d/gmm", "1d/binary", discretization_steps=10)
    alg = ValueMatching(reward_scale=2.0, hidden=16, depth=1)
    alg.setup(env.policy, None)
    with torch.no_grad():
        alg.value_net.head.weight.fill_(0.5)              # a non-zero V: non-zero controls and costs
    field = lambda x, s: env.policy.velocity(x, s)  # noqa: E731
    traj = sample_controlled(field, alg.value_net, torch.randn(5, 1), 10, 0.02, torch.Generator().manual_seed(0))
    assert traj.running_costs.abs().sum() > 0
    again = trajectory_costs(alg.value_net, traj.latents, traj.t)
    assert torch.allclose(again, traj.running_costs, rtol=1e-5, atol=1e-7)
    from flowrl.batch import Batch
    batch = Batch({"latents": traj.latents, "rewards": torch.tensor([1.0, 0, 0, 1, 0])})
    alg.prepare(env.policy, batch, batch, slice(0, 5))
    c, dt = batch["vm_costs"], traj.t[1:] - traj.t[:-1]
    # the cost-to-go by its definition: c_S = -lambda r, c_k = c_{k+1} + L_k dt_k
    assert torch.allclose(c[:, -1], -2.0 * batch["rewards"])
    assert torch.allclose(c[:, :-1] - c[:, 1:], traj.running_costs * dt[None].float(), atol=1e-6)
    with torch.no_grad():                                 # V = 0 now: the loss is sum_k w_k mean_b c_k^2 / S
        alg.value_net.head.weight.zero_()
        alg.value_net.head.bias.zero_()
    loss, _ = next(iter(alg.loss_terms(env.policy, batch, None)))
    w = loss_weights(time_grid(10, alg.t_min), 2.0)
    assert loss.requires_grad and loss.item() == pytest.approx(float((w * (c ** 2).mean(0)).sum() / 10), rel=1e-5)


def test_state_dict_round_trip_keeps_the_module_object():
    alg = ValueMatching(hidden=8, depth=1)
    env = flowrl.make("1d/gmm", "1d/binary", discretization_steps=5)
    alg.setup(env.policy, None)
    net = alg.value_net
    state = {"value_net": {k: torch.full_like(v, 0.25) for k, v in net.state_dict().items()}}
    alg.load_state_dict(state)
    assert alg.value_net is net and all(torch.all(v == 0.25) for v in net.state_dict().values())
    assert set(alg.state_dict()["value_net"]) == set(net.state_dict())


def test_controlled_policy_wraps_the_base():
    env = flowrl.make("1d/gmm", "1d/binary", discretization_steps=5)
    cp = ControlledPolicy(env.policy, ExactValue(1.0))
    assert cp.sample_shape == (1,)
    noise = torch.randn(7, 1)
    x = cp.sample(noise, num_steps=5, generator=torch.Generator().manual_seed(0))
    assert x.shape == (7, 1) and torch.isfinite(x).all()
    alg = ValueMatching(hidden=8, depth=1)
    alg.setup(env.policy, None)
    alg.value_net = cp.value_net                          # the hook evaluation should call
    y = alg.eval_sample(env.policy, noise, {}, 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, y)


def test_trainer_trains_only_the_value_network_and_resumes(tmp_path):
    from flowrl.config import load_config
    from flowrl.trainer import Trainer
    fast = ["num_epochs=4", "sample.num_steps=10", "sample.batch_size=64", "sample.group_size=64",
            "train.batch_size=64", "eval.num_samples=100", "eval.batch_size=100", "logging.progress=False",
            "checkpoint.every=2", "train.lr=1e-2"]
    trainer = Trainer(load_config("value_matching.py:gmm_binary", fast), tmp_path / "run")
    assert not any(p.requires_grad for p in trainer.policy.net.parameters())
    before = {k: v.clone() for k, v in trainer.algorithm.value_net.state_dict().items()}
    trainer.train()
    after = trainer.algorithm.value_net.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    resumed = Trainer(load_config("value_matching.py:gmm_binary", fast), tmp_path / "run", resume=True)
    for k, v in resumed.algorithm.value_net.state_dict().items():
        assert torch.equal(v, after[k])                   # the value net rides in algorithm.safetensors


def test_a_prompt_conditioned_value_sees_the_prompt_and_is_bound_per_sample():
    from flowrl.algorithms.value_matching import BoundValue, ValueMLP, cond_vector
    c = cond_vector({"label": torch.tensor([0, 3])}, classes=4)
    assert torch.equal(c, torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1.0]]))
    with pytest.raises(ValueError, match="cond_classes > 3"):
        cond_vector({"label": torch.tensor([3])}, classes=3)
    torch.manual_seed(0)
    net = ValueMLP(dim=2, hidden=8, depth=1, cond_dim=4)
    torch.nn.init.normal_(net.head.weight)
    x, t = torch.ones(2, 2), torch.full((2,), 0.5)
    v = net(x, t, c)
    assert v[0] != v[1]                                       # same x, other prompt: other value
    bound = BoundValue(net, c)
    xs = torch.ones(6, 2)                                     # 3 states per sample, sample-major
    assert torch.allclose(bound(xs, torch.full((6,), 0.5)), v.repeat_interleave(3))


def test_setup_sizes_a_prompt_conditioned_value_net_from_the_encoding():
    class LabelPolicy(LinearPolicy):
        sample_shape = (2,)

        def encode(self, prompts):
            return {"label": torch.zeros(len(prompts), dtype=torch.long)}
    alg = ValueMatching(hidden=8, depth=1, cond_classes=5)
    alg.setup(LabelPolicy(), None)
    first = alg.value_net.body[0]
    assert first.in_features == 2 + 1 + 5                 # x (2), t, the 5-class one-hot


def test_controlled_sampler_on_two_dimensional_samples_by_hand():
    # V = 0 (a fresh ValueMLP's head is zero): no control, no running cost; base v = 0 in flowrl's
    # convention: Euler-Maruyama x += dt * b(x, t) + sqrt(dt) sigma(t) z, t shared by the whole batch
    net = ValueMLP(2, hidden=8, depth=1)
    zero = lambda x, s: torch.zeros_like(x)  # noqa: E731
    noise = torch.arange(6.0).view(3, 2) / 6
    batch = sample_controlled(zero, net, noise, 4, 0.1, torch.Generator().manual_seed(0))
    assert batch.latents.shape == (3, 5, 2) and torch.equal(batch.running_costs, torch.zeros(3, 4))
    g = torch.Generator().manual_seed(0)                  # the sampler's increments: randn(3, 2) per step
    x = noise
    t = time_grid(4, 0.1)
    for k in range(4):
        dt = float(t[k + 1] - t[k])
        sig = memoryless_sigma(t[k].expand(3)).view(3, 1)
        x = x + dt * base_drift(x, t_velocity(torch.zeros_like(x)), t[k].expand(3)) + math.sqrt(dt) * sig * torch.randn(3, 2, generator=g)
    assert torch.allclose(batch.latents[:, -1], x, atol=1e-6)
