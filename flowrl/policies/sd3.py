"""Stable Diffusion 3 / 3.5 (diffusers) as a flowrl policy: the MM-DiT transformer, LoRA or fully fine-tuned.

Convention check (flowrl.sampling.sde): diffusers' FlowMatchEulerDiscreteScheduler uses sigma in [0, 1]
with x_sigma = (1 - sigma) * x0 + sigma * eps, feeds the transformer timestep = sigma * 1000
(num_train_timesteps) and steps x' = x + (sigma' - sigma) * v, so SD3's output is v = dx/dsigma =
eps - x0: exactly the project's velocity. `velocity()` returns it unchanged (as float32);
tests/policies/test_sd3.py checks that our ODE sampler reproduces StableDiffusion3Pipeline's latents.

What is trained: LoRA (peft, via diffusers' add_adapter) on the transformer's attention projections
(Flow-GRPO's targets, flowrl.policies.lora.SD3_TARGETS); everything else is frozen. The reference
policy (KL) is the same transformer with the adapter disabled. Frozen weights use runtime.weight_dtype
(mixed precision), LoRA weights fp32, the VAE fp32 (as Flow-GRPO). Text embeddings are cached per
prompt (LRU); the empty-prompt (negative) embeddings are computed once for classifier-free guidance.

model.finetune = "full" (flowrl.policies.full): every transformer weight trains (fp32), text encoders
and VAE frozen; the reference is a frozen copy of the base transformer in the weight dtype (+2 B per
transformer parameter, not sharded by FSDP; ~18 B/parameter in all with AdamW, against ~2 B for
LoRA); the trainable state is the whole transformer and `export` writes a diffusers `transformer/`
folder (SD3Transformer2DModel.from_pretrained) instead of pytorch_lora_weights.safetensors.

Heavy imports (diffusers, transformers, peft) happen inside functions: importing this module is cheap.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch

from flowrl.policies.full import export_transformer, make_trainable
from flowrl.policies.lora import (SD3_TARGETS, adapter_disabled, export_diffusers_lora, load_lora_state_dict,
                                  lora_state_dict)
from flowrl.protocols import Runtime
from flowrl.registry import POLICIES

TINY_NAME = "tiny-sd3"   # folder under the flowrl cache holding the tiny random pipeline (path "")
STAMP_FILE = "flowrl_build.json"   # in that folder: what built it (rebuilt when tiny_sd3.py changes)


# ---------------------------------------------------------------------------------------- loading
def _tiny_stamp(seed: int, sd35: bool = False) -> str:
    """What the cached tiny pipeline was built from: the builder's source hash and the seed."""
    import hashlib

    from flowrl.policies import tiny_sd3

    digest = hashlib.sha256(Path(tiny_sd3.__file__).read_bytes()).hexdigest()[:16]
    return json.dumps({"builder_sha256": digest, "seed": int(seed), **({"sd35": True} if sd35 else {})})


def _is_current(folder: Path, stamp: str) -> bool:
    f = folder / STAMP_FILE
    return (folder / "model_index.json").exists() and f.exists() and f.read_text() == stamp


def ensure_tiny_sd3(target: Path, seed: int = 0, sd35: bool = False) -> Path:
    """Return `target` holding the tiny random SD3 pipeline (flowrl.policies.tiny_sd3), building it if
    missing or built by another version of the builder. The build goes to a temporary sibling folder
    renamed into place: other processes never see half a folder."""
    from flowrl.cache import build_folder_atomically
    stamp = _tiny_stamp(seed, sd35)

    def build(tmp: Path) -> None:
        from flowrl.policies import tiny_sd3
        with _quiet_loading():
            (tiny_sd3.build_tiny_sd35 if sd35 else tiny_sd3.build_tiny_sd3)(tmp, seed=seed)
        (tmp / STAMP_FILE).write_text(stamp)
    return build_folder_atomically(Path(target), build, lambda d: _is_current(d, stamp))


def resolve_pipeline_path(path: str, cache_root: Path) -> Path:
    """model.path -> a local diffusers pipeline folder. "" = the tiny random pipeline (built in the
    flowrl cache if missing); a folder; or a hub id ("org/name") found in the LOCAL Hugging Face cache
    (nothing is downloaded); "tiny-t2i" = flowrl's trained scenes model (flowrl.scenes, built in the
    flowrl cache on first use, ~10 min on 2 CPU cores: `flowrl init tiny-t2i`). Raises
    FileNotFoundError saying what to set."""
    if not path:
        return ensure_tiny_sd3(Path(cache_root) / TINY_NAME)
    if path == "tiny-sd35":   # the tiny random SD3.5-medium-shaped pipeline (tiny_sd3.build_tiny_sd35)
        return ensure_tiny_sd3(Path(cache_root) / path, sd35=True)
    if path == "tiny-t2i":
        from flowrl.scenes.train_t2i import CACHE_NAME, ensure_tiny_t2i
        return ensure_tiny_t2i(Path(cache_root) / CACHE_NAME)
    from flowrl.cache import resolve_local_model
    p = resolve_local_model(path, "model.path")
    if not (p / "model_index.json").exists():
        raise FileNotFoundError(f"model.path={str(path)!r} is not a diffusers pipeline folder (no "
                                f"model_index.json); set model.path to a StableDiffusion3Pipeline folder")
    return p


