"""JPEG (in)compressibility rewards (DDPO): the size of the image encoded as JPEG.

    jpeg_incompressibility: size in kB (1 kB = 1000 bytes) of the JPEG at `quality` (default 95)
    jpeg_compressibility:   minus that size

Both are non-differentiable (PIL encoding). Samples are (B, 3, H, W) floats in [0, 1]; they are
clamped, scaled to uint8 (round-to-nearest) and encoded one by one.
"""
from __future__ import annotations

import io
from typing import List, Sequence

import numpy as np
import torch

from flowrl.registry import REWARDS


def to_uint8(samples: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) float in [0, 1] -> (B, 3, H, W) uint8 on the CPU (clamped, x 255, round-to-nearest):
    the pixels every image reward sees."""
    if samples.ndim != 4 or samples.shape[1] != 3:
        raise ValueError(f"image rewards take samples of shape (B, 3, H, W); got {tuple(samples.shape)}")
    return samples.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()


def to_uint8_images(samples: torch.Tensor) -> List[np.ndarray]:
    """(B, 3, H, W) float in [0, 1] -> list of B (H, W, 3) uint8 RGB arrays (values clamped)."""
    return list(to_uint8(samples).permute(0, 2, 3, 1).numpy())


def jpeg_size_kb(image: np.ndarray, quality: int = 95) -> float:
    """Size in kB (1000 bytes) of one (H, W, 3) uint8 RGB image encoded by PIL as JPEG at `quality`."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="JPEG", quality=int(quality))
    return buf.tell() / 1000.0


def _check_quality(quality) -> int:
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"jpeg quality must be in [1, 100]; got {quality}. "
                         f"Fix reward.options.<jpeg reward>.quality")
    return int(quality)


@REWARDS.register("jpeg_incompressibility", domain="image", differentiable=False)
def jpeg_incompressibility(device: torch.device, quality: int = 95):
    """Reward = JPEG size in kB at `quality` (larger = more detailed / noisier images)."""
    quality = _check_quality(quality)

    def fn(samples: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> torch.Tensor:
        sizes = [jpeg_size_kb(img, quality) for img in to_uint8_images(samples)]
        return torch.tensor(sizes, dtype=torch.float32)

    return fn


@REWARDS.register("jpeg_compressibility", domain="image", differentiable=False)
def jpeg_compressibility(device: torch.device, quality: int = 95):
    """Reward = -(JPEG size in kB at `quality`) (larger = simpler, smoother images)."""
    inner = jpeg_incompressibility(device, quality=quality)

    def fn(samples: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> torch.Tensor:
        return -inner(samples, prompts, metadata)

    return fn
