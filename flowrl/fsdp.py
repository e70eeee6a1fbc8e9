"""FSDP2 (torch fully_shard, through accelerate) support: sharded parameters are DTensors.

What changes for the rest of flowrl, and where it is handled:
  * checkpoints: each rank writes its own optimizer shard (`local`, as for DeepSpeed ZeRO); the
    trainable weights, the EMA and the exported LoRA are written by the main process from FULL
    tensors, which every rank gathers together first (`gathered`);
  * resume: full tensors from the checkpoint are re-sharded like the live parameter (`shard_like`),
    optimizer shards are wrapped back into DTensors (`shard_optimizer_state`);
  * CPU processes: accelerate 1.15 never selects FSDP for CPU processes (AcceleratorState only takes
    its FSDP branch for MULTI_GPU/NPU/XPU/... types; with ACCELERATE_USE_CPU=1 it silently runs plain
    MULTI_CPU data parallelism, without it every process runs alone), so `enable_fsdp_on_cpu` switches
    the state to FSDP with the launcher's FSDP settings; accelerate's FSDP2 code then runs unchanged
    on gloo (tests/test_distributed.py). Without FSDP every function here is the identity.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Dict, List

import torch


def _dtensor():
    from torch.distributed.tensor import DTensor
    return DTensor


def is_sharded(t) -> bool:
    return isinstance(t, _dtensor())


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (all-gather: every rank must call it) or `t` itself if not sharded."""
    return t.full_tensor() if is_sharded(t) else t


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (or `t`)."""
    return t.to_local() if is_sharded(t) else t


def shard_like(value: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """A full tensor `value` laid out like `ref` (a DTensor: sharded the same way; collective)."""
    if not is_sharded(ref):
        return value
    from torch.distributed.tensor import distribute_tensor
    return distribute_tensor(value.to(ref.device, ref.dtype), ref.device_mesh, ref.placements)


def shard_optimizer_state(state: Dict, params: List[torch.Tensor]) -> Dict:
    """Optimizer state_dict read from a per-rank shard (plain local tensors) -> DTensor moments laid
    out like their parameter (`params` in the optimizer's order: state keys are their indices)."""
    DTensor = _dtensor()
    for i, entry in state.get("state", {}).items():
        p = params[int(i)]
        if is_sharded(p):
            for k, v in entry.items():
                if torch.is_tensor(v) and v.dim() > 0 and tuple(v.shape) == tuple(p.to_local().shape):
                    entry[k] = DTensor.from_local(v.to(p.device), p.device_mesh, p.placements, run_check=False)
    return state


@contextmanager
def gathered(net: torch.nn.Module, ema=None):
    """FSDP2: every FSDP unit of `net` unsharded (its parameters are whole, plain tensors) and the
    EMA's shadows gathered, so the main process alone can read, export and apply them. EVERY rank
    must enter it (all-gathers). A no-op without FSDP."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in net.modules() if isinstance(m, FSDPModule)]
    if not units:
        yield
        return
    saved = (ema.shadow, ema.params) if ema is not None else None
    if ema is not None:
        ema.shadow = [full(s) for s in ema.shadow]
    for m in units:
        m.unshard()
    if ema is not None:
        ema.params = [p for p in net.parameters() if p.requires_grad]   # the unsharded ones
    try:
        yield
    finally:
        if ema is not None:
            ema.shadow, ema.params = saved
        for m in reversed(units):
            m.reshard()


def enable_fsdp_on_cpu(acc) -> bool:
    """Launched with an FSDP config on CPU processes (ACCELERATE_USE_CPU=1): switch accelerate's state
    to FSDP with the launcher's settings (FSDP_* environment variables). True if it did."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true" or acc.distributed_type != DistributedType.MULTI_CPU:
        return False
    acc.state.fsdp_plugin = FullyShardedDataParallelPlugin()
    acc.state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP   # as AcceleratorState does
    return True
