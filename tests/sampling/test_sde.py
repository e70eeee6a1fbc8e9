import math

import pytest
import torch

from flowrl.sampling.rollout import ode_sample, rollout
from flowrl.sampling.schedule import shifted_sigmas, step_masks
from flowrl.sampling.sde import kl_same_std, ode_step, sde_mean_std, sde_step, step_kl


def test_sde_mean_std_matches_hand_computation():
    # one element: x=1, v=2, sigma=0.5, sigma'=0.4, a=0.7 (Flow-GRPO formulas written out by hand)
    x, v = torch.tensor([[1.0]]), torch.tensor([[2.0]])
    s, s2, a = 0.5, 0.4, 0.7
    std_t = a * math.sqrt(s / (1 - s))            # 0.7
    dt = s2 - s                                    # -0.1
    mean = 1 * (1 + std_t ** 2 / (2 * s) * dt) + 2 * (1 + std_t ** 2 * (1 - s) / (2 * s)) * dt
    m, std = sde_mean_std(x, v, torch.tensor([s]), torch.tensor([s2]), a, sigma_max=0.9)
    assert m.item() == pytest.approx(mean, rel=1e-6)          # 1 - 0.049 - 0.249 = 0.702
    assert m.item() == pytest.approx(0.702, abs=1e-6)
    assert std.item() == pytest.approx(std_t * math.sqrt(0.1), rel=1e-6)


def test_sde_at_sigma_one_uses_sigma_max_in_the_denominator():
    x, v = torch.zeros(1, 1), torch.zeros(1, 1)
    _, std = sde_mean_std(x, v, torch.tensor([1.0]), torch.tensor([0.9]), 0.7, sigma_max=0.9)
    assert std.item() == pytest.approx(0.7 * math.sqrt(1 / (1 - 0.9)) * math.sqrt(0.1), rel=1e-6)


def test_log_prob_equals_closed_form_gaussian_density():
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(4, 3, 2, 2, generator=g), torch.randn(4, 3, 2, 2, generator=g)
    s, s2 = torch.full((4,), 0.6), torch.full((4,), 0.5)
    out = sde_step(x, v, s, s2, 0.7, 0.95, generator=g)
    ref = torch.distributions.Normal(out.mean, out.std.view(-1, 1, 1, 1)).log_prob(out.sample)
    assert torch.allclose(out.log_prob, ref.mean(dim=(1, 2, 3)), atol=1e-5)


# Two elements x = (1, -1), v = (2, 0), sigma 0.5 -> 0.4, a = 0.7, scored sample x' = (0.5, -0.5).
X2, V2, XP2 = torch.tensor([[1.0, -1.0]]), torch.tensor([[2.0, 0.0]]), torch.tensor([[0.5, -0.5]])


def test_sde_log_prob_of_a_given_sample_hand_computed():
    # mean = (0.702, -0.951) (x (1 - 0.049) + v (1.245)(-0.1)), std = 0.7 sqrt(0.1) = 0.2213594;
    # log N averaged over the two elements = -0.6569149 (Flow-GRPO's SDE log-prob, both forms)
    for form in ("exact", "flow_grpo"):
        out = sde_step(X2, V2, torch.tensor([0.5]), torch.tensor([0.4]), 0.7, 0.9, prev_sample=XP2,
                       cps_log_prob=form)
        assert out.log_prob.item() == pytest.approx(-0.6569149, rel=1e-6)


@pytest.mark.parametrize("form,expected", [("exact", -0.0801481), ("flow_grpo", -0.0490064)])
def test_cps_log_prob_in_both_forms_hand_computed(form, expected):
    # std = 0.4 sin(0.35 pi) = 0.3564026; x0^ = (0, -1), x1^ = (2, -1);
    # mean = x0^ 0.6 + x1^ sqrt(0.16 - std^2) = (0.3631924, -0.7815962); d = x' - mean = (0.1368076, 0.2815962)
    # flow_grpo: -(d1^2 + d2^2) / 2 = -0.0490064 (no 1/(2 std^2), no constants)
    # exact: mean(-d^2 / (2 std^2) - log std - log sqrt(2 pi)) = -0.0801481
    out = sde_step(X2, V2, torch.tensor([0.5]), torch.tensor([0.4]), 0.7, 0.9, kind="cps", prev_sample=XP2,
                   cps_log_prob=form)
    assert out.log_prob.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("kind,form,expected", [("sde", "exact", 25.510204), ("sde", "flow_grpo", 2.5510204),
                                                ("cps", "exact", 9.8407), ("cps", "flow_grpo", 9.8407)])
