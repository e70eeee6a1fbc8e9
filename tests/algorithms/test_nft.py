"""DiffusionNFT: the loss against hand-computed values, r from advantages, and prepare/loss_terms
on a tiny policy (v_old is exact and the update moves towards the high-reward samples)."""
import pytest
import torch
from torch import nn

from flowrl.algorithms.nft import NFT, draw_step_sigmas, nft_loss, optimality_probability
from flowrl.batch import Batch
from flowrl.registry import ALGORITHMS
from flowrl.runs import comparable_rows


def test_beta_one_reduces_to_positive_and_mirrored_negative_fm():
    v, v_old, u = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.5]])
    for r in (0.0, 0.3, 1.0):
        loss, pos, neg = nft_loss(v, v_old, u, torch.tensor([r]), beta=1.0)
        # pos = mean((v - u)^2) = (0.25 + 2.25) / 2; neg: 2 v_old - v = [-1, 0] -> mean([2.25, 0.25])
        assert pos.item() == pytest.approx(1.25) and neg.item() == pytest.approx(1.25)
        assert loss.item() == pytest.approx(r * 1.25 + (1 - r) * 1.25)
    v2 = torch.tensor([[3.0, 1.0]])          # v - u = [2.5, 0.5]; 2 v_old - v - u = [-3.5, 0.5]
    loss, pos, neg = nft_loss(v2, v_old, u, torch.tensor([0.25]), beta=1.0)
    assert pos.item() == pytest.approx((6.25 + 0.25) / 2) and neg.item() == pytest.approx((12.25 + 0.25) / 2)
    assert loss.item() == pytest.approx(0.25 * 3.25 + 0.75 * 6.25)


def test_general_beta_by_hand():
    v, v_old, u = torch.tensor([[2.0]]), torch.tensor([[1.0]]), torch.tensor([[0.0]])
    beta, r = 0.5, 0.8
    loss, pos, neg = nft_loss(v, v_old, u, torch.tensor([r]), beta)
    assert pos.item() == pytest.approx(1.5 ** 2)       # v+ = 0.5 * 1 + 0.5 * 2
    assert neg.item() == pytest.approx(0.5 ** 2)       # v- = 1.5 * 1 - 0.5 * 2
    assert loss.item() == pytest.approx((r * 2.25 + (1 - r) * 0.25) / beta)


def test_r_one_is_flow_matching_and_its_gradient_at_v_old_does_not_depend_on_beta():
    g = torch.Generator().manual_seed(0)
    v_old, u = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    ones = torch.ones(5)
    v = v_old.clone().requires_grad_(True)
    fm = ((v - u) ** 2).mean(dim=1)
    grad_fm, = torch.autograd.grad(fm.sum(), v)
    loss1, _, _ = nft_loss(v, v_old, u, ones, beta=1.0)
    assert torch.allclose(loss1, fm)                   # beta = 1: exactly FM on the samples
    for beta in (0.1, 1.0, 3.0):
        loss, _, _ = nft_loss(v, v_old, u, ones, beta)
        grad, = torch.autograd.grad(loss.sum(), v)
        assert torch.allclose(grad, grad_fm, atol=1e-5)


def test_r_zero_pushes_away_from_the_sample():
    v_old, u = torch.zeros(1, 1), torch.ones(1, 1)     # target above the old prediction
    v = v_old.clone().requires_grad_(True)
    loss, _, _ = nft_loss(v, v_old, u, torch.zeros(1), beta=1.0)
    grad, = torch.autograd.grad(loss.sum(), v)
    assert grad.item() > 0                             # gradient descent moves v away from u


def test_adaptive_weighting_in_x0_space_by_hand():
    v, v_old, u = torch.tensor([[1.0, -3.0]]), torch.zeros(1, 2), torch.zeros(1, 2)
    sigma = torch.tensor([0.5])
    # v+ - u = [1, -3]; x0 error = sigma * that = [0.5, -1.5]: mean sq 1.25, mean abs 1.0
    # v- - u = [-1, 3]: the same numbers
    loss, pos, neg = nft_loss(v, v_old, u, torch.tensor([1.0]), beta=1.0, sigma=sigma, adaptive=True)
    assert pos.item() == pytest.approx(1.25) and neg.item() == pytest.approx(1.25)
    with pytest.raises(ValueError, match="sigma"):
        nft_loss(v, v_old, u, torch.tensor([1.0]), beta=1.0, adaptive=True)
    with pytest.raises(ValueError, match="beta"):
        nft_loss(v, v_old, u, torch.tensor([1.0]), beta=0.0)


