"""The components of the tiny text-to-image model (real diffusers / transformers classes), all shaped
from one `T2IConfig`:

    tokenizers   CLIPTokenizer (BPE) and T5 Unigram over the scenes' own word list (every caption word is
                 one token; single characters too, so any lower-case ASCII text tokenises), padded to
                 `max_length` = 16 tokens (the CLIP tokenizer's model_max_length; pass
                 max_sequence_length=16 to the pipeline for T5: the model is trained at that length)
    text         2 x CLIPTextModelWithProjection + T5EncoderModel, RANDOMLY initialised and FROZEN: a
                 fixed, deterministic map from tokens to vectors that the transformer learns to read
                 (word identity survives a random 2-layer encoder; no pretrained text model is needed
                 for a 40-word language)
    vae          AutoencoderKL, 3 levels: 32 px -> 8 x 8 x `latent_channels` latents (vae_scale_factor 4)
    transformer  SD3Transformer2DModel, patch 2 on the 8 x 8 latents (16 image tokens)
    scheduler    FlowMatchEulerDiscreteScheduler(shift=`shift`): the sigma shift used in training
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import List, Tuple

from flowrl.scenes import generator as g

SYMBOLS = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'\"-:;()&/+*#%@_"


@dataclass(frozen=True)
class T2IConfig:
    """Everything that shapes the built model (the cache key). Defaults: the `flowrl init tiny-t2i`
    model (~5-10 min on 2 CPU cores); `smoke()`: seconds, for tests."""
    side: int = 32                      # image side in pixels
    latent_channels: int = 8
    vae_channels: Tuple[int, ...] = (8, 16, 32)    # one per level; 3 levels = 4x down-sampling
    vae_attention: bool = False         # the VAE's mid-block self-attention (off: all convolutional)
    vae_steps: int = 800
    vae_batch: int = 32
    vae_lr: float = 3e-3
    kl_weight: float = 1e-4             # x the per-element KL (latents are re-scaled afterwards)
    num_scenes: int = 8192              # rendered training scenes (train prompts, tags balanced)
    layers: int = 6                     # transformer blocks
    heads: int = 6
    head_dim: int = 16
    patch: int = 2
    steps: int = 2500                   # transformer optimizer steps
    batch: int = 64
    lr: float = 2e-3
    warmup: int = 100
    ema_decay: float = 0.999
    cfg_dropout: float = 0.1            # fraction of captions replaced by "" (classifier-free guidance)
    clip_dim: int = 16                  # each CLIP's hidden and projection size
    t5_dim: int = 32                    # T5 d_model = the transformer's joint_attention_dim
    text_layers: int = 2
    max_length: int = 16                # tokens of CLIP and T5
    shift: float = 1.0                  # scheduler shift, also applied to the training sigmas
    seed: int = 0

    @classmethod
    def smoke(cls, **changes) -> "T2IConfig":
        """A few-second build for tests (the model learns nothing)."""
        base = cls(vae_channels=(8, 8, 8), vae_steps=2, vae_batch=4, num_scenes=16, layers=1, heads=2,
                   head_dim=8, steps=2, batch=4, warmup=1, clip_dim=8, t5_dim=16, text_layers=1)
        return replace(base, **changes)

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def scene_words() -> List[str]:
    """Every word of the scene captions (both prompt sets), plus plurals and "photo of"."""
    words = ["a", "an", "and", "photo", "of", "left", "right", "above", "below"]
    words += list(g.COLORS) + list(g.NUMBERS.values())
    words += [w for s in g.SHAPES for w in (s, s + "s")]
    return words


def clip_tokenizer(max_length: int):
    """In-memory CLIPTokenizer over the scene words (bos 0, eos = pad = unk 1), padded to max_length."""
    from transformers import CLIPTokenizer

    from flowrl.policies.tiny_sd3 import clip_vocab

    vocab, merges = clip_vocab(scene_words(), SYMBOLS)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def t5_tokenizer(max_length: int):
    """In-memory T5 Unigram tokenizer: <pad> 0, </s> 1, <unk> 2, one "▁word" piece per scene word."""
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -8.0)]
    vocab += [("\u2581" + w, -5.0) for w in dict.fromkeys(scene_words())]
    vocab += [(c, -10.0) for c in SYMBOLS + SYMBOLS.upper()[:26]]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=max_length)


def clip_text_encoder(vocab_size: int, cfg: T2IConfig):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    conf = CLIPTextConfig(vocab_size=vocab_size, hidden_size=cfg.clip_dim, intermediate_size=2 * cfg.clip_dim,
                          num_hidden_layers=cfg.text_layers, num_attention_heads=2,
                          max_position_embeddings=max(cfg.max_length, 16), projection_dim=cfg.clip_dim,
                          hidden_act="quick_gelu", bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return CLIPTextModelWithProjection(conf).eval().requires_grad_(False)


def t5_encoder(vocab_size: int, cfg: T2IConfig):
    from transformers import T5Config, T5EncoderModel

    conf = T5Config(vocab_size=vocab_size, d_model=cfg.t5_dim, d_kv=8, d_ff=2 * cfg.t5_dim,
                    num_layers=cfg.text_layers, num_heads=max(1, cfg.t5_dim // 8),
                    relative_attention_num_buckets=8, relative_attention_max_distance=32,
                    feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return T5EncoderModel(conf).eval().requires_grad_(False)


def vae(cfg: T2IConfig):
    """AutoencoderKL with len(vae_channels) levels; scaling/shift factors are set after training."""
    from diffusers import AutoencoderKL

    n = len(cfg.vae_channels)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=cfg.latent_channels,
                         down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                         block_out_channels=tuple(cfg.vae_channels), layers_per_block=1,
                         norm_num_groups=min(8, min(cfg.vae_channels)), sample_size=cfg.side,
                         scaling_factor=1.0, shift_factor=0.0, mid_block_add_attention=cfg.vae_attention)


def transformer(cfg: T2IConfig):
    from diffusers import SD3Transformer2DModel

    side = cfg.side // 2 ** (len(cfg.vae_channels) - 1)
    if side % cfg.patch:
        raise ValueError(f"latent side {side} is not a multiple of patch={cfg.patch}; change side or patch")
    return SD3Transformer2DModel(
        sample_size=side, patch_size=cfg.patch, in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels, num_layers=cfg.layers, attention_head_dim=cfg.head_dim,
        num_attention_heads=cfg.heads, joint_attention_dim=cfg.t5_dim,
        caption_projection_dim=cfg.heads * cfg.head_dim, pooled_projection_dim=2 * cfg.clip_dim,
        pos_embed_max_size=side // cfg.patch)


def pipeline(cfg: T2IConfig):
    """A StableDiffusion3Pipeline of fresh components (the trained weights are loaded into it later)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    if 2 * cfg.clip_dim > cfg.t5_dim:
        raise ValueError(f"2 x clip_dim ({2 * cfg.clip_dim}) must fit in t5_dim ({cfg.t5_dim}): SD3 pads the "
                         f"two CLIP states up to the T5 width")
    torch.manual_seed(cfg.seed)
    tok, tok3 = clip_tokenizer(cfg.max_length), t5_tokenizer(cfg.max_length)
    return StableDiffusion3Pipeline(
        transformer=transformer(cfg), vae=vae(cfg),
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=cfg.shift),
        text_encoder=clip_text_encoder(len(tok), cfg), tokenizer=tok,
        text_encoder_2=clip_text_encoder(len(tok), cfg), tokenizer_2=tok,
        text_encoder_3=t5_encoder(len(tok3), cfg), tokenizer_3=tok3)
