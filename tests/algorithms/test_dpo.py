"""D3PO and Diffusion-DPO: the losses, pairing from rewards, the preference-file route, clear errors."""
import json
import math

import numpy as np
import pytest
import torch

from flowrl.algorithms.dpo import (D3PO, DiffusionDPO, d3po_loss, diffusion_dpo_loss, dpo_pair_loss,
                                   encode_pairs, load_preference_file, pair_index, pair_preferences)
from flowrl.batch import Batch
from flowrl.config import ConfigError
from flowrl.policies.toy2d import Toy2DPolicy, VelocityMLP
from flowrl.registry import ALGORITHMS
from flowrl.sampling.rollout import RolloutSettings, rollout

from _linear_policy import LinearPolicy

LOG2 = math.log(2.0)


def tiny_policy(seed=0):
    torch.manual_seed(seed)
    return Toy2DPolicy(VelocityMLP(2, 16, 2), torch.device("cpu"))


# ------------------------------------------------------------------------------------------- D3PO
def test_d3po_loss_is_log2_when_policy_equals_reference():
    lp = torch.randn(5, 2)
    signs = torch.tensor([[1.0, -1.0]]).repeat(5, 1)
    loss, log_rho, clipped = d3po_loss(lp, lp.clone(), signs, beta=0.1, eps=0.1)
    assert loss.item() == pytest.approx(LOG2, abs=1e-7)
    assert not clipped.any() and torch.equal(log_rho, torch.zeros(5, 2))


def test_d3po_loss_falls_when_the_winner_gains_and_rises_when_the_loser_gains():
    ref, signs = torch.zeros(1, 2), torch.tensor([[1.0, -1.0]])        # column 0 is the winner
    winner_up, _, _ = d3po_loss(torch.tensor([[0.05, 0.0]]), ref, signs, 0.1, 0.1)
    loser_up, _, _ = d3po_loss(torch.tensor([[0.0, 0.05]]), ref, signs, 0.1, 0.1)
    assert winner_up.item() < LOG2 < loser_up.item()
    lp = torch.zeros(1, 2, requires_grad=True)
    d3po_loss(lp, ref, signs, 0.1, 0.1)[0].backward()
    assert lp.grad[0, 0] < 0 < lp.grad[0, 1]        # descent raises the winner, lowers the loser


def test_d3po_gradient_is_zero_once_the_ratio_leaves_its_clamp():
    ref, signs = torch.zeros(1, 2), torch.tensor([[1.0, -1.0]])
    lp = torch.tensor([[0.2, -0.2]], requires_grad=True)             # rho = e^0.2 > 1.1, e^-0.2 < 0.9
    loss, _, clipped = d3po_loss(lp, ref, signs, 0.1, 0.1)
    loss.backward()
    assert clipped.all() and torch.equal(lp.grad, torch.zeros(1, 2))
    inside = torch.tensor([[0.05, 0.0]], requires_grad=True)
    d3po_loss(inside, ref, signs, 0.1, 0.1)[0].backward()
    assert (inside.grad != 0).all()


def test_tied_pairs_have_weight_zero_in_the_loss():
    lp = torch.tensor([[0.05, 0.0], [0.05, 0.0]], requires_grad=True)
    loss, _, _ = d3po_loss(lp, torch.zeros(2, 2), torch.tensor([[1.0, -1.0], [0.0, 0.0]]), 0.1, 0.1,
                           weights=torch.tensor([1.0, 0.0]))
    loss.backward()
    assert torch.equal(lp.grad[1], torch.zeros(2))


def _sde_settings(num_steps=4):
    sigmas = torch.linspace(1, 0, num_steps + 1)
    mask = torch.ones(num_steps, dtype=torch.bool)
    mask[-1] = False                                 # as Flow-GRPO: the last step is not trained
    return RolloutSettings(sigmas, mask, mask, 0.7, "sde", 1.0)