def test_v_old_is_detached():
    v_old = torch.zeros(2, 2, requires_grad=True)
    v = torch.ones(2, 2, requires_grad=True)
    loss, _, _ = nft_loss(v, v_old, torch.zeros(2, 2), torch.tensor([0.2, 0.7]), beta=1.0)
    loss.sum().backward()
    assert v_old.grad is None and v.grad is not None


def test_optimality_probability():
    a = torch.tensor([-10.0, -5.0, 0.0, 2.5, 5.0, 7.0])
    assert optimality_probability(a, 5.0).tolist() == pytest.approx([0.0, 0.0, 0.5, 0.75, 1.0, 1.0])


def test_step_sigmas_are_distinct_schedule_levels():
    sig = torch.linspace(1, 0, 11)
    out = draw_step_sigmas(sig, n=4, k=10, generator=torch.Generator().manual_seed(0))
    assert out.shape == (4, 10)
    for row in out:
        assert sorted(row.tolist()) == pytest.approx(sorted(sig[:-1].tolist()))   # 0 never drawn
    many = draw_step_sigmas(sig, 3, 25, torch.Generator().manual_seed(0))   # k > S: with replacement
    levels = set(round(v, 6) for v in sig[:-1].tolist())
    assert many.shape == (3, 25) and {round(v, 6) for v in many.flatten().tolist()} <= levels
    few = draw_step_sigmas(sig, 5, 4, torch.Generator().manual_seed(1))      # k <= S: 4 distinct levels
    assert all(len(set(row.tolist())) == 4 for row in few) and (few > 0).all()


class LinearPolicy:
    """v(x, sigma) = W x + b (a policy with the protocol's methods the algorithm uses)."""
    sample_shape = (2,)

    def __init__(self):
        torch.manual_seed(0)
        self.net = nn.Linear(2, 2)
        self.model = self.net

    def sigmas(self, n):
        return torch.linspace(1, 0, n + 1)

    def velocity(self, x, sigma, cond=None, guidance=None):
        return self.model(x)


def _batch(n=8, steps=4):
    g = torch.Generator().manual_seed(1)
    lat = torch.randn(n, steps + 1, 2, generator=g)
    rewards = torch.linspace(0, 1, n)
    return Batch({"latents": lat, "rewards": rewards, "group_ids": torch.zeros(n, dtype=torch.long),
                  "prompt_ids": torch.zeros(n, dtype=torch.long)})


def test_prepare_stores_exact_v_old_and_loss_terms_count():
    policy, alg = LinearPolicy(), ALGORITHMS.build("nft", beta=1.0, old_batch_size=3)
    assert isinstance(alg, NFT) and alg.sampling == "ode"
    assert alg.num_loss_terms(4) == 4
    batch = _batch()
    gathered = Batch({k: batch[k] for k in ("rewards", "group_ids", "prompt_ids")})
    alg.prepare(policy, batch, gathered, slice(0, 8))
    x0, sig, eps = batch["latents"][:, -1], batch["nft_sigma"], batch["nft_noise"]
    assert sig.shape == (8, 4) and eps.shape == (8, 4, 2) and batch["nft_v_old"].shape == (8, 4, 2)
    xs = (1 - sig[..., None]) * x0[:, None] + sig[..., None] * eps
    with torch.no_grad():
        assert torch.allclose(batch["nft_v_old"], policy.net(xs), atol=1e-6)
    assert batch["nft_r"][0] < 0.5 < batch["nft_r"][-1]          # low reward -> negative branch
    terms = list(alg.loss_terms(policy, batch, None))
    assert len(terms) == 4 and all(t[0].requires_grad for t in terms)
    again = _batch()                                                # same epoch -> same draws
    alg.prepare(policy, again, gathered, slice(0, 8))
    assert torch.equal(again["nft_sigma"], sig) and torch.equal(again["nft_noise"], eps)


