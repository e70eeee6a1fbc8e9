"""Learning-rate schedules over epochs (`train.lr_schedule`).

The factor is a pure function of the epoch, so a resumed run picks up exactly the learning rate it
would have had (nothing to save in the checkpoint):

    progress p = min(1, epoch / decay_epochs)                  (epoch 0-based, at the epoch's start)
    constant: 1
    linear:   1 - (1 - final) p
    cosine:   final + (1 - final) (1 + cos(pi p)) / 2
so the learning rate falls from train.lr at epoch 0 to train.lr x final at epoch decay_epochs and
stays there. decay_epochs 0 means num_epochs.
"""
from __future__ import annotations

import math

SCHEDULES = ("constant", "linear", "cosine")


def lr_factor(kind: str, epoch: int, decay_epochs: int, final: float = 0.0) -> float:
    """Multiplier of the base learning rate at the start of `epoch` (0-based), in [final, 1]."""
    if kind not in SCHEDULES:
        raise ValueError(f"lr schedule {kind!r} is unknown; use one of {SCHEDULES}")
    if decay_epochs < 1 or not 0.0 <= final <= 1.0:
        raise ValueError(f"lr schedule needs decay_epochs >= 1 (got {decay_epochs}) and final in [0, 1] "
                         f"(got {final})")
    if kind == "constant":
        return 1.0
    p = min(1.0, max(0, epoch) / decay_epochs)
    if kind == "linear":
        return 1.0 - (1.0 - final) * p
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * p))


def apply_lr_schedule(optimizer, train, epoch: int, num_epochs: int) -> float:
    """Set every parameter group's lr to train.lr x lr_factor(...) for this epoch; returns that lr.
    `train` is the config's train section (lr, lr_schedule, lr_decay_epochs, lr_final)."""
    kind = train.get("lr_schedule", "constant")
    decay = int(train.get("lr_decay_epochs", 0)) or num_epochs
    lr = float(train.lr) * lr_factor(kind, epoch, decay, float(train.get("lr_final", 0.0)))
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
