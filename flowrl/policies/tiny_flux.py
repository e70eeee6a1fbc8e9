"""A tiny random FLUX.1 pipeline folder, built in memory (no model hub), for tests and smoke runs.

`build_tiny_flux(out_dir)` writes a folder that `FluxPipeline.from_pretrained(out_dir)` loads like
FLUX.1-dev (model_index.json, transformer/, vae/, scheduler/, text_encoder{,_2}/, tokenizer{,_2}/):

    transformer  FluxTransformer2DModel: 1 double-stream + 1 single-stream block, 2 heads x 8 dims,
                 RoPE axes (2, 2, 4), 64 input channels (16 latent channels packed 2x2),
                 guidance_embeds=True (guidance-distilled, as FLUX.1-dev)
    vae          AutoencoderKL, 16 latent channels, x8 down-sampling, FLUX's scaling/shift factors
    scheduler    FlowMatchEulerDiscreteScheduler with FLUX's resolution-dependent (dynamic) shift
    text         CLIPTextModel (pooled output) + T5EncoderModel (sequence), the tokenizers of
                 flowrl.policies.tiny_sd3 (ordinary lower-case prompts tokenise without <unk>)

Images must be multiples of 16 pixels; the folder is ~1 MB of float32 weights.
"""
from __future__ import annotations

from pathlib import Path


def _clip_text_model(vocab_size: int, hidden: int, layers: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=2, max_position_embeddings=77,
                         hidden_act="quick_gelu", bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return CLIPTextModel(cfg).eval()


def build_tiny_flux(out_dir, seed: int = 0, latent_channels: int = 16, num_layers: int = 1,
                    num_single_layers: int = 1, num_heads: int = 2, attention_head_dim: int = 8,
                    clip_dim: int = 16, t5_dim: int = 32, text_layers: int = 2) -> Path:
    """Write a tiny random FluxPipeline folder to `out_dir` and return its Path."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    from flowrl.policies.tiny_sd3 import _t5_encoder, tiny_clip_tokenizer, tiny_t5_tokenizer

    if attention_head_dim != 8:
        raise ValueError("attention_head_dim must be 8 (the RoPE axes (2, 2, 4) sum to it)")
    torch.manual_seed(seed)
    tok, tok2 = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * latent_channels, num_layers=num_layers,
        num_single_layers=num_single_layers, attention_head_dim=attention_head_dim,
        num_attention_heads=num_heads, joint_attention_dim=t5_dim, pooled_projection_dim=clip_dim,
        guidance_embeds=True, axes_dims_rope=(2, 2, 4))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4,
                        sample_size=256, scaling_factor=0.3611, shift_factor=0.1159,
                        use_quant_conv=False, use_post_quant_conv=False)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                                base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                                max_image_seq_len=4096)
    pipe = FluxPipeline(transformer=transformer.eval(), scheduler=scheduler, vae=vae.eval(),
                        text_encoder=_clip_text_model(len(tok), clip_dim, text_layers), tokenizer=tok,
                        text_encoder_2=_t5_encoder(len(tok2), t5_dim, text_layers), tokenizer_2=tok2)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(out), safe_serialization=True)
    return out