def test_first_gradient_equals_weighted_fm_at_old_weights():
    """The trainer-facing loss (beta = 1, adaptive off) equals the written-out form
    A_max * mean[r ||v - u||^2 + (1 - r) ||2 v_old - v - u||^2], gradients included."""
    policy, alg = LinearPolicy(), NFT(beta=1.0, adaptive_weighting=False, timesteps_per_sample=1)
    batch = _batch()
    gathered = Batch({k: batch[k] for k in ("rewards", "group_ids", "prompt_ids")})
    alg.prepare(policy, batch, gathered, slice(0, 8))
    loss, _ = next(iter(alg.loss_terms(policy, batch, None)))
    grads = torch.autograd.grad(loss, list(policy.net.parameters()))
    x0, sig, eps, r = batch["latents"][:, -1], batch["nft_sigma"][:, 0], batch["nft_noise"][:, 0], batch["nft_r"]
    xs = (1 - sig[:, None]) * x0 + sig[:, None] * eps
    v, u = policy.net(xs), eps - x0
    v_old = v.detach()
    ref = 5.0 * (r * ((v - u) ** 2).mean(1) + (1 - r) * ((2 * v_old - v - u) ** 2).mean(1)).mean()
    for a, b in zip(grads, torch.autograd.grad(ref, list(policy.net.parameters()))):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("kw", [{"beta": 0.0}, {"adv_clip_max": -1.0}, {"kl_beta": -0.1},
                                {"timesteps_per_sample": -2}])
def test_bad_options_are_refused(kw):
    with pytest.raises(ValueError, match="algorithm nft"):
        NFT(**kw)


FAST = ["model.base_iters=300", "sample.batch_size=64", "sample.num_batches_per_epoch=2",
        "sample.group_size=128", "train.batch_size=64", "eval.num_samples=200", "eval.batch_size=200",
        "sample.eval_num_steps=10", "sample.num_steps=6", "logging.progress=False"]


def _run(run_dir, *extra, resume=False):
    from flowrl.config import load_config
    from flowrl.trainer import Trainer
    return Trainer(load_config("nft.py:moons", FAST + list(extra)), run_dir, resume=resume).train()


def test_trainer_raises_the_moons_reward(tmp_path):
    summary = _run(tmp_path / "run", "num_epochs=6", "eval.every=0", "checkpoint.every=0")
    assert summary["reward_after"] > summary["reward_before"] + 0.15     # measured: 0.51 -> 0.96


def test_resumed_run_reproduces_the_uninterrupted_one(tmp_path):
    """prepare's (sigma, eps) draws depend only on (seed, epoch, rank): resuming is exact."""
    import json

    def rows(d):
        return comparable_rows([json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()])
    _run(tmp_path / "full", "num_epochs=3", "checkpoint.every=1", "eval.every=0")
    _run(tmp_path / "cut", "num_epochs=2", "checkpoint.every=1", "eval.every=0")
    _run(tmp_path / "cut", "num_epochs=3", "checkpoint.every=1", "eval.every=0", resume=True)
    full, cut = rows(tmp_path / "full"), rows(tmp_path / "cut")
    last = [r for r in full if r["epoch"] == 3]
    assert len(last) == 1 and "policy_loss" in last[0] and last == [r for r in cut if r["epoch"] == 3]


def test_old_velocities_run_in_chunks_of_old_batch_size_rows():
    # 8 samples x 4 draws; old_batch_size 1 -> 8 chunks x 4 forward passes of 1 row each; 3 -> rows 3, 3, 2
    class Counting(LinearPolicy):
        def velocity(self, x, sigma, cond=None, guidance=None):
            self.rows.append(x.shape[0])
            return self.model(x)
    for size, rows in ((1, [1] * 32), (3, [3] * 4 + [3] * 4 + [2] * 4)):
        policy, batch = Counting(), _batch()
        policy.rows = []
        alg = ALGORITHMS.build("nft", beta=1.0, old_batch_size=size)
        alg.num_loss_terms(4)
        alg.prepare(policy, batch, Batch({k: batch[k] for k in ("rewards", "group_ids", "prompt_ids")}), slice(0, 8))
        assert policy.rows == rows
