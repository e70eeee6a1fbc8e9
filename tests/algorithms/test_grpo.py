"""Flow-GRPO's loss pieces with hand-computed values: the KL to the reference in both forms, the
CFG option of training re-evaluation, and the option checks."""
import pytest
import torch

from flowrl.algorithms.grpo import GRPO, cond_of, reference_kl, step_log_prob
from flowrl.batch import Batch
from flowrl.sampling.rollout import RolloutSettings

from _linear_policy import LinearPolicy


def _setup(kind="sde", cps_log_prob="exact"):
    # one sample, two elements x = (1, 2) at sigma 0.5 -> 0.4 (schedule 1, 0.9, 0.5, 0.4, 0), a = 0.7
    sigmas = torch.tensor([1.0, 0.9, 0.5, 0.4, 0.0])
    mask = torch.tensor([False, False, True, False])
    st = RolloutSettings(sigmas, mask, mask, 0.7, kind, 1.0, 1.0, cps_log_prob)
    latents = torch.zeros(1, 5, 2)
    latents[0, 2] = torch.tensor([1.0, 2.0])
    latents[0, 3] = torch.tensor([0.5, 1.5])
    return Batch({"latents": latents}), st


@pytest.mark.parametrize("form,expected", [("exact", 0.3954145), ("flow_grpo", 0.03954145)])
def test_reference_kl_value_in_both_forms(form, expected):
    # mean - mean_ref = v (1 + std_t^2 (1 - s) / (2 s)) dt = (1, 2) * 1.245 * (-0.1); mean square
    # = 0.1245^2 * (1 + 4) / 2 = 0.038750625. std_t = 0.7 sqrt(0.5/0.5) = 0.7, |dt| = 0.1:
    # exact: / (2 * 0.49 * 0.1) = 0.3954145; Flow-GRPO's: / (2 * 0.49) = 0.03954145 (= exact x |dt|)
    policy = LinearPolicy(1.0)
    batch, st = _setup()
    out = step_log_prob(policy, batch, 2, st)
    kl = reference_kl(policy, batch, 2, st, out, form)
    assert kl.item() == pytest.approx(expected, rel=1e-5)


def test_reference_kl_cps_forms_agree():
    # CPS: Flow-GRPO's std_dev_t IS the transition std 0.4 sin(0.35 pi), so both forms coincide.
    # mean - mean_ref = (x0^ - x0^_ref) 0.6 + (x1^ - x1^_ref) sqrt(0.16 - std^2) with v = x, v_ref = 0:
    # = x (-0.5 * 0.6 + 0.5 * 0.1815962) = -0.2092019 x; KL = 0.2092019^2 * 2.5 / (2 * 0.1270229)
    policy = LinearPolicy(1.0)
    batch, st = _setup("cps")
    out = step_log_prob(policy, batch, 2, st)
    exact = reference_kl(policy, batch, 2, st, out, "exact")
    flow = reference_kl(policy, batch, 2, st, out, "flow_grpo")
    assert exact.item() == pytest.approx(0.2092019 ** 2 * 2.5 / (2 * 0.1270229), rel=1e-5)
    assert flow.item() == pytest.approx(exact.item(), rel=1e-6)


def test_loss_terms_add_beta_times_the_flow_grpo_kl():
    # on-policy (old log-prob = current): ratio 1, advantage 2, weight 1 -> policy loss -2;
    # + beta 0.5 * KL 0.03954145 (Flow-GRPO's form, the default)
    policy = LinearPolicy(1.0)
    batch, st = _setup()
    lp = step_log_prob(policy, batch, 2, st).log_prob.detach()
    log_probs = torch.zeros(1, 4)
    log_probs[:, 2] = lp
    batch["log_probs"], batch["advantages"], batch["weights"] = log_probs, torch.tensor([2.0]), torch.ones(1)
    (loss, metrics), = list(GRPO(clip_range=0.1, beta=0.5).loss_terms(policy, batch, st))
    assert loss.item() == pytest.approx(-2 + 0.5 * 0.03954145, rel=1e-5)
    assert metrics["kl"] == pytest.approx(0.03954145, rel=1e-5)


def test_bad_kl_form_is_refused():
    with pytest.raises(ValueError, match="algorithm.kl must be 'exact' or 'flow_grpo'"):
        GRPO(kl="flowgrpo")


def test_step_log_prob_scores_the_stored_next_state_by_hand():
    # mean = x (1 - 0.049) + v (1.245)(-0.1) with v = x: 0.8265 x = (0.8265, 1.653); x' = (0.5, 1.5);
    # std = 0.7 sqrt(0.1); log N averaged over the 2 elements = -0.0742937
    batch, st = _setup()
    assert step_log_prob(LinearPolicy(1.0), batch, 2, st).log_prob.item() == pytest.approx(-0.0742937, rel=1e-5)


def test_cond_of_strips_the_prefix():
    b = Batch({"latents": torch.zeros(2, 1), "cond.prompt_embeds": torch.ones(2, 3), "rewards": torch.zeros(2)})
    out = cond_of(b)
    assert list(out) == ["prompt_embeds"] and torch.equal(out["prompt_embeds"], torch.ones(2, 3))
