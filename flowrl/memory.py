"""How much accelerator memory a LoRA / full fine-tuning step needs, before it runs.

`estimate_memory` is a pure function of counts and shapes (tested against a hand computation);
`transformer_shape` reads them off a diffusers transformer config (works on a meta-device model, so
SD3.5-medium or FLUX.1-dev shapes cost no memory); `measure_saved_activations` measures what autograd
really keeps for backward (a saved-tensors hook: exact on CPU, where torch keeps no allocator stats).

Activations: per transformer block and per token, the tensors saved for backward are about
ACT_PER_TOKEN x hidden values in the weight dtype: per stream the normed input (1), q, k, v (3),
the attention output (1), the QK-norm outputs (2, SD3.5/FLUX), the normed MLP input (1), the MLP's
hidden layer before and after GELU (2 x 4); ~16 in all, more with SD3.5's second attention. With
gradient checkpointing only each block's input (1 per token x hidden) is kept, plus one block's
full set during its recomputation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

GiB = 2 ** 30
ACT_PER_TOKEN = 16.0      # saved values per token x hidden per block (see the module docstring)


@dataclass(frozen=True)
class TransformerShape:
    frozen_params: int        # base weights (frozen under LoRA)
    trainable_params: int     # LoRA weights (or every weight for full fine-tuning)
    hidden: int               # heads x head dim
    blocks: int               # transformer blocks (FLUX: double + single stream)


def estimate_memory(shape: TransformerShape, batch: int, tokens: int, weight_bytes: int = 2,
                    checkpointing: bool = False, ema: bool = True,
                    act_per_token: float = ACT_PER_TOKEN) -> Dict[str, float]:
    """Bytes of one training step of the transformer alone (text encoders / VAE / reward excluded).

    batch: samples per training forward (x2 when CFG is re-evaluated in training); tokens: image +
    text tokens per sample. Trainable weights are fp32 (4 B), with fp32 gradients (4 B), AdamW's two
    moments (8 B) and an EMA copy (4 B, if `ema`). Returns {"weights", "trainable", "gradients",
    "optimizer", "ema", "activations", "total"} in bytes."""
    n = shape.trainable_params
    per_block = batch * tokens * shape.hidden * weight_bytes
    if checkpointing:
        act = per_block * (shape.blocks + act_per_token)
    else:
        act = per_block * act_per_token * shape.blocks
    out = {"weights": float(shape.frozen_params * weight_bytes), "trainable": 4.0 * n, "gradients": 4.0 * n,
           "optimizer": 8.0 * n, "ema": 4.0 * n if ema else 0.0, "activations": float(act)}
    out["total"] = sum(out.values())
    return out


def describe(parts: Dict[str, float]) -> str:
    """One line: '12.30 GiB = weights 4.90 + trainable 0.10 + ...' (MiB below 1 GiB)."""
    unit, scale = ("GiB", GiB) if parts["total"] >= GiB else ("MiB", 2 ** 20)
    body = " + ".join(f"{k} {v / scale:.2f}" for k, v in parts.items() if k != "total")
    return f"{parts['total'] / scale:.2f} {unit} = {body}"


def transformer_shape(net) -> TransformerShape:
    """Counts and widths of a diffusers MM-DiT (SD3Transformer2DModel, FluxTransformer2DModel)."""
    cfg = net.config
    frozen = sum(p.numel() for p in net.parameters() if not p.requires_grad)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    blocks = int(cfg.num_layers) + int(getattr(cfg, "num_single_layers", 0) or 0)
    return TransformerShape(frozen, trainable, int(cfg.num_attention_heads * cfg.attention_head_dim), blocks)


def measure_saved_activations(fn):
    """(bytes, fn()): the distinct tensor storages autograd saves for backward while `fn()` runs
    (the activation memory of a training forward; parameters saved by reference are not counted)."""
    import torch

    seen: Dict[int, int] = {}

    def pack(t):
        if not isinstance(t, torch.nn.Parameter):
            s = t.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


def model_memory_line(policy, train_batch: int, cfg_in_training: bool, checkpointing: bool,
                      ema: bool) -> str:
    """The line the trainer prints before the first step, for a policy with `memory_tokens()`."""
    tokens, weight_bytes = policy.memory_tokens(), policy.dtype.itemsize
    batch = train_batch * (2 if cfg_in_training else 1)
    shape = transformer_shape(policy.net)
    if getattr(policy, "base", None) is not None:   # full fine-tuning: + the frozen reference copy
        import dataclasses
        shape = dataclasses.replace(shape, frozen_params=sum(p.numel() for p in policy.base.parameters()))
    parts = estimate_memory(shape, batch, tokens, weight_bytes, checkpointing, ema)
    return (f"memory estimate (transformer, per process, train batch {batch} x {tokens} tokens"
            f"{', checkpointing' if checkpointing else ''}): {describe(parts)}")
