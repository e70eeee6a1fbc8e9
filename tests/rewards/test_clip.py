"""CLIP rewards on a tiny random CLIPModel saved to disk: values match a hand-made reference,
gradients reach the images, and missing paths name the option to set."""
import numpy as np
import pytest
import torch

from flowrl.policies.tiny_sd3 import tiny_clip_tokenizer
from flowrl.registry import REWARDS
from flowrl.rewards.clip import AestheticMLP, clip_preprocess

PROMPTS = ["a photo of a cat", "a red car on the street"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    path = tmp_path_factory.mktemp("tiny_clip")
    tok = tiny_clip_tokenizer()
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=0,
                         eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=16)
    CLIPModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(path)  # plain CLIPImageProcessor needs torchvision in transformers 5
    return path


@pytest.fixture(scope="module")
def reference(clip_dir):
    """(model, tokenizer, image processor) loaded directly, for hand-made reference scores."""
    from transformers import CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

    return (CLIPModel.from_pretrained(clip_dir).eval(), CLIPTokenizer.from_pretrained(clip_dir),
            CLIPImageProcessorPil.from_pretrained(clip_dir))


def images(b=2, h=32, w=32, seed=0):
    """(b, 3, h, w) in [0, 1], exactly representable in uint8 so PIL preprocessing is lossless."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), generator=gen).float() / 255


def processor_pixels(processor, x):
    pil = [np.round(i.permute(1, 2, 0).numpy() * 255).astype(np.uint8) for i in x]
    return processor(images=pil, return_tensors="pt")["pixel_values"]


def test_registered():
    for name in ("pickscore", "clipscore", "aesthetic"):
        assert REWARDS.meta(name) == {"domain": "image", "differentiable": True}


def test_preprocess_matches_clip_image_processor(reference):
    _, _, processor = reference
    x = images(2, 32, 32)
    ours = clip_preprocess(x, size=32, crop_size=32, mean=processor.image_mean, std=processor.image_std)
    torch.testing.assert_close(ours, processor_pixels(processor, x), atol=1e-5, rtol=0)
    for h, w in [(48, 80), (20, 30), (128, 96)]:  # resize + centre crop: close to PIL's uint8 path
        x = images(2, h, w)
        ours = clip_preprocess(x, size=32, crop_size=32, mean=processor.image_mean, std=processor.image_std)
        ref = processor_pixels(processor, x)
        assert ours.shape == ref.shape == (2, 3, 32, 32)
        assert (ours - ref).abs().mean() < 0.01


def _cosines(reference, x, prompts):
    model, tok, processor = reference
    text = tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=text.input_ids, pixel_values=processor_pixels(processor, x))
    return out.logits_per_image.diag() / model.logit_scale.exp(), out.logits_per_image.diag()


def test_pickscore_matches_reference(clip_dir, reference):
    fn = REWARDS.build("pickscore", torch.device("cpu"), path=str(clip_dir))
    x = images()
    scores = fn(x, PROMPTS, [{}, {}])
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    _, logits = _cosines(reference, x, PROMPTS)
    torch.testing.assert_close(scores, logits / 26, atol=1e-5, rtol=1e-4)


def test_clipscore_matches_reference(clip_dir, reference):
    x = images(seed=1)
    cos, _ = _cosines(reference, x, PROMPTS)
    raw = REWARDS.build("clipscore", "cpu", path=str(clip_dir), w=1.0, clamp_negative=False)
    torch.testing.assert_close(raw(x, PROMPTS, [{}, {}]), cos, atol=1e-5, rtol=1e-4)
    std = REWARDS.build("clipscore", "cpu", path=str(clip_dir))
    torch.testing.assert_close(std(x, PROMPTS, [{}, {}]), 2.5 * cos.clamp(min=0), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("suffix", ["safetensors", "pth"])
def test_aesthetic_matches_reference(clip_dir, reference, tmp_path, suffix):
    torch.manual_seed(0)
    head = AestheticMLP(16).eval()
    head_path = tmp_path / f"head.{suffix}"
    if suffix == "safetensors":
        from safetensors.torch import save_file
        save_file(head.state_dict(), str(head_path))
    else:
        torch.save(head.state_dict(), head_path)
    fn = REWARDS.build("aesthetic", "cpu", path=str(clip_dir), head_path=str(head_path))
    x = images(3)
    model, _, processor = reference
    with torch.no_grad():
        emb = model.get_image_features(pixel_values=processor_pixels(processor, x))
        emb = emb if isinstance(emb, torch.Tensor) else emb.pooler_output
        ref = head(emb / emb.norm(dim=-1, keepdim=True)).squeeze(-1)
    scores = fn(x, [""] * 3, [{}] * 3)
    assert scores.shape == (3,)
    torch.testing.assert_close(scores, ref, atol=1e-5, rtol=1e-4)


def test_aesthetic_head_shape_mismatch(clip_dir, tmp_path):
    from safetensors.torch import save_file
    save_file(AestheticMLP(768).state_dict(), str(tmp_path / "head.safetensors"))
    with pytest.raises(RuntimeError, match="input dim 16"):
        REWARDS.build("aesthetic", "cpu", path=str(clip_dir), head_path=str(tmp_path / "head.safetensors"))


@pytest.mark.parametrize("name", ["pickscore", "clipscore", "aesthetic"])
def test_gradient_reaches_images(clip_dir, tmp_path, name):
    opts = {"path": str(clip_dir)}
    if name == "aesthetic":
        from safetensors.torch import save_file
        save_file(AestheticMLP(16).state_dict(), str(tmp_path / "head.safetensors"))
        opts["head_path"] = str(tmp_path / "head.safetensors")
    if name == "clipscore":
        opts["clamp_negative"] = False  # a clamped negative cosine has zero gradient by design
    fn = REWARDS.build(name, "cpu", **opts)
    x = images(2, 40, 56).requires_grad_(True)  # any H, W: resized inside
    scores = fn(x, PROMPTS, [{}, {}])
    scores.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["pickscore", "clipscore", "aesthetic"])
def test_missing_path_names_the_option(name, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"reward.options.{name}.path"):
        REWARDS.build(name, "cpu", path=str(tmp_path / "nope"), head_path=str(tmp_path)) \
            if name == "aesthetic" else REWARDS.build(name, "cpu", path=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=f"reward.options.{name}.path"):
        REWARDS.build(name, "cpu", head_path=str(tmp_path)) if name == "aesthetic" \
            else REWARDS.build(name, "cpu")


def test_missing_head_path(clip_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="reward.options.aesthetic.head_path"):
        REWARDS.build("aesthetic", "cpu", path=str(clip_dir), head_path=str(tmp_path / "x.safetensors"))
