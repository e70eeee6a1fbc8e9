"""Non-finite guard: a NaN/inf loss or gradient norm never reaches the optimizer, and no checkpoint
holds non-finite weights or optimizer state.

The trainer calls `StepGuard.backward_and_step` in ONE place (trainer.optimize) instead of
backward -> clip -> optimizer.step. Per accumulation window it keeps a device-side "loss was
non-finite" flag (no host sync per backward); at the optimizer-step boundary it adds "grad norm is
non-finite", sums the flags over all ranks (so every DDP rank takes the same decision) and either
steps or drops the accumulated gradients. The one host sync per step is the one `float(grad_norm)`
already cost.

config.train.nonfinite = "stop": skip bad steps, raise NonFiniteError after
train.max_nonfinite_steps consecutive ones; "skip": skip and count them (metrics `skipped_steps`).
fp16 with a GradScaler: an inf gradient is the scaler's normal overflow signal, so only the loss is
checked (the scaler skips those steps itself). DeepSpeed steps its engine inside backward(), so a
step cannot be withheld there: "skip" is refused and "stop" stops at the first bad step.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Optional

import torch

from flowrl.config import ConfigError

MODES = ("stop", "skip")


class NonFiniteError(ConfigError):
    """Training produced NaN/inf (loss, gradient, weights or a reward); the message says where."""


@contextlib.contextmanager
def where(label: str):
    """Prefix NonFiniteError messages raised inside with `label` (e.g. "epoch 3")."""
    try:
        yield
    except NonFiniteError as e:
        raise NonFiniteError(f"{label}: {e}") from None


def nonfinite_names(named_tensors: Iterable) -> list:
    """Names of the tensors in [(name, tensor)] holding a NaN or inf (floating tensors only)."""
    return [n for n, t in named_tensors
            if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all())]


def check_state_finite(weights: dict, optimizer_state: dict, epoch: int) -> None:
    """Raise NonFiniteError before a checkpoint of epoch `epoch` is written with NaN/inf in the
    trainable weights {name: tensor} or the optimizer's state_dict()."""
    from flowrl.tree_io import flatten_tree
    bad = nonfinite_names(weights.items())
    bad_opt = nonfinite_names(flatten_tree(optimizer_state)[0].items())
    if bad or bad_opt:
        what = (f"weights {bad[:3]}" if bad else "") + (" and " if bad and bad_opt else "") + \
               (f"optimizer state {bad_opt[:3]}" if bad_opt else "")
        raise NonFiniteError(f"epoch {epoch}: non-finite {what}; checkpoint not written (the previous "
                             f"one is kept). Lower train.lr or check the data, then --resume")


class StepGuard:
    def __init__(self, acc, optimizer, params, max_grad_norm: float, mode: str = "stop",
                 max_bad: int = 3):
        if mode not in MODES:
            raise ConfigError(f"train.nonfinite={mode!r}: use one of {list(MODES)}")
        if max_bad < 1:
            raise ConfigError(f"train.max_nonfinite_steps={max_bad}: must be >= 1")
        self.deepspeed = acc.distributed_type == "DEEPSPEED"
        if self.deepspeed and mode == "skip":
            raise ConfigError("train.nonfinite=skip is not possible under DeepSpeed (its engine steps "
                              "inside backward); use train.nonfinite=stop")
        self.acc, self.optimizer, self.params, self.max_grad_norm = acc, optimizer, params, max_grad_norm
        self.mode, self.max_bad = mode, 1 if self.deepspeed else max_bad
        self.check_grad = getattr(optimizer, "scaler", None) is None
        self.streak, self.skipped = 0, 0
        self._loss_bad = None

    def backward_and_step(self, loss: torch.Tensor, epoch: int, step: int) -> Optional[float]:
        """backward(loss); at an accumulation boundary clip and step unless a loss of the window or
        the grad norm is non-finite on any rank. -> the grad norm of an applied step, else None.
        `epoch`, `step` (1-based) only name the place in errors. Call inside acc.accumulate()."""
        bad = ~torch.isfinite(loss.detach())
        self._loss_bad = bad if self._loss_bad is None else self._loss_bad | bad
        self.acc.backward(loss)
        if not self.acc.sync_gradients:
            return None
        norm = self.acc.clip_grad_norm_(self.params, self.max_grad_norm)
        if torch.is_tensor(norm):   # FSDP2 with every weight sharded: a DTensor (every rank is here)
            from flowrl.fsdp import full
            norm = full(norm)
        norm_t = torch.as_tensor(norm if norm is not None else 0.0, dtype=torch.float32,
                                 device=self._loss_bad.device)
        grad_bad = ~torch.isfinite(norm_t) if self.check_grad else torch.zeros_like(self._loss_bad)
        flags = torch.stack([self._loss_bad, grad_bad]).float()
        self._loss_bad = None
        if self.acc.num_processes > 1:
            flags = self.acc.reduce(flags, "sum")
        loss_bad, grad_bad = (bool(f) for f in flags.tolist())
        if not (loss_bad or grad_bad):
            self.streak = 0
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            return float(norm_t)
        self.optimizer.zero_grad(set_to_none=True)   # the bad gradients never reach the weights
        self.streak, self.skipped = self.streak + 1, self.skipped + 1
        if self.mode == "stop" and self.streak >= self.max_bad:
            what = "loss" if loss_bad else "gradient norm"
            raise NonFiniteError(
                f"epoch {epoch}, optimizer step {step}: non-finite {what} (NaN/inf) in {self.streak} "
                f"consecutive step(s); lower train.lr, check the data/reward, or set train.nonfinite=skip "
                f"(the last checkpoint is finite: --resume continues from it)")
        return None

    def pop_skipped(self) -> int:
        """Steps skipped since the last call (for the epoch's metrics row)."""
        n, self.skipped = self.skipped, 0
        return n