def _pair_batch(policy, st, rewards, same_noise=True):
    n = len(rewards)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(n // 2, 2, generator=g).repeat_interleave(2, 0) if same_noise else torch.randn(n, 2)
    with torch.no_grad():
        traj = rollout(lambda x, s: policy.velocity(x, s), noise, st.sigmas, st.sde_mask, 0.7, "sde", g)
    batch = Batch({"latents": traj.latents, "log_probs": traj.log_probs, "rewards": torch.tensor(rewards),
                   "group_ids": torch.arange(n // 2).repeat_interleave(2), "prompt_ids": torch.zeros(n)})
    return batch, Batch({k: batch[k] for k in ("rewards", "group_ids", "prompt_ids")})


def test_d3po_loss_terms_are_log2_at_the_reference_one_per_trained_step():
    policy, st = tiny_policy(), _sde_settings()
    algo = ALGORITHMS.build("d3po", beta=0.1, eps=0.1)
    batch, gathered = _pair_batch(policy, st, [0.0, 1.0, 3.0, 2.0, 5.0, 5.0])
    algo.prepare(policy, batch, gathered, slice(0, 6))
    assert batch["pref_signs"].tolist() == [-1, 1, 1, -1, 0, 0] and batch["weights"][-2:].sum() == 0
    terms = list(algo.loss_terms(policy, batch, st))
    assert len(terms) == algo.num_loss_terms(3) == 3
    for loss, m in terms:   # weighted mean over 3 pairs, one a tie: 2/3 log 2
        assert loss.item() == pytest.approx(2 / 3 * LOG2, abs=1e-6) and m["log_ratio_abs"] < 1e-6
    terms[0][0].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.net.parameters())


def test_pairs_need_group_size_2_and_the_same_initial_noise():
    with pytest.raises(ConfigError, match="exactly 2 samples.*sample.group_size=2.*same_latent=True"):
        pair_index(torch.tensor([0, 0, 0, 1]))
    policy, st = tiny_policy(), _sde_settings()
    batch, gathered = _pair_batch(policy, st, [0.0, 1.0, 2.0, 3.0], same_noise=False)
    with pytest.raises(ConfigError, match="different initial noise.*sample.same_latent=True"):
        D3PO().prepare(policy, batch, gathered, slice(0, 4))


def test_pair_preferences_winner_ties_and_margin():
    signs, w = pair_preferences(torch.tensor([1.0, 2.0, 0.3, 0.3, 0.9, 0.5]), torch.tensor([7, 7, 3, 3, 5, 5]))
    assert signs.tolist() == [-1, 1, 0, 0, 1, -1] and w.tolist() == [1, 1, 0, 0, 1, 1]
    _, w = pair_preferences(torch.tensor([1.0, 2.0, 0.9, 0.5]), torch.tensor([0, 0, 1, 1]), tie_margin=0.5)
    assert w.tolist() == [1, 1, 0, 0]


@pytest.mark.parametrize("cls,kw", [(D3PO, {"eps": 1.5}), (D3PO, {"ratio_to": "old"}),
                                    (DiffusionDPO, {"beta": 0.0}), (DiffusionDPO, {"num_sigmas": 0})])
def test_bad_options_are_refused(cls, kw):
    with pytest.raises(ValueError):
        cls(**kw)


# ---------------------------------------------------------------------------------- Diffusion-DPO
def test_diffusion_dpo_loss_is_log2_at_the_reference_and_falls_when_the_winner_fits_better():
    e = torch.rand(4)
    loss, margin = diffusion_dpo_loss(e, e.clone(), e + 1, e + 1, beta=100.0)
    assert loss.item() == pytest.approx(LOG2) and torch.equal(margin, torch.zeros(4))
    better, _ = diffusion_dpo_loss(e - 0.01, e, e + 1, e + 1, beta=100.0)
    assert better.item() < LOG2


def test_diffusion_dpo_on_a_policy_is_log2_at_theta_equal_ref():
    policy = tiny_policy()
    g = torch.Generator().manual_seed(1)
    x_w, x_l, noise = (torch.randn(8, 2, generator=g) for _ in range(3))
    loss, margin, _ = dpo_pair_loss(policy, x_w, x_l, {}, torch.rand(8, generator=g), noise, beta=100.0)
    assert loss.item() == pytest.approx(LOG2, abs=1e-6) and margin.abs().max() < 1e-6


def test_diffusion_dpo_loss_terms_through_the_algorithm():
    policy, st = tiny_policy(), _sde_settings()
    algo = ALGORITHMS.build("diffusion_dpo", beta=100.0, num_sigmas=3)
    batch, gathered = _pair_batch(policy, st, [0.0, 1.0, 3.0, 2.0])
    algo.prepare(policy, batch, gathered, slice(0, 4))
    (loss, m), = list(algo.loss_terms(policy, batch, st))
    assert algo.num_loss_terms(3) == 1 and loss.item() == pytest.approx(LOG2, abs=1e-6)
    assert m["dpo_margin"] == pytest.approx(0.0, abs=1e-6)


def test_diffusion_dpo_pair_loss_hand_computed_away_from_the_reference():
    # v = x (reference v = 0); winner x_w = 1, loser x_l = -1, shared noise 0.5, sigma 0.5, beta 2.
    # x_sigma = (1 - sigma) x0 + sigma noise: 0.75 and -0.25; target noise - x0: -0.5 and 1.5.
    # errors: e_w = (0.75 + 0.5)^2 = 1.5625, e_ref_w = 0.25, e_l = (-0.25 - 1.5)^2 = 3.0625, e_ref_l = 2.25
    # margin = -[(1.5625 - 0.25) - (3.0625 - 2.25)] = -0.5; loss = softplus(-beta/2 * margin) = log(1 + e^0.5)
    t = lambda v: torch.tensor([[v]])   # noqa: E731
    loss, margin, err_w = dpo_pair_loss(LinearPolicy(1.0), t(1.0), t(-1.0), {}, torch.tensor([0.5]), t(0.5),
                                        beta=2.0)
    assert err_w.item() == pytest.approx(1.5625) and margin.item() == pytest.approx(-0.5)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(0.5)), rel=1e-6)


# ------------------------------------------------------------------------------ preference files
def _write_pairs(tmp_path, rows):
    path = tmp_path / "prefs" / "pairs.jsonl"
    path.parent.mkdir(exist_ok=True)
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_preference_file_naming_a_missing_image_fails_with_file_and_line(tmp_path):
    (tmp_path / "prefs").mkdir()
    np.save(tmp_path / "prefs" / "a.npy", np.zeros(2, np.float32))
    path = _write_pairs(tmp_path, [{"prompt": "", "image_a": "a.npy", "image_b": "a.npy", "preferred": "a"},
                                   {"prompt": "", "image_a": "a.npy", "image_b": "gone.png", "preferred": "b"}])
    with pytest.raises(FileNotFoundError, match=r"pairs.jsonl:2: image_b 'gone.png' not found"):
        load_preference_file(path)
    bad = _write_pairs(tmp_path, [{"prompt": "", "image_a": "a.npy", "image_b": "a.npy", "preferred": "c"}])
    with pytest.raises(ValueError, match="pairs.jsonl:1: preferred must be"):
        load_preference_file(bad)


def test_points_are_their_own_latents_and_dpo_trains_on_the_file(tmp_path):
    """toy2d: each 'image' is a 2-D point (.npy). Winners lie up, losers down: Diffusion-DPO on the
    file's latents starts at log 2 and falls as it fits the preference."""
    d, rows, g = tmp_path / "prefs", [], np.random.default_rng(0)
    d.mkdir()
    for i in range(16):
        np.save(d / f"up{i}.npy", (g.normal(size=2) * 0.3 + [0, 1]).astype(np.float32))
        np.save(d / f"down{i}.npy", (g.normal(size=2) * 0.3 + [0, -1]).astype(np.float32))
        a, b = (f"up{i}.npy", f"down{i}.npy") if i % 2 else (f"down{i}.npy", f"up{i}.npy")
        rows.append({"prompt": "", "image_a": a, "image_b": b, "preferred": "a" if i % 2 else "b"})
    policy = tiny_policy()
    x_w, x_l, prompts = encode_pairs(policy, load_preference_file(_write_pairs(tmp_path, rows)))
    assert x_w.shape == (16, 2) and (x_w[:, 1] > x_l[:, 1]).float().mean() > 0.9 and prompts == [""] * 16
    opt = torch.optim.Adam(policy.net.parameters(), lr=3e-3)
    tg = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        loss, _, _ = dpo_pair_loss(policy, x_w, x_l, {}, torch.rand(16, generator=tg),
                                   torch.randn(16, 2, generator=tg), beta=100.0)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[0] == pytest.approx(LOG2, abs=1e-6) and np.mean(losses[-5:]) < LOG2 - 0.05


def test_images_go_through_encode_images_when_the_policy_has_it(tmp_path):
    from PIL import Image
    d = tmp_path / "prefs"
    d.mkdir()
    for name, value in [("a.png", 255), ("b.png", 0)]:
        Image.new("RGB", (8, 8), (value, value, value)).save(d / name)
    path = _write_pairs(tmp_path, [{"prompt": "a cat", "image_a": "a.png", "image_b": "b.png", "preferred": "b"}])

    class ImagePolicy:
        sample_shape = (4, 1, 1)

        def encode_images(self, images):
            assert images.shape == (1, 3, 8, 8) and 0 <= images.min() and images.max() <= 1
            return images.mean(dim=(1, 2, 3)).view(-1, 1, 1, 1).expand(-1, 4, 1, 1)

    x_w, x_l, prompts = encode_pairs(ImagePolicy(), load_preference_file(path))
    assert x_w.shape == (1, 4, 1, 1) and x_w.max() == 0 and x_l.min() == 1 and prompts == ["a cat"]
    with pytest.raises(ValueError, match="sample_shape"):
        encode_pairs(tiny_policy(), load_preference_file(path))   # an image is no 2-D point


def test_epoch_pairs_walk_the_file_once_per_pass_and_ranks_are_disjoint():
    from flowrl.algorithms.preferences import epoch_pairs
    seen = torch.cat([epoch_pairs(10, 2, e, r, 2, seed=0) for e in range(5) for r in range(2)])
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))
    assert not torch.equal(seen[:10], seen[10:])            # a fresh permutation each pass
    assert torch.equal(epoch_pairs(10, 2, 3, 1, 2, seed=0), epoch_pairs(10, 2, 3, 1, 2, seed=0))