@contextmanager
def _quiet_loading():
    """No per-component progress bars while a pipeline loads (restored afterwards)."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    was = [m.is_progress_bar_enabled() for m in (dlog, tlog)]
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        for m, on in zip((dlog, tlog), was):
            if on:
                m.enable_progress_bar()


def load_pipeline(folder: Path, dtype: torch.dtype):
    """StableDiffusion3Pipeline from a local folder (no network): transformer and text encoders in
    `dtype`, the VAE in float32, all frozen and in eval mode. Stays on the CPU; the factory moves it."""
    from diffusers import StableDiffusion3Pipeline

    with _quiet_loading():
        pipe = StableDiffusion3Pipeline.from_pretrained(str(folder), dtype={"default": dtype, "vae": torch.float32},
                                                        local_files_only=True)
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        module = getattr(pipe, name, None)
        if module is not None:
            want = torch.float32 if name == "vae" else dtype
            if module.dtype != want:    # a diffusers that ignored the dtype dict
                module.to(want)
            module.requires_grad_(False).eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def check_resolution(resolution: int, vae_scale: int, patch: int, pos_max: Optional[int]) -> int:
    """The latent side for `resolution` pixels; ValueError if SD3 cannot take that size."""
    step = vae_scale * patch
    if resolution < step or resolution % step:
        raise ValueError(f"model.resolution={resolution} must be a positive multiple of {step} "
                         f"(VAE factor {vae_scale} x patch size {patch})")
    side = resolution // vae_scale
    if pos_max is not None and side // patch > pos_max:
        raise ValueError(f"model.resolution={resolution} is too large for this transformer (at most "
                         f"{pos_max * step} px: pos_embed_max_size={pos_max}); lower model.resolution")
    return side


# ---------------------------------------------------------------------------------------- policy
class SD3Policy:
    """See the module docstring. Shapes: latents x (B, C, h, w) with h = w = resolution / 8, sigma (B,)
    in [0, 1], cond {"prompt_embeds": (B, L, D), "pooled": (B, Dp)} (L = 77 + max_sequence_length)."""

    def __init__(self, pipe, device: torch.device, dtype: torch.dtype, resolution: int,
                 max_sequence_length: int, guidance: float = 1.0, prompt_cache_size: int = 1024):
        self.pipe, self.device, self.dtype = pipe, torch.device(device), dtype
        self.net = pipe.transformer      # LoRA-wrapped, unwrapped by accelerate (state dicts, adapter)
        self.model = self.net            # the trainer replaces this with the accelerate-wrapped module
        self.scheduler = pipe.scheduler.__class__.from_config(pipe.scheduler.config)
        self.vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        cfg = self.net.config
        side = check_resolution(int(resolution), self.vae_scale, int(cfg.patch_size), cfg.pos_embed_max_size)
        self.sample_shape: Tuple[int, ...] = (int(cfg.in_channels), side, side)
        self.resolution, self.max_sequence_length = int(resolution), int(max_sequence_length)
        self.guidance = float(guidance)
        self.num_train_timesteps = float(self.scheduler.config.num_train_timesteps)
        self.prompt_cache_size = int(prompt_cache_size)
        self._cache: "OrderedDict[str, Tuple[torch.Tensor, torch.Tensor]]" = OrderedDict()
        self._negative: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    # ---------------------------------------------------------------- schedule
    def sigmas(self, num_steps: int) -> torch.Tensor:
        """(S+1,) float32 CPU: the scheduler's sigmas after set_timesteps(S) (SD3's shift; the
        resolution-dependent mu if the scheduler uses dynamic shifting), decreasing from 1 to 0."""
        kwargs = {}
        if self.scheduler.config.get("use_dynamic_shifting", False):
            from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift
            c, seq = self.scheduler.config, (self.sample_shape[1] // self.net.config.patch_size) ** 2
            kwargs["mu"] = calculate_shift(seq, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                                           c.get("base_shift", 0.5), c.get("max_shift", 1.16))
        self.scheduler.set_timesteps(int(num_steps), device="cpu", **kwargs)
        return self.scheduler.sigmas.detach().to("cpu", torch.float32).clone()

    # ---------------------------------------------------------------- text
    @torch.no_grad()
    def _encode_text(self, prompts: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        """The pipeline's encode_prompt (CLIP-L + CLIP-G + T5) -> (B, L, D), (B, Dp) in weight dtype."""
        emb, _, pooled, _ = self.pipe.encode_prompt(
            prompt=list(prompts), prompt_2=None, prompt_3=None, device=self.device,
            do_classifier_free_guidance=False, max_sequence_length=self.max_sequence_length)
        return emb.to(self.dtype), pooled.to(self.dtype)

    def encode(self, prompts: Sequence[str]) -> Dict[str, torch.Tensor]:
        """list of B prompts -> {"prompt_embeds": (B, L, D), "pooled": (B, Dp)} on the device, in
        the weight dtype. Each distinct prompt is encoded once, alone (bitwise the same whatever
        else is in the batch or the cache), and kept in an LRU cache of `prompt_cache_size` prompts
        (0 = unbounded)."""
        prompts = list(prompts)
        found = {p: self._cache[p] for p in dict.fromkeys(prompts) if p in self._cache}
        todo = [p for p in dict.fromkeys(prompts) if p not in found]
        for p in todo:   # one prompt per call: the embedding is a function of the prompt alone (a
            emb, pooled = self._encode_text([p])   # batch's make-up changes bits; exact resume needs this)
            found[p] = (emb[0], pooled[0])
        for p in dict.fromkeys(prompts):
            self._cache[p] = found[p]
            self._cache.move_to_end(p)
        while self.prompt_cache_size > 0 and len(self._cache) > self.prompt_cache_size:
            self._cache.popitem(last=False)
        return {"prompt_embeds": torch.stack([found[p][0] for p in prompts]),
                "pooled": torch.stack([found[p][1] for p in prompts])}

    @property
    def negative(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of the empty prompt, (1, L, D) and (1, Dp): the unconditional branch of CFG."""
        if self._negative is None:
            self._negative = self._encode_text([""])
        return self._negative

    offload_text_encoders = False   # set by the factory (model.offload_text_encoders)
    base = None   # the factory sets it for model.finetune="full": the frozen copy of the base transformer

    def cache_prompts(self, prompts: Sequence[str]) -> None:
        """With `offload_text_encoders`: encode every prompt of the prompt sets (and the empty prompt)
        now, keep them all (no LRU bound), then free the text encoders (T5-XXL: ~9 GB in bf16). A
        prompt outside these sets raises afterwards. Without the option: nothing happens."""
        if not self.offload_text_encoders:
            return
        self.prompt_cache_size = 0
        self.encode(list(dict.fromkeys(prompts)))
        _ = self.negative
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
            if getattr(self.pipe, name, None) is not None:
                setattr(self.pipe, name, None)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

        def freed(new_prompts):
            raise RuntimeError(f"prompt {list(new_prompts)[0]!r} is not in the cached prompt sets and the text "
                               f"encoders were freed (model.offload_text_encoders=True); turn it off")
        self._encode_text = freed

    def memory_tokens(self) -> int:
        """Tokens per sample in the transformer: 2x2 image patches + 77 CLIP + T5 tokens."""
        return self.sample_shape[1] * self.sample_shape[2] // 4 + 77 + self.max_sequence_length

    # ---------------------------------------------------------------- velocity
    def _forward(self, x: torch.Tensor, sigma: torch.Tensor, emb: torch.Tensor,
                 pooled: torch.Tensor) -> torch.Tensor:
        """One transformer pass through `self.model` (accelerate-wrapped) -> (B, C, h, w) float32."""
        out = self.model(hidden_states=x.to(self.device, self.dtype),
                         timestep=sigma.to(self.device, torch.float32) * self.num_train_timesteps,
                         encoder_hidden_states=emb.to(self.device, self.dtype),
                         pooled_projections=pooled.to(self.device, self.dtype), return_dict=False)[0]
        return out.float()

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Dict[str, torch.Tensor],
                 guidance: Optional[float] = None, detach_uncond: bool = False) -> torch.Tensor:
        """v(x, sigma) = eps - x0 prediction, (B, C, h, w) float32. x: (B, C, h, w); sigma: (B,) or ();
        cond from `encode`. guidance g > 1: one pass on [uncond, cond] and v = v_u + g (v_c - v_u)
        (v_u without gradient if `detach_uncond`); g <= 1: conditional only (no CFG, as diffusers).
        None = the policy's `guidance` option."""
        g = self.guidance if guidance is None else float(guidance)
        n = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(n)
        emb, pooled = cond["prompt_embeds"], cond["pooled"]
        if g <= 1.0:
            return self._forward(x, sigma, emb, pooled)
        neg_emb, neg_pooled = self.negative
        emb = torch.cat([neg_emb.expand(n, -1, -1).to(emb.device, emb.dtype), emb])
        pooled = torch.cat([neg_pooled.expand(n, -1).to(pooled.device, pooled.dtype), pooled])
        v_u, v_c = self._forward(torch.cat([x, x]), torch.cat([sigma, sigma]), emb, pooled).chunk(2)
        v_u = v_u.detach() if detach_uncond else v_u
        return v_u + g * (v_c - v_u)

    @contextmanager
    def reference(self):
        """velocity() of the frozen base model: the same transformer with the LoRA adapter disabled,
        or (full fine-tuning) the frozen copy of the base transformer in place of the trained one."""
        if self.base is None:
            with adapter_disabled(self.net):
                yield self
            return
        trained, self.model = self.model, self.base
        try:
            yield self
        finally:
            self.model = trained

    # ---------------------------------------------------------------- images
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) latents -> (B, 3, 8h, 8w) float32 images in [0, 1]: undo the VAE scaling and
        shift, decode (fp32 VAE), map [-1, 1] -> [0, 1] and clamp. Keeps the graph if grad is on."""
        vae = self.pipe.vae
        z = latents.to(self.device, vae.dtype) / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
        image = vae.decode(z, return_dict=False)[0]
        return (image.float() / 2 + 0.5).clamp(0, 1)

    # ---------------------------------------------------------------- weights
    def trainable_state_dict(self) -> Dict[str, torch.Tensor]:
        """The LoRA weights only, or every transformer weight (full): fp32 copies of the parameters
        with requires_grad, keyed like transformer.named_parameters()."""
        return lora_state_dict(self.net)

    def load_trainable_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        load_lora_state_dict(self.net, state)

    def export(self, directory: Path, pipeline_cls=None) -> None:
        """Write the LoRA as `directory`/pytorch_lora_weights.safetensors (diffusers format):
        `StableDiffusion3Pipeline.from_pretrained(base).load_lora_weights(directory)` loads it. Full
        fine-tuning: `directory`/transformer/, for SD3Transformer2DModel.from_pretrained."""
        if self.base is not None:
            export_transformer(self.net, self.base, Path(directory))
        else:
            export_diffusers_lora(self.net, Path(directory), pipeline_cls=pipeline_cls)


@POLICIES.register("sd3")
def sd3(runtime: Runtime, path: str = "", lora_rank: int = 32, lora_alpha: float = 64,
        lora_targets: Sequence[str] = SD3_TARGETS, resolution: int = 512, max_sequence_length: int = 128,
        gradient_checkpointing: bool = False, guidance: float = 1.0, prompt_cache_size: int = 1024,
        lora_init: str = "gaussian", offload_text_encoders: bool = False, finetune: str = "lora") -> SD3Policy:
    """Options (config.model):
    path: local diffusers SD3/SD3.5 folder, or a hub id in the local HF cache (local_files_only);
          "" = the tiny random pipeline in the flowrl cache (built on first use).
    lora_rank / lora_alpha / lora_targets / lora_init: the peft LoRA (Flow-GRPO: 32 / 64 / attention).
    resolution: image side in pixels (latent side = resolution / 8).
    max_sequence_length: T5 tokens (Flow-GRPO uses 128; diffusers' default is 256).
    gradient_checkpointing: recompute transformer blocks in backward (less memory, ~30% slower).
    guidance: CFG scale used when velocity() is called without one (the trainer always passes one).
    prompt_cache_size: distinct prompts whose text embeddings are kept (0 = all).
    offload_text_encoders: free the text encoders once the prompt sets are encoded (cache_prompts).
    finetune: "lora" (default) or "full" (every transformer weight; lora_* are then unused; see the
          module docstring for the memory it costs)."""
    folder = resolve_pipeline_path(path, runtime.cache_dir)
    pipe = load_pipeline(folder, runtime.weight_dtype)
    base = make_trainable(pipe, runtime, finetune, lora_rank, lora_alpha, lora_targets, lora_init)
    return finish_policy(SD3Policy(pipe, runtime.device, runtime.weight_dtype, resolution, max_sequence_length,
                                   guidance, prompt_cache_size), base, runtime, gradient_checkpointing,
                         offload_text_encoders)


def finish_policy(policy: SD3Policy, base, runtime: Runtime, gradient_checkpointing: bool,
                  offload_text_encoders: bool) -> SD3Policy:
    """The factories' common tail: checkpointing, everything (and the reference copy) on the device."""
    if gradient_checkpointing:
        policy.net.enable_gradient_checkpointing()
    policy.pipe.to(runtime.device)
    policy.base = base.to(runtime.device) if base is not None else None
    policy.offload_text_encoders = bool(offload_text_encoders)
    return policy
