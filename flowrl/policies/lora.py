"""LoRA on a diffusers transformer through peft (diffusers' `add_adapter`), the way Flow-GRPO does it.

The adapter lives INSIDE the transformer (peft `BaseTunerLayer`s replace the targeted nn.Linear), so

  * the reference policy is the same module with the adapter switched off (`adapter_disabled`):
    no second copy of the base weights, and the frozen output is bit-identical to the base model;
  * the trainable weights are exactly the parameters with requires_grad (lora_A / lora_B);
  * `export_diffusers_lora` writes `pytorch_lora_weights.safetensors` (+ the LoraConfig as metadata,
    so alpha / rank survive) that `pipe.load_lora_weights(dir)` loads into a diffusers pipeline.

Heavy imports (peft, diffusers) happen inside the functions.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Sequence

import torch
from torch import nn

# Flow-GRPO's targets for SD3 (joint attention: image stream to_*, text stream add_*_proj/to_add_out).
# peft matches a target against the END of each module name, so "attn.to_q" leaves attn2 (SD3.5's
# second image attention) untouched, as in Flow-GRPO.
SD3_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
               "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out")


def attach_lora(model: nn.Module, rank: int, alpha: float, targets: Sequence[str],
                init: str = "gaussian") -> int:
    """Freeze `model`, add a peft LoRA adapter ("default") on `targets`, cast the LoRA weights to
    fp32 (they are the only trainable parameters). Returns the number of trainable parameters.

    init="gaussian": lora_A ~ N(0, 1/r), lora_B = 0, so the adapted model starts equal to the base."""
    from peft import LoraConfig

    if rank < 1 or alpha <= 0:
        raise ValueError(f"model.lora_rank must be >= 1 and model.lora_alpha > 0 (got {rank}, {alpha})")
    model.requires_grad_(False)
    config = LoraConfig(r=int(rank), lora_alpha=float(alpha), init_lora_weights=init,
                        target_modules=list(targets))
    try:
        model.add_adapter(config)
    except ValueError as e:  # peft: "Target modules {...} not found in the base model"
        raise ValueError(f"model.lora_targets={list(targets)} matched no layer of "
                         f"{type(model).__name__}: {e}") from None
    n = 0
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
            n += p.numel()
    if n == 0:
        raise ValueError(f"model.lora_targets={list(targets)} produced no trainable parameter")
    return n


def lora_parameters(model: nn.Module) -> Dict[str, nn.Parameter]:
    """{name: parameter} of the trainable (LoRA) weights, names as in model.named_parameters()
    (e.g. 'transformer_blocks.0.attn.to_q.lora_A.default.weight')."""
    return {k: p for k, p in model.named_parameters() if p.requires_grad}


def lora_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Detached fp32 copies of the LoRA weights, keyed like `lora_parameters`."""
    return {k: p.detach().float().clone() for k, p in lora_parameters(model).items()}


@torch.no_grad()
def load_lora_state_dict(model: nn.Module, state: Dict[str, torch.Tensor]) -> None:
    """Copy `state` (from `lora_state_dict`) into the LoRA weights; the key sets must match."""
    from flowrl.fsdp import shard_like
    params = lora_parameters(model)
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise KeyError(f"trainable state does not fit this model (different model.finetune / lora_rank / "
                       f"lora_targets / base model?): missing {missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected "
                       f"{unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
    for k, p in params.items():
        if state[k].shape != p.shape:
            raise ValueError(f"LoRA weight {k}: checkpoint shape {tuple(state[k].shape)}, model "
                             f"{tuple(p.shape)} (was lora_rank changed?)")
        p.copy_(shard_like(state[k].to(p.device, p.dtype), p))   # FSDP: re-sharded like p


@contextmanager
def adapter_disabled(model: nn.Module):
    """Run `model` as its base (every LoRA layer bypassed); restores the adapter afterwards."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    was = [m.disable_adapters for m in layers]
    grads = [(p, p.requires_grad) for p in model.parameters()]  # peft toggles requires_grad too
    for m in layers:
        m.enable_adapters(False)
    try:
        yield model
    finally:
        for m, disabled in zip(layers, was):
            m.enable_adapters(not disabled)
        for p, flag in grads:
            p.requires_grad_(flag)


def export_diffusers_lora(model: nn.Module, directory: Path, pipeline_cls=None) -> Path:
    """Write `directory`/pytorch_lora_weights.safetensors in diffusers' format (keys
    'transformer.<module>.lora_A.weight', LoraConfig in the metadata) via
    `pipeline_cls.save_lora_weights` (default StableDiffusion3Pipeline). Returns the file."""
    from peft.utils import get_peft_model_state_dict

    if pipeline_cls is None:
        from diffusers import StableDiffusion3Pipeline as pipeline_cls
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # from the parameters, not model.state_dict(): FSDP2's state-dict hooks would re-shard them
    params = {k: p for k, p in model.named_parameters() if "lora_" in k}
    layers = {k: v.detach().float().cpu().contiguous()
              for k, v in get_peft_model_state_dict(model, state_dict=params).items()}
    pipeline_cls.save_lora_weights(str(directory), transformer_lora_layers=layers, safe_serialization=True,
                                   transformer_lora_adapter_metadata=model.peft_config["default"].to_dict())
    return directory / "pytorch_lora_weights.safetensors"
