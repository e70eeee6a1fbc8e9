"""The placebo reward: a control that carries no information about what a sample shows.

    placebo(x) = u(sha256(seed, bytes of x)) in [0, 1)

Each sample gets a pseudo-random score drawn from the bytes of the sample itself (images: the uint8
pixels the other image rewards see; anything else: its float32 values), so the score is a fixed
function of the sample (every rank and every re-evaluation agrees), uniform over samples, and
unrelated to the prompt or to anything in the picture: one changed pixel value draws a new score.

What it is for: a method trained on it can only move by its own drift (e.g. pushing away from
"losing" samples, sharpening on its own samples), never by learning. Whatever a held-out metric gains
under the placebo is what the method does to that metric without any reward signal; a method's
gain on a real reward is then only credible beyond that (README "A placebo control").
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
import torch

from flowrl.registry import REWARDS


def sample_bytes(x: torch.Tensor) -> bytes:
    """The bytes a score is drawn from. Images (3, H, W) in [0, 1]: the uint8 pixels (as the image
    rewards see them: clamped, x 255, rounded); any other shape: the float32 values."""
    x = x.detach().cpu()
    if x.ndim == 3 and x.shape[0] == 3:
        return x.float().clamp(0, 1).mul(255).round().to(torch.uint8).numpy().tobytes()
    return np.ascontiguousarray(x.float().numpy()).tobytes()


def placebo_scores(samples: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """(B, ...) -> (B,) float32 in [0, 1): the first 8 bytes of sha256(seed || sample bytes) read as
    an unsigned integer / 2^64."""
    out = []
    for x in samples:
        digest = hashlib.sha256(int(seed).to_bytes(8, "little", signed=True) + sample_bytes(x)).digest()
        out.append(int.from_bytes(digest[:8], "little") / 2.0 ** 64)
    return torch.tensor(out, dtype=torch.float32)


@REWARDS.register("placebo", domain="any", differentiable=False)
def placebo(device: torch.device, seed: int = 0):
    """A reward with no information: uniform in [0, 1), a hash of the sample's own bytes and `seed`."""
    def fn(samples: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> torch.Tensor:
        return placebo_scores(samples, seed)

    return fn
