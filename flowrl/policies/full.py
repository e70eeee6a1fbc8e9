"""Full fine-tuning of a diffusers transformer (`model.finetune = "full"`), and the choice between it
and LoRA for the image policies (flowrl.policies.sd3, flowrl.policies.flux).

"full": EVERY transformer weight trains, in fp32 (master weights; with mixed precision the forward
runs under autocast to the weight dtype); the text encoders and the VAE stay frozen. The KL
reference is a frozen copy of the base transformer made before training, kept in the weight dtype
(runtime.weight_dtype): `reference()` swaps it in, so it returns the base model's velocity bit for bit.
Memory per process, for N transformer parameters: 4N (fp32 weights) + 4N (gradients) + 8N (AdamW
moments) + 2N (bf16 reference; 4N in fp32) [+ 4N EMA], i.e. ~18 B/parameter against ~2 B for LoRA:
SD3.5-medium (2.5 B) ~45 GB, FLUX.1 (12 B) ~216 GB. FSDP shards the first three over the processes;
the reference copy is NOT sharded (each process holds a whole one).

Export: a diffusers transformer folder `directory/transformer/` (config.json +
diffusion_pytorch_model*.safetensors, shards of 10 GB as `save_pretrained`) that
`SD3Transformer2DModel.from_pretrained` / `FluxTransformer2DModel.from_pretrained` load; swap it into
the pipeline (`Pipeline.from_pretrained(base, transformer=...)`).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch
from torch import nn

FINETUNE = ("lora", "full")


def make_trainable(pipe, runtime, finetune: str, lora_rank: int, lora_alpha: float,
                   lora_targets: Sequence[str], lora_init: str) -> Optional[nn.Module]:
    """Make `pipe.transformer` trainable: a LoRA adapter (the same init on every rank: seeded by
    runtime.seed) or, for "full", every weight in fp32, its forward autocast to runtime.weight_dtype
    when that is not fp32. Returns the frozen reference copy for "full" (in the weight dtype, eval
    mode), None for "lora". ConfigError (a ValueError) for another `finetune`."""
    from flowrl.policies.lora import attach_lora

    if finetune not in FINETUNE:
        from flowrl.config import ConfigError   # a ValueError the CLI shows as one line (exit 2)
        raise ConfigError(f"model.finetune={finetune!r} must be one of {list(FINETUNE)}")
    if finetune == "full":
        net = pipe.transformer
        base = copy.deepcopy(net).requires_grad_(False).eval()
        net.float().requires_grad_(True)
        if runtime.weight_dtype != torch.float32:   # fp32 master weights, compute in the weight dtype
            net.forward = torch.autocast(torch.device(runtime.device).type, dtype=runtime.weight_dtype)(net.forward)
        return base
    with torch.random.fork_rng(devices=[]):   # the same LoRA init on every rank, whatever the seed state
        torch.manual_seed(runtime.seed)
        attach_lora(pipe.transformer, lora_rank, lora_alpha, tuple(lora_targets), lora_init)
    return None


def plain_state_dict(net: nn.Module) -> Dict[str, torch.Tensor]:
    """Every parameter and persistent buffer of `net` as contiguous CPU tensors, keyed as in
    `state_dict()`, read from the modules (not `state_dict()`: FSDP2's state-dict hooks re-shard;
    inside flowrl.fsdp.gathered the parameters are whole)."""
    out = {k: p.detach() for k, p in net.named_parameters()}
    for mod_name, m in net.named_modules():
        for b_name, b in m.named_buffers(recurse=False):
            if b is not None and b_name not in m._non_persistent_buffers_set:
                out[f"{mod_name}.{b_name}" if mod_name else b_name] = b.detach()
    return {k: v.cpu().contiguous() for k, v in out.items()}


def export_transformer(net: nn.Module, base: nn.Module, directory: Path) -> Path:
    """Write `net`'s weights as a diffusers model folder `directory`/transformer (config from `base`,
    the unwrapped copy, so `_class_name` is the diffusers class even when FSDP has wrapped `net`).
    The weights keep their training dtype (fp32); load with torch_dtype=torch.bfloat16 to halve them."""
    from huggingface_hub import save_torch_state_dict

    folder = Path(directory) / "transformer"
    folder.mkdir(parents=True, exist_ok=True)
    base.save_config(str(folder))
    save_torch_state_dict(plain_state_dict(net), str(folder), max_shard_size="10GB",
                          filename_pattern="diffusion_pytorch_model{suffix}.safetensors")
    return folder