def test_preference_paths_must_stay_in_the_file_folder(tmp_path):
    """../, absolute paths and symlinks out of the folder are refused unless allowed."""
    (tmp_path / "prefs").mkdir()
    np.save(tmp_path / "prefs" / "a.npy", np.zeros(2, np.float32))
    np.save(tmp_path / "outside.npy", np.ones(2, np.float32))
    (tmp_path / "prefs" / "link.npy").symlink_to(tmp_path / "outside.npy")
    row = {"prompt": "", "image_a": "a.npy", "preferred": "a"}
    for image_b in ("../outside.npy", str(tmp_path / "outside.npy"), "link.npy", "../../../../etc/passwd"):
        path = _write_pairs(tmp_path, [{**row, "image_b": image_b}])
        with pytest.raises(ValueError, match=r"pairs.jsonl:1: image_b .* points outside .*preference_allow_outside"):
            load_preference_file(path)
    path = _write_pairs(tmp_path, [{**row, "image_b": "../outside.npy"}])
    (pair,) = load_preference_file(path, allow_outside=True)
    assert pair.loser == (tmp_path / "outside.npy").resolve()
    algo = ALGORITHMS.build("diffusion_dpo", pairs_from="file", preference_file=str(path),
                            preference_allow_outside=True)
    assert len(algo.pairs) == 1


