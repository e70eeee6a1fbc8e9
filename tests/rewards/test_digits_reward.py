"""digit_classifier / digit_confidence on real held-out sklearn digits: the asked-for digit scores
high, the others and noise low, gradients reach the pixels; JPEG rewards take 8x8 images too."""
import pytest
import torch

from flowrl.policies.image_flow import digits_split
from flowrl.registry import REWARDS
from flowrl.rewards import build_reward
from flowrl.rewards.digits import digit_classifier, digit_confidence  # registers the rewards


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def test_images():
    """Held-out digits as the policy decodes them: (N, 3, 8, 8) in [0, 1], labels (N,)."""
    _, _, x, y = digits_split(0)
    return ((x + 1) / 2).repeat(1, 3, 1, 1), y


def test_the_asked_for_digit_scores_high_and_the_others_low(test_images):
    images, y = test_images
    fn = digit_classifier("cpu")
    right = fn(images, [str(int(k)) for k in y], None)
    assert right.mean() > 0.9 and (right > 0.5).float().mean() > 0.95
    for k in range(10):   # measured: 0.78 (eights, the hardest) to 0.99; others at most 0.022
        mine = images[y == k]
        assert fn(mine, [str(k)] * len(mine), None).mean() > 0.7, k
        for j in set(range(10)) - {k}:
            assert fn(mine, [str(j)] * len(mine), None).mean() < 0.05, (k, j)


def test_target_overrides_the_prompt_and_noise_is_not_a_digit(test_images):
    images, y = test_images
    threes = images[y == 3]
    assert digit_classifier("cpu", target=3)(threes, ["7"] * len(threes), None).mean() > 0.8
    assert digit_classifier("cpu", target=-1)(threes, ["7"] * len(threes), None).mean() < 0.05
    noise = torch.rand((64, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    assert digit_classifier("cpu")(noise, ["3"] * 64, None).mean() < 0.1
    conf = digit_confidence("cpu")
    assert conf(noise, [""] * 64, None).mean() < 0.2 and conf(images, [""] * len(images), None).mean() > 0.9


def test_gradient_flows_from_scores_to_pixels(test_images):
    images = test_images[0][:8].clone().requires_grad_(True)
    scores = digit_classifier("cpu")(images, list("01234567"), None)
    assert scores.requires_grad
    scores.sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_bad_prompts_and_options_say_what_to_change():
    images = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match="target=<0..9>"):
        digit_classifier("cpu")(images, ["a cat"], None)
    with pytest.raises(ValueError, match="use a digit 0..9"):
        digit_classifier("cpu", target=12)
    with pytest.raises(ValueError, match="images"):
        digit_classifier("cpu")(torch.zeros(2, 64), ["1", "2"], None)


def test_registered_for_images_and_jpeg_takes_8x8_images(test_images):
    images, _ = test_images
    for name in ("digit_classifier", "digit_confidence"):
        assert REWARDS.meta(name) == {"domain": "image", "differentiable": True}
    fn = build_reward({"digit_classifier": 1.0, "jpeg_compressibility": 0.1}, {}, "cpu")
    _, y = test_images
    total, parts = fn(images[:4], [str(int(k)) for k in y[:4]], [{}] * 4)
    assert (parts["jpeg_compressibility"] < 0).all()    # minus the JPEG size in kB
    assert (parts["jpeg_compressibility"] > -2).all()   # an 8x8 JPEG is well under 2 kB
    assert (parts["digit_classifier"] > 0.5).all()      # real digits, asked for by their own label
    assert torch.allclose(total, parts["digit_classifier"] + 0.1 * parts["jpeg_compressibility"])