def test_step_kl_forms_hand_computed(kind, form, expected):
    # mean - mean_ref = (1, 2): mean square 2.5. sde: std = 0.7 sqrt(0.1) -> 2.5 / (2 * 0.049) exact,
    # 2.5 / (2 * 0.49) Flow-GRPO's (std_t without sqrt|dt|); cps: std = 0.3564026 in both forms
    std = torch.tensor([0.7 * math.sqrt(0.1) if kind == "sde" else 0.4 * math.sin(0.35 * math.pi)])
    kl = step_kl(torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2), std, torch.tensor([0.5]), torch.tensor([0.4]),
                 kind, form)
    assert kl.item() == pytest.approx(expected, rel=1e-4)


def test_bad_log_prob_form_is_refused():
    with pytest.raises(ValueError, match="cps_log_prob must be 'exact' or 'flow_grpo'"):
        sde_step(X2, V2, torch.tensor([0.5]), torch.tensor([0.4]), 0.7, 0.9, kind="cps", cps_log_prob="fg")


def test_cps_mean_and_std():
    x, v = torch.tensor([[1.0]]), torch.tensor([[2.0]])
    m, std = sde_mean_std(x, v, torch.tensor([0.5]), torch.tensor([0.4]), 0.7, 0.9, kind="cps")
    sd = 0.4 * math.sin(0.7 * math.pi / 2)
    x0, x1 = 1 - 0.5 * 2, 1 + 0.5 * 2
    assert std.item() == pytest.approx(sd, rel=1e-6)
    assert m.item() == pytest.approx(x0 * 0.6 + x1 * math.sqrt(0.16 - sd ** 2), rel=1e-6)


def test_kl_is_zero_for_equal_means_and_matches_formula():
    m = torch.randn(3, 5)
    assert torch.equal(kl_same_std(m, m, torch.ones(3)), torch.zeros(3))
    kl = kl_same_std(torch.ones(1, 2), torch.zeros(1, 2), torch.tensor([0.5]))
    assert kl.item() == pytest.approx(1 / (2 * 0.25))


def test_ode_step_is_euler():
    x, v = torch.ones(2, 2), torch.full((2, 2), 3.0)
    assert torch.allclose(ode_step(x, v, torch.tensor(0.5), torch.tensor(0.25)), torch.full((2, 2), 0.25))


def test_ode_sample_of_straight_flow_is_exact():
    # v = eps - x0 with x0 = 2 fixed: the flow from eps reaches exactly 2 with any step count
    x0 = torch.full((5, 2), 2.0)
    def velocity(x, sigma):
        eps = (x - (1 - sigma.view(-1, 1)) * x0) / sigma.view(-1, 1).clamp_min(1e-8)
        return eps - x0
    out = ode_sample(velocity, torch.randn(5, 2), shifted_sigmas(7, shift=3.0))
    assert torch.allclose(out, x0, atol=1e-5)


def test_rollout_records_states_and_log_probs_only_on_sde_steps():
    sigmas = shifted_sigmas(6)
    sde, train = step_masks(6, window_size=2, window_start=3)
    traj = rollout(lambda x, s: -x, torch.randn(4, 2), sigmas, sde, 0.7, "sde", torch.Generator().manual_seed(1))
    assert traj.latents.shape == (4, 7, 2) and traj.log_probs.shape == (4, 6)
    assert (traj.log_probs[:, [0, 1, 2, 5]] == 0).all() and (traj.log_probs[:, 3:5] != 0).all()
    assert torch.equal(sde, train)


def test_step_masks_fraction_and_errors():
    sde, train = step_masks(10, timestep_fraction=0.99)      # Flow-GRPO: int(9.9) = 9 trained steps
    assert sde.all() and train.sum() == 9 and not train[-1]
    assert step_masks(10, timestep_fraction=1.0)[1].all()
    with pytest.raises(ValueError, match="window"):
        step_masks(10, window_size=4, window_start=8)
    with pytest.raises(ValueError, match="timestep_fraction"):
        step_masks(10, timestep_fraction=0.0)


def test_shifted_sigmas_endpoints_and_shift():
    s = shifted_sigmas(4, shift=3.0)
    assert s[0] == 1 and s[-1] == 0 and (s[:-1] > s[1:]).all()
    assert s[2].item() == pytest.approx(3 * 0.5 / (1 + 2 * 0.5))
