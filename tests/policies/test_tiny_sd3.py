"""The tiny random SD3 folder loads through StableDiffusion3Pipeline.from_pretrained and samples."""
import pytest
import torch

from flowrl.policies.tiny_sd3 import WORDS, build_tiny_sd3, tiny_clip_tokenizer, tiny_t5_tokenizer


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    from diffusers import StableDiffusion3Pipeline

    path = build_tiny_sd3(tmp_path_factory.mktemp("tiny_sd3") / "sd3", seed=0)
    return StableDiffusion3Pipeline.from_pretrained(str(path))


def _sample(pipe, seed, prompt="a photo of a red cat", size=64):
    gen = torch.Generator().manual_seed(seed)
    return pipe(prompt, num_inference_steps=2, height=size, width=size, guidance_scale=4.5,
                output_type="pt", generator=gen).images


def test_folder_is_small_and_complete(tmp_path):
    path = build_tiny_sd3(tmp_path / "sd3")
    names = {p.name for p in path.iterdir()}
    assert {"model_index.json", "transformer", "vae", "scheduler", "text_encoder", "text_encoder_2",
            "text_encoder_3", "tokenizer", "tokenizer_2", "tokenizer_3"} <= names
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    assert size < 5e6


def test_components_are_consistent(pipe):
    tcfg = pipe.transformer.config
    assert tcfg.joint_attention_dim == pipe.text_encoder_3.config.d_model
    assert tcfg.pooled_projection_dim == (pipe.text_encoder.config.projection_dim
                                          + pipe.text_encoder_2.config.projection_dim)
    assert tcfg.in_channels == pipe.vae.config.latent_channels
    assert pipe.scheduler.config.shift == 3.0
    assert pipe.vae_scale_factor == 8


def test_tokenizers_know_common_words():
    clip, t5 = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    for word in WORDS:  # each word is one token between bos and eos
        assert len(clip(word).input_ids) == 3, word
    ids = clip("a photo of 42 xyz!").input_ids
    assert clip.unk_token_id not in ids[1:-1]
    ids = t5("A photo of a cat, says 42").input_ids
    assert t5.unk_token_id not in ids and ids[-1] == t5.eos_token_id


def test_generates_finite_images(pipe):
    img = _sample(pipe, 0)
    assert img.shape == (1, 3, 64, 64)
    assert torch.isfinite(img).all() and img.min() >= 0 and img.max() <= 1


def test_default_size_and_seeds(pipe):
    a, b = _sample(pipe, 0, size=None), _sample(pipe, 1, size=None)
    assert a.shape == (1, 3, 256, 256)  # default latent side 32 x vae factor 8
    assert not torch.allclose(a, b)
    assert torch.equal(a, _sample(pipe, 0, size=None))
