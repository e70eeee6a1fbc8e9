"""JPEG (in)compressibility: kB at quality 95, noise > flat, the two rewards are negatives."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from flowrl.registry import REWARDS
from flowrl.rewards.jpeg import jpeg_size_kb, to_uint8_images


def test_registered_and_not_differentiable():
    for name in ("jpeg_incompressibility", "jpeg_compressibility"):
        assert name in REWARDS.names()
        assert REWARDS.meta(name) == {"domain": "image", "differentiable": False}


def test_size_matches_pil_bytes():
    img = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    assert jpeg_size_kb(img, 95) == pytest.approx(len(buf.getvalue()) / 1000)


def test_to_uint8_rounds_and_clamps():
    x = torch.tensor([-1.0, 0.0, 0.5, 1.0, 2.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    (img,) = to_uint8_images(x)
    assert img.shape == (1, 5, 3) and img.dtype == np.uint8
    assert img[0, :, 0].tolist() == [0, 0, 128, 255, 255]
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        to_uint8_images(torch.zeros(2, 4))


def test_noise_is_less_compressible_than_flat():
    torch.manual_seed(0)
    samples = torch.stack([torch.full((3, 64, 64), 0.5), torch.rand(3, 64, 64)])
    inc = REWARDS.build("jpeg_incompressibility", torch.device("cpu"))
    comp = REWARDS.build("jpeg_compressibility", torch.device("cpu"))
    s_inc = inc(samples, ["", ""], [{}, {}])
    assert s_inc.shape == (2,) and s_inc.dtype == torch.float32
    assert s_inc[1] > 5 * s_inc[0] > 0
    assert torch.equal(comp(samples, ["", ""], [{}, {}]), -s_inc)
    assert inc(samples.double().requires_grad_(), ["", ""], [{}, {}]).shape == (2,)


def test_quality_option():
    samples = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    low = REWARDS.build("jpeg_incompressibility", "cpu", quality=10)(samples, [""], [{}])
    high = REWARDS.build("jpeg_incompressibility", "cpu")(samples, [""], [{}])
    assert low < high
    with pytest.raises(ValueError, match="quality"):
        REWARDS.build("jpeg_incompressibility", "cpu", quality=0)
