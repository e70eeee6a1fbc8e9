"""FLUX.1 (diffusers FluxPipeline) as a flowrl policy: FluxTransformer2DModel, LoRA or fully fine-tuned.

Convention check (flowrl.sampling.sde): FluxPipeline's scheduler uses sigma in [0, 1] with
x_sigma = (1 - sigma) x0 + sigma eps and steps x' = x + (sigma' - sigma) v, and the transformer gets
timestep = sigma (it multiplies by 1000 inside): its output is v = eps - x0, the project's velocity.
tests/policies/test_flux.py checks that our Euler ODE reproduces FluxPipeline's latents.

What differs from SD3 (flowrl.policies.sd3, whose prompt cache, reference and LoRA state this
class inherits):
  * latents are PACKED for the transformer: (B, C, h, w) -> (B, h/2 * w/2, 4C) 2x2 patches, with
    position ids per patch (img_ids) and zero ids for the text tokens (txt_ids). The trainer and the
    SDE maths see the unpacked (B, C, h, w) latents (a permutation: log-probs are unchanged).
  * guidance-DISTILLED (FLUX.1-dev): the guidance scale is an INPUT of the transformer (model.guidance,
    3.5), one pass per velocity, no classifier-free guidance: the `guidance` argument of velocity()
    (the trainer's CFG scale) is not used; configs set sample.guidance_scale = 1.
  * text: CLIP-L's pooled output (B, 768) + T5-XXL's sequence (B, L, 4096), L = max_sequence_length.
  * sigmas: linspace(1, 1/S, S) shifted by the resolution-dependent mu (FLUX's dynamic shift).

model.finetune = "full" as for SD3 (flowrl.policies.full): every transformer weight trains, the
reference is a frozen copy in the weight dtype (FLUX.1's 12 B parameters: +24 GB in bf16 per process,
not sharded), ~18 B/parameter in all with AdamW (~216 GB: FSDP over several GPUs); `export` writes
`transformer/` for FluxTransformer2DModel.from_pretrained.

Heavy imports (diffusers, transformers, peft) happen inside functions: importing this module is cheap.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch

from flowrl.policies.full import make_trainable
from flowrl.policies.sd3 import SD3Policy, _is_current, _quiet_loading, STAMP_FILE, finish_policy
from flowrl.protocols import Runtime
from flowrl.registry import POLICIES

TINY_NAME = "tiny-flux"   # folder under the flowrl cache holding the tiny random FLUX (path "")
# Flow-GRPO's FLUX LoRA targets (scripts/train_flux.py): attention of both streams + both MLPs.
FLUX_TARGETS = ("attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "attn.add_k_proj", "attn.add_q_proj",
                "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                "ff_context.net.2")


def pack(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C): FluxPipeline._pack_latents (2x2 patches, row-major)."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), 4 * c)


def unpack(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of `pack`: (B, h/2 * w/2, 4C) -> (B, C, h, w)."""
    b, _, c4 = x.shape
    return x.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c4 // 4, h, w)


def image_ids(h: int, w: int) -> torch.Tensor:
    """(h/2 * w/2, 3) float32 position ids of the packed patches: (0, row, column)."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3)


def flux_sigmas(num_steps: int, image_seq_len: int, config) -> Tuple[torch.Tensor, float]:
    """FluxPipeline's schedule inputs: sigmas linspace(1, 1/S, S) (float64 numpy as the pipeline)
    and mu = the linear interpolation of the shift in the image's token count."""
    import numpy as np
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    mu = calculate_shift(image_seq_len, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                         config.get("base_shift", 0.5), config.get("max_shift", 1.15))
    return np.linspace(1.0, 1 / num_steps, num_steps), mu


