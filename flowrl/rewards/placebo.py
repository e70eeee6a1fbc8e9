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
from flowrl.rewards.jpeg import to_uint8


def sample_bytes(x: torch.Tensor) -> bytes:
    """The bytes a score is drawn from. Images (3, H, W) in [0, 1]: the uint8 pixels, channel-major
    (as the image rewards see them: flowrl.rewards.jpeg.to_uint8); any other shape: the float32 values."""
    if x.ndim == 3 and x.shape[0] == 3:
        return to_uint8(x[None])[0].numpy().tobytes()
    return np.ascontiguousarray(x.detach().float().cpu().numpy()).tobytes()


def placebo_scores(samples: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """(B, ...) -> (B,) float32 in [0, 1): the first 8 bytes of sha256(seed || sample bytes) read as
    an unsigned integer / 2^64. seed: a signed 64-bit integer."""
    prefix = int(seed).to_bytes(8, "little", signed=True)
    out = [int.from_bytes(hashlib.sha256(prefix + sample_bytes(x)).digest()[:8], "little") / 2.0 ** 64
           for x in samples]
    return torch.tensor(out, dtype=torch.float32)


@REWARDS.register("placebo", domain="any", differentiable=False)
def placebo(device: torch.device, seed: int = 0):
    """A reward with no information: uniform in [0, 1), a hash of the sample's own bytes and `seed`."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not -2 ** 63 <= seed < 2 ** 63:
        raise ValueError(f"placebo: seed must be an integer in [-2^63, 2^63); got {seed!r}. "
                         f"Fix reward.options.placebo.seed")

    def fn(samples: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> torch.Tensor:
        return placebo_scores(samples, seed)

    return fn
