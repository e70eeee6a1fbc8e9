"""The placebo reward: a fixed hash of the sample's own bytes, uniform in [0, 1), blind to content."""
import hashlib

import pytest
import torch

from flowrl.registry import REWARDS
from flowrl.rewards.placebo import placebo_scores, sample_bytes

CPU = torch.device("cpu")


def test_registered_for_any_domain_and_not_differentiable():
    assert REWARDS.meta("placebo") == {"domain": "any", "differentiable": False}


def test_hand_computed_score_of_a_black_one_pixel_image():
    # bytes = seed 0 as 8 little-endian bytes, then the 3 uint8 channels of one black pixel
    digest = hashlib.sha256(bytes(8) + bytes(3)).digest()
    want = int.from_bytes(digest[:8], "little") / 2.0 ** 64
    got = placebo_scores(torch.zeros(1, 3, 1, 1), seed=0)
    assert got.dtype == torch.float32 and got.shape == (1,)
    assert got.item() == pytest.approx(want, abs=1e-7)


def test_images_are_read_as_the_uint8_pixels_other_image_rewards_see():
    x = torch.tensor([-1.0, 0.0, 0.5, 1.0, 2.0]).view(1, 1, 5).expand(3, 1, 5)
    assert list(sample_bytes(x)[:5]) == [0, 0, 128, 255, 255]
    a = torch.full((1, 3, 4, 4), 0.25)      # 63.75 -> 64
    same = a + 0.2 / 255                     # 63.95 -> 64: the same uint8 pixels
    other = a.clone()
    other[0, 1, 2, 3] += 1.0 / 255           # 64.75 -> 65 in one channel of one pixel
    s = placebo_scores(torch.cat([a, same, other]))
    assert s[0] == s[1] and s[0] != s[2]


def test_deterministic_seeded_and_blind_to_the_prompt():
    fn = REWARDS.build("placebo", CPU)
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    a = fn(x, ["a red circle"] * 6, [{}] * 6)
    b = fn(x, ["two blue squares"] * 6, [{"text": "x"}] * 6)
    assert torch.equal(a, b)
    assert not torch.equal(a, REWARDS.build("placebo", CPU, seed=1)(x, [""] * 6, [{}] * 6))


def test_uniform_and_uncorrelated_with_brightness():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2000, 3, 2, 2, generator=g)
    s = placebo_scores(x)
    assert ((s >= 0) & (s < 1)).all()
    # U(0, 1): mean 1/2 (SE 0.0065), variance 1/12; each decile holds ~200 (binomial SD 13.4)
    assert abs(s.mean().item() - 0.5) < 0.03 and abs(s.var().item() - 1 / 12) < 0.01
    counts = torch.histc(s, bins=10, min=0, max=1)
    assert counts.min() > 140 and counts.max() < 260
    brightness = x.mean(dim=(1, 2, 3))
    r = torch.corrcoef(torch.stack([s, brightness]))[0, 1].item()
    assert abs(r) < 0.1                      # SE of r at n = 2000: 0.022


def test_non_image_samples_use_their_float_values():
    pts = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0 + 1e-6]])
    s = placebo_scores(pts)
    assert s[0] == s[1] and s[0] != s[2]


@pytest.mark.parametrize("seed", ["0", 1.5, True, 2 ** 63])
def test_a_bad_seed_names_the_option_to_fix(seed):
    with pytest.raises(ValueError, match="Fix reward.options.placebo.seed"):
        REWARDS.build("placebo", CPU, seed=seed)