class FluxPolicy(SD3Policy):
    """See the module docstring. Shapes: latents x (B, C, h, w), h = w = resolution / 8 (even), sigma
    (B,) in [0, 1], cond {"prompt_embeds": (B, L, D), "pooled": (B, Dp)}."""

    def __init__(self, pipe, device: torch.device, dtype: torch.dtype, resolution: int,
                 max_sequence_length: int, guidance: float = 3.5, prompt_cache_size: int = 1024):
        from collections import OrderedDict
        self.pipe, self.device, self.dtype = pipe, torch.device(device), dtype
        self.net = self.model = pipe.transformer
        self.scheduler = pipe.scheduler.__class__.from_config(pipe.scheduler.config)
        self.vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        if resolution < 2 * self.vae_scale or resolution % (2 * self.vae_scale):
            raise ValueError(f"model.resolution={resolution} must be a positive multiple of {2 * self.vae_scale} "
                             f"(VAE factor {self.vae_scale} x FLUX's 2x2 packing)")
        side = resolution // self.vae_scale
        self.sample_shape = (int(self.net.config.in_channels) // 4, side, side)
        self.resolution, self.max_sequence_length = int(resolution), int(max_sequence_length)
        self.guidance = float(guidance)
        self.num_train_timesteps = float(self.scheduler.config.num_train_timesteps)
        self.prompt_cache_size = int(prompt_cache_size)
        self._cache: "OrderedDict[str, Tuple[torch.Tensor, torch.Tensor]]" = OrderedDict()
        self._negative = None
        self._img_ids = image_ids(side, side).to(self.device, dtype)

    def sigmas(self, num_steps: int) -> torch.Tensor:
        """(S+1,) float32 CPU, decreasing from 1 to 0: FluxPipeline's shifted schedule."""
        sig, mu = flux_sigmas(int(num_steps), (self.sample_shape[1] // 2) ** 2, self.scheduler.config)
        self.scheduler.set_timesteps(sigmas=sig, mu=mu, device="cpu")
        return self.scheduler.sigmas.detach().to("cpu", torch.float32).clone()

    @torch.no_grad()
    def _encode_text(self, prompts: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        """FluxPipeline.encode_prompt (CLIP pooled + T5 sequence) -> (B, L, D), (B, Dp)."""
        emb, pooled, _ = self.pipe.encode_prompt(prompt=list(prompts), prompt_2=None, device=self.device,
                                                 max_sequence_length=self.max_sequence_length)
        return emb.to(self.dtype), pooled.to(self.dtype)

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Dict[str, torch.Tensor],
                 guidance: Optional[float] = None) -> torch.Tensor:
        """v = eps - x0, (B, C, h, w) float32, one transformer pass with the distilled guidance
        `self.guidance` as input (`guidance`, a CFG scale, is not used: FLUX.1-dev has no CFG)."""
        n, (_, h, w) = x.shape[0], x.shape[1:]
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=self.device).reshape(-1).expand(n)
        emb = cond["prompt_embeds"].to(self.device, self.dtype)
        out = self.model(hidden_states=pack(x.to(self.device, self.dtype)),
                         timestep=(sigma * self.num_train_timesteps).to(self.dtype) / 1000,
                         guidance=torch.full((n,), self.guidance, device=self.device, dtype=torch.float32),
                         pooled_projections=cond["pooled"].to(self.device, self.dtype),
                         encoder_hidden_states=emb, txt_ids=torch.zeros(emb.shape[1], 3, device=self.device,
                                                                        dtype=self.dtype),
                         img_ids=self._img_ids, return_dict=False)[0]
        return unpack(out.float(), h, w)

    def memory_tokens(self) -> int:
        """Tokens per sample in the transformer: packed 2x2 image patches + T5 tokens."""
        return self.sample_shape[1] * self.sample_shape[2] // 4 + self.max_sequence_length

    def export(self, directory: Path, pipeline_cls=None) -> None:
        """`directory`/pytorch_lora_weights.safetensors for `FluxPipeline.load_lora_weights`, or
        (full fine-tuning) `directory`/transformer/ for FluxTransformer2DModel.from_pretrained."""
        from diffusers import FluxPipeline
        super().export(directory, pipeline_cls=pipeline_cls or FluxPipeline)


# ---------------------------------------------------------------------------------------- loading
def ensure_tiny_flux(target: Path, seed: int = 0) -> Path:
    """`target` holding the tiny random FLUX pipeline (flowrl.policies.tiny_flux), built if missing or
    built by another version of the builder (atomic: a temporary sibling renamed into place)."""
    import hashlib
    import json

    from flowrl.cache import build_folder_atomically
    from flowrl.policies import tiny_flux
    stamp = json.dumps({"builder_sha256": hashlib.sha256(Path(tiny_flux.__file__).read_bytes()).hexdigest()[:16],
                        "seed": int(seed)})

    def build(tmp: Path) -> None:
        with _quiet_loading():
            tiny_flux.build_tiny_flux(tmp, seed=seed)
        (tmp / STAMP_FILE).write_text(stamp)
    return build_folder_atomically(Path(target), build, lambda d: _is_current(d, stamp))


def load_flux_pipeline(path: str, cache_root: Path, dtype: torch.dtype):
    """FluxPipeline from model.path ("" = the tiny random one in the flowrl cache; a folder; a hub id
    in the LOCAL HF cache): transformer and text encoders in `dtype`, VAE fp32, all frozen, on CPU."""
    from diffusers import FluxPipeline

    from flowrl.cache import resolve_local_model
    folder = ensure_tiny_flux(Path(cache_root) / TINY_NAME) if not path else resolve_local_model(path, "model.path")
    if not (folder / "model_index.json").exists():
        raise FileNotFoundError(f"model.path={path!r} is not a diffusers pipeline folder (no model_index.json); "
                                f"set model.path to a FluxPipeline folder")
    with _quiet_loading():
        pipe = FluxPipeline.from_pretrained(str(folder), dtype={"default": dtype, "vae": torch.float32},
                                            local_files_only=True)
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        module, want = getattr(pipe, name), torch.float32 if name == "vae" else dtype
        if module.dtype != want:    # a diffusers that ignored the dtype dict
            module.to(want)
        module.requires_grad_(False).eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@POLICIES.register("flux")
def flux(runtime: Runtime, path: str = "", lora_rank: int = 64, lora_alpha: float = 128,
         lora_targets: Sequence[str] = FLUX_TARGETS, resolution: int = 512, max_sequence_length: int = 512,
         gradient_checkpointing: bool = False, guidance: float = 3.5, prompt_cache_size: int = 1024,
         lora_init: str = "gaussian", offload_text_encoders: bool = False, finetune: str = "lora") -> FluxPolicy:
    """Options (config.model):
    path: local diffusers FLUX.1 folder, or a hub id in the local HF cache (local_files_only);
          "" = the tiny random FLUX in the flowrl cache (built on first use, `flowrl init tiny-flux`).
    lora_rank / lora_alpha / lora_targets / lora_init: the peft LoRA (Flow-GRPO: 64 / 128, attention
          and MLPs of the double-stream blocks; "attn.to_q/k/v" also match the single-stream blocks).
    resolution: image side in pixels (a multiple of 16). max_sequence_length: T5 tokens (<= 512).
    guidance: the distilled guidance fed to the transformer (FLUX.1-dev: 3.5).
    gradient_checkpointing, prompt_cache_size, offload_text_encoders: as for `sd3`.
    finetune: "lora" (default) or "full" (every transformer weight, see the module docstring)."""
    pipe = load_flux_pipeline(path, runtime.cache_dir, runtime.weight_dtype)
    base = make_trainable(pipe, runtime, finetune, lora_rank, lora_alpha, lora_targets, lora_init)
    return finish_policy(FluxPolicy(pipe, runtime.device, runtime.weight_dtype, resolution, max_sequence_length,
                                    guidance, prompt_cache_size), base, runtime, gradient_checkpointing,
                         offload_text_encoders)