def test_preference_samples_of_two_shapes_or_with_nan_are_refused_on_load(tmp_path):
    (tmp_path / "prefs").mkdir()
    np.save(tmp_path / "prefs" / "a.npy", np.zeros(2, np.float32))
    np.save(tmp_path / "prefs" / "b.npy", np.zeros(3, np.float32))
    np.save(tmp_path / "prefs" / "n.npy", np.array([0.0, np.inf], np.float32))
    path = _write_pairs(tmp_path, [{"prompt": "", "image_a": "a.npy", "image_b": "b.npy", "preferred": "a"}])
    with pytest.raises(ValueError, match=r"pairs.jsonl:1: b.npy is a tensor of shape \(3,\) but a.npy"):
        load_preference_file(path)
    path = _write_pairs(tmp_path, [{"prompt": "", "image_a": "a.npy", "image_b": "n.npy", "preferred": "a"}])
    with pytest.raises(ValueError, match=r"n.npy: 1 NaN / inf"):
        load_preference_file(path)


def test_diffusion_dpo_loss_terms_hand_computed_away_from_the_reference():
    # one pair, the LOSER stored first (rewards 0, 1): final samples -1 (loser) and 1 (winner);
    # v = x, v_ref = 0. noise and sigma are the algorithm's draws in this order: randn(P, 1), rand(P).
    latents = torch.tensor([[[0.3], [-1.0]], [[0.3], [1.0]]])          # (2 samples, 2 states, 1)
    batch = Batch({"latents": latents, "rewards": torch.tensor([0.0, 1.0]), "group_ids": torch.tensor([0, 0]),
                   "prompt_ids": torch.zeros(2)})
    algo = ALGORITHMS.build("diffusion_dpo", beta=2.0, num_sigmas=1)
    algo.prepare(None, batch, Batch({k: batch[k] for k in ("rewards", "group_ids", "prompt_ids")}), slice(0, 2))
    algo._generator.manual_seed(3)
    g = torch.Generator().manual_seed(3)
    n, s = torch.randn(1, 1, generator=g).item(), torch.rand(1, generator=g).item()
    def errs(x0):   # (e, e_ref) at x_sigma = (1 - s) x0 + s n, target n - x0
        xt, u = (1 - s) * x0 + s * n, n - x0
        return (xt - u) ** 2, u ** 2
    (ew, erw), (el, erl) = errs(1.0), errs(-1.0)
    margin = -((ew - erw) - (el - erl))
    (loss, m), = list(algo.loss_terms(LinearPolicy(1.0), batch, None))
    assert m["dpo_margin"] == pytest.approx(margin, rel=1e-5)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-margin)), rel=1e-5)   # softplus(-beta/2 m)


