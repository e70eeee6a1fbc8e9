"""A tiny random Stable Diffusion 3 pipeline folder, built in memory (no model hub), for tests.

`build_tiny_sd3(out_dir)` writes a folder that `StableDiffusion3Pipeline.from_pretrained(out_dir)`
loads like the real thing (model_index.json, transformer/, vae/, scheduler/, text_encoder{,_2,_3}/,
tokenizer{,_2,_3}/), with every component shaped consistently:

    transformer  SD3Transformer2DModel: 2 layers, 2 heads x 8 dims, patch 2, 16 latent channels,
                 joint_attention_dim = T5 d_model, pooled_projection_dim = 2 x CLIP projection dim
    vae          AutoencoderKL, 4 blocks (x8 down-sampling), 16 latent channels, SD3 scaling/shift
    scheduler    FlowMatchEulerDiscreteScheduler(shift=3.0) as in SD3
    text         2 x CLIPTextModelWithProjection (2 layers; the pipeline reads hidden_states[-2])
                 + T5EncoderModel (gated-gelu, as T5 v1.1); the CLIP hidden sizes sum to <= d_model
    tokenizers   CLIP BPE and T5 Unigram built from a small English word list plus single
                 characters, so ordinary lower-case prompts tokenise to known tokens (no <unk>)

Images are (sample_size * 8) pixels square by default (256 for sample_size=32); height and width
must be multiples of 16. The folder is ~1-2 MB of float32 weights.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

WORDS = (
    "a an the of in on at to and or with without for from by is are was be this that it its "
    "photo picture image painting drawing render portrait close up view small large big tiny "
    "red green blue yellow black white orange purple pink brown gray grey gold silver "
    "cat dog bird horse cow sheep fish bear lion tiger elephant rabbit mouse fox owl "
    "man woman boy girl person people child face hand eye hair "
    "car bus train boat plane bike house tree flower grass sky sun moon star cloud sea river "
    "mountain city street road table chair cup book sign text word says saying written letter "
    "one two three four five six seven eight nine ten "
    "beautiful cute old new happy sad bright dark high quality detailed realistic art style "
    "hello world flow reward test"
).split()
CLIP_SYMBOLS = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'\"-:;()&/+*#%@_"
T5_SYMBOLS = CLIP_SYMBOLS + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def train_bpe_merges(words) -> List[Tuple[str, str]]:
    """A deterministic BPE trainer for small word lists: repeatedly merge the most frequent adjacent
    pair (ties broken by the pair's text) until every word is one token. Words end in "</w>"."""
    from collections import Counter
    seqs = Counter(tuple(w[:-1]) + (w[-1] + "</w>",) for w in words if w)
    merges: List[Tuple[str, str]] = []
    while True:
        pairs: Counter = Counter()
        for seq, n in seqs.items():
            for a, b in zip(seq, seq[1:]):
                pairs[(a, b)] += n
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged: Counter = Counter()
        for seq, n in seqs.items():
            out, k = [], 0
            while k < len(seq):
                if k + 1 < len(seq) and (seq[k], seq[k + 1]) == best:
                    out.append(seq[k] + seq[k + 1])
                    k += 2
                else:
                    out.append(seq[k])
                    k += 1
            merged[tuple(out)] += n
        seqs = merged


def clip_vocab(words=WORDS, symbols: str = CLIP_SYMBOLS) -> Tuple[Dict[str, int], List[Tuple[str, str]]]:
    """(vocab, merges) of a CLIP-style BPE trained deterministically on `words` until each word is
    one token ("cat</w>"); every symbol also exists alone and as a word end ("x", "x</w>"), so any
    lower-case ASCII prompt tokenises without <unk>. The same words always give the same tokenizer."""
    merges = train_bpe_merges(sorted(set(words)))
    specials = ["<|startoftext|>", "<|endoftext|>"]
    tokens = {c for c in symbols} | {c + "</w>" for c in symbols} | {a + b for a, b in merges}
    vocab: Dict[str, int] = {t: i for i, t in enumerate(specials + sorted(tokens))}
    return vocab, merges


def tiny_clip_tokenizer(model_max_length: int = 77):
    """An in-memory CLIPTokenizer over `clip_vocab()` (bos 0, eos = pad = unk 1)."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def tiny_t5_tokenizer(model_max_length: int = 512):
    """An in-memory T5 Unigram tokenizer: <pad> 0, </s> 1, <unk> 2, "▁word" pieces, characters."""
    from transformers import T5TokenizerFast  # an alias of T5Tokenizer in transformers 5

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -8.0)]
    vocab += [("\u2581" + w, -5.0) for w in dict.fromkeys(WORDS)]
    vocab += [(c, -10.0) for c in T5_SYMBOLS]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


def _clip_text_encoder(vocab_size: int, hidden: int, projection_dim: int, layers: int):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=2, max_position_embeddings=77,
                         projection_dim=projection_dim, hidden_act="quick_gelu",
                         bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return CLIPTextModelWithProjection(cfg).eval()


def _t5_encoder(vocab_size: int, d_model: int, layers: int):
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=layers,
                   num_heads=d_model // 8, relative_attention_num_buckets=8,
                   relative_attention_max_distance=32, feed_forward_proj="gated-gelu",
                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return T5EncoderModel(cfg).eval()


def _vae(latent_channels: int, sample_size: int):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels,
                         down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4,
                         block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4,
                         sample_size=sample_size * 8, scaling_factor=1.5305, shift_factor=0.0609,
                         use_quant_conv=False, use_post_quant_conv=False).eval()


def build_tiny_sd3(out_dir, seed: int = 0, sample_size: int = 32, latent_channels: int = 16,
                   num_layers: int = 2, num_heads: int = 2, attention_head_dim: int = 8,
                   clip_dim: int = 16, t5_dim: int = 32, text_layers: int = 2,
                   qk_norm=None, dual_attention_layers=(), pos_embed_max_size=None) -> Path:
    """Write a tiny random StableDiffusion3Pipeline folder to `out_dir` and return its Path.

    sample_size: default latent side (pixels = 8x); pos_embed_max_size (default sample_size) patches
    per side of the position-embedding table, i.e. up to 2 x pos_embed_max_size latents.
    qk_norm="rms_norm", dual_attention_layers=(0,) give an SD3.5-style transformer."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    if 2 * clip_dim > t5_dim:
        raise ValueError(f"the two CLIP hidden sizes (2 x clip_dim = {2 * clip_dim}) must fit in the T5 "
                         f"d_model (t5_dim = {t5_dim}): SD3 pads CLIP states up to the T5 width")
    torch.manual_seed(seed)
    tok, tok3 = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=sample_size, patch_size=2, in_channels=latent_channels, out_channels=latent_channels,
        num_layers=num_layers, attention_head_dim=attention_head_dim, num_attention_heads=num_heads,
        joint_attention_dim=t5_dim, caption_projection_dim=num_heads * attention_head_dim,
        pooled_projection_dim=2 * clip_dim, pos_embed_max_size=pos_embed_max_size or sample_size,
        qk_norm=qk_norm, dual_attention_layers=tuple(dual_attention_layers))
    pipe = StableDiffusion3Pipeline(
        transformer=transformer.eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=_vae(latent_channels, sample_size),
        text_encoder=_clip_text_encoder(len(tok), clip_dim, clip_dim, text_layers), tokenizer=tok,
        text_encoder_2=_clip_text_encoder(len(tok), clip_dim, clip_dim, text_layers), tokenizer_2=tok,
        text_encoder_3=_t5_encoder(len(tok3), t5_dim, text_layers), tokenizer_3=tok3)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(out), safe_serialization=True)
    return out


def build_tiny_sd35(out_dir, seed: int = 0, num_layers: int = 4) -> Path:
    """A tiny random pipeline with SD3.5-medium's transformer layout (stabilityai/stable-diffusion-3.5-
    medium, transformer/config.json: 24 layers, dual_attention_layers 0..12, qk_norm "rms_norm",
    pos_embed_max_size 384 = 3 x sample_size 128; SD3-medium: no dual attention, no QK-norm, 192):
    `num_layers` blocks, dual attention (a second image-only attention, attn2) in the first
    num_layers // 2 + 1, RMS QK-norm, a position table 3x the default latent side."""
    return build_tiny_sd3(out_dir, seed=seed, num_layers=num_layers, qk_norm="rms_norm",
                          dual_attention_layers=tuple(range(num_layers // 2 + 1)), pos_embed_max_size=3 * 32)