def test_file_pairs_of_a_rank_get_group_ids_after_every_earlier_rank_and_epoch(tmp_path):
    # 8 pairs, 2 per rank per epoch, 2 ranks: epoch 1, rank 1 owns groups (1 * 2 + 1) * 2 + (0, 1) = 6, 7
    d = tmp_path / "prefs"
    d.mkdir()
    for i in range(8):
        np.save(d / f"p{i}.npy", np.full(2, float(i), np.float32))
    path = _write_pairs(tmp_path, [{"prompt": "", "image_a": f"p{i}.npy", "image_b": f"p{(i + 1) % 8}.npy",
                                    "preferred": "a"} for i in range(8)])
    algo = ALGORITHMS.build("diffusion_dpo", pairs_from="file", preference_file=str(path))
    batch = algo.collect(tiny_policy(), epoch=1, rank=1, world_size=2, num_samples=4)
    assert batch["group_ids"].tolist() == [6, 6, 7, 7] and batch["group_ids"].dtype == torch.long
    assert batch["rewards"].tolist() == [1.0, 0.0, 1.0, 0.0]


def test_grey_images_are_read_as_one_channel_for_a_one_channel_policy(tmp_path):
    from PIL import Image
    d = tmp_path / "prefs"
    d.mkdir()
    Image.new("L", (2, 2), 51).save(d / "a.png")      # 51 / 255 = 0.2
    Image.new("RGB", (2, 2), (204, 204, 204)).save(d / "b.png")   # RGB read back as grey: 0.8
    path = _write_pairs(tmp_path, [{"prompt": "", "image_a": "a.png", "image_b": "b.png", "preferred": "a"}])

    class GreyPolicy:                                  # no encode_images: samples are its latents
        sample_shape = (1, 2, 2)

    x_w, x_l, _ = encode_pairs(GreyPolicy(), load_preference_file(path))
    assert x_w.shape == x_l.shape == (1, 1, 2, 2)
    assert torch.allclose(x_w, torch.full_like(x_w, 0.2)) and torch.allclose(x_l, torch.full_like(x_l, 0.8))


def test_an_image_for_a_four_channel_policy_is_refused(tmp_path):
    from PIL import Image

    from flowrl.algorithms.preferences import read_sample
    Image.new("RGB", (2, 2)).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match="1 or 3 channels.*have 4.*npy"):
        read_sample(tmp_path / "a.png", channels=4)
