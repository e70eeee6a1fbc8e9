"""CLIP-based rewards, differentiable w.r.t. the images (preprocessing is done in torch).

    pickscore:  logit_scale.exp() * cos(image_emb, text_emb) / 26      (Flow-GRPO's PickScore / 26;
                PickScore_v1 has logit_scale.exp() = 100, so scores are ~0.8-0.9 for SD3 images)
    clipscore:  w * max(cos(image_emb, text_emb), 0), w = 2.5            (CLIPScore, Hessel et al. 2021;
                in [0, w]; w = 1 with clamp_negative=False gives the raw cosine)
    aesthetic:  MLP(normalise(image_emb))                                 (LAION improved aesthetic
                predictor, ~1-10 on ViT-L/14 embeddings)

Every factory loads a local `transformers` CLIPModel folder from `path` (PickScore_v1,
openai/clip-vit-large-patch14, ...) and a tokenizer from `processor_path` (defaults to `path`;
PickScore keeps its tokenizer / preprocessor in laion/CLIP-ViT-H-14-laion2B-s32B-b79K).
Image preprocessing follows CLIPImageProcessor: bicubic antialiased resize of the shortest side to
`size` then a centre crop to `crop_size`, then (x - mean) / std. The values come from
`preprocessor_config.json` in `processor_path` when present, else vision_config.image_size and
the OpenAI CLIP mean / std.

Input samples: (B, 3, H, W) float in [0, 1], any H, W. Scores: (B,) float32 on the samples' device.
When the samples require grad the scores keep the graph (the CLIP weights themselves are frozen).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from flowrl.registry import REWARDS

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def require_path(path, option: str) -> Path:
    """`path` (local, or a hub id in the local HF cache) as a Path, or FileNotFoundError naming `option`."""
    from flowrl.cache import resolve_local_model
    return resolve_local_model(path, option)


def _side(value, default: int) -> int:
    """A size entry of preprocessor_config.json (int, {"height", "width"} or {"shortest_edge"})."""
    if value is None:
        return default
    if isinstance(value, dict):
        return int(value.get("shortest_edge") or value.get("height") or default)
    return int(value)


def read_preprocess(processor_path: Path, image_size: int) -> dict:
    """{size, crop_size, mean, std} from `processor_path`/preprocessor_config.json or CLIP defaults."""
    cfg = {}
    file = processor_path / "preprocessor_config.json"
    if file.is_file():
        cfg = json.loads(file.read_text())
    crop = _side(cfg.get("crop_size"), image_size)
    return {"size": _side(cfg.get("size"), crop), "crop_size": crop,
            "mean": tuple(cfg.get("image_mean", CLIP_MEAN)), "std": tuple(cfg.get("image_std", CLIP_STD))}


def clip_preprocess(images: torch.Tensor, size: int, crop_size: int, mean, std) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 3, crop, crop) CLIP pixel values, differentiable.

    Shortest side resized to `size` (bicubic, antialias, clamped to [0, 1]), centre crop,
    (x - mean) / std. Matches CLIPImageProcessor up to its uint8 rounding (mean |diff| ~ 0.004)."""
    h, w = images.shape[-2:]
    new_h, new_w = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)  # HF truncates
    new_h, new_w = max(crop_size, new_h), max(crop_size, new_w)
    if (new_h, new_w) != (h, w):
        images = F.interpolate(images, size=(new_h, new_w), mode="bicubic", align_corners=False,
                               antialias=True).clamp(0, 1)  # PIL clips bicubic overshoot too
    top, left = (new_h - crop_size) // 2, (new_w - crop_size) // 2
    images = images[..., top:top + crop_size, left:left + crop_size]
    mean = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean) / std


def _features(out) -> torch.Tensor:
    """get_*_features returns a tensor (transformers 4) or an output whose pooler_output is it (5)."""
    if isinstance(out, torch.Tensor):
        return out
    for name in ("image_embeds", "text_embeds", "pooler_output"):
        value = getattr(out, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"cannot find projected CLIP features in {type(out).__name__}")


class ClipEmbedder:
    """A frozen local CLIPModel + tokenizer; image and text embeddings, L2-normalised, (B, D)."""

    def __init__(self, device, path, option: str, processor_path=None, dtype: str = "float32"):
        from transformers import AutoTokenizer, CLIPModel

        section = option.rsplit(".", 1)[0]  # e.g. reward.options.pickscore
        if dtype not in _DTYPES:
            raise ValueError(f"{section}.dtype must be one of {sorted(_DTYPES)}; got {dtype!r}")
        path = require_path(path, option)
        proc = require_path(processor_path, section + ".processor_path") if processor_path else path
        self.device, self.dtype = torch.device(device), _DTYPES[dtype]
        self.model = CLIPModel.from_pretrained(str(path), dtype=self.dtype).to(self.device).eval()
        self.model.requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(str(proc))
        self.pre = read_preprocess(proc, int(self.model.config.vision_config.image_size))
        self.max_length = min(int(self.tokenizer.model_max_length),
                              int(self.model.config.text_config.max_position_embeddings))

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    def images(self, samples: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, D) unit-norm image embeddings (keeps the graph)."""
        if samples.ndim != 4 or samples.shape[1] != 3:
            raise ValueError(f"CLIP rewards take samples of shape (B, 3, H, W); got {tuple(samples.shape)}")
        x = clip_preprocess(samples.to(self.device, torch.float32), **self.pre).to(self.dtype)
        emb = _features(self.model.get_image_features(pixel_values=x)).float()
        return emb / emb.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def texts(self, prompts: Sequence[str]) -> torch.Tensor:
        """list of B prompts -> (B, D) unit-norm text embeddings (padding max_length, truncation)."""
        tok = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                             max_length=self.max_length, return_tensors="pt").to(self.device)
        emb = _features(self.model.get_text_features(input_ids=tok["input_ids"],
                                                     attention_mask=tok.get("attention_mask"))).float()
        return emb / emb.norm(dim=-1, keepdim=True)


@REWARDS.register("pickscore", domain="image", differentiable=True)
def pickscore(device: torch.device, path: Optional[str] = None, processor_path: Optional[str] = None,
              dtype: str = "float32", scale: float = 1 / 26):
    """PickScore: logit_scale.exp() * cos(img, text) * scale (scale = 1/26 as in Flow-GRPO)."""
    clip = ClipEmbedder(device, path, "reward.options.pickscore.path", processor_path, dtype)
    logit_scale = float(clip.model.logit_scale.exp())

    def fn(samples: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> torch.Tensor:
        cos = (clip.images(samples) * clip.texts(prompts)).sum(-1)
        return logit_scale * cos * float(scale)

    return fn


@REWARDS.register("clipscore", domain="image", differentiable=True)
def clipscore(device: torch.device, path: Optional[str] = None, processor_path: Optional[str] = None,
              dtype: str = "float32", w: float = 2.5, clamp_negative: bool = True):
    """CLIPScore = w * max(cos(img, text), 0); clamp_negative=False keeps negative cosines."""
    clip = ClipEmbedder(device, path, "reward.options.clipscore.path", processor_path, dtype)

    def fn(samples: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> torch.Tensor:
        cos = (clip.images(samples) * clip.texts(prompts)).sum(-1)
        return float(w) * (cos.clamp(min=0) if clamp_negative else cos)

    return fn


class AestheticMLP(nn.Module):
    """LAION improved-aesthetic-predictor head (christophschuhmann/improved-aesthetic-predictor).

    layers = Sequential(Linear(D, 1024), Dropout(0.2), Linear(1024, 128), Dropout(0.2),
                        Linear(128, 64), Dropout(0.1), Linear(64, 16), Linear(16, 1))
    State-dict keys layers.{0,2,4,6,7}.{weight,bias}; D = 768 for ViT-L/14 (here: the CLIP
    projection dim, so tiny test models work). Input: (B, D) unit-norm embeddings -> (B, 1)."""

    def __init__(self, input_dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def load_state_dict(path: Path) -> dict:
    """A state dict from .safetensors (safetensors) or .pt / .pth / .bin (torch.load, weights only)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def load_aesthetic_head(head_path, input_dim: int) -> Tuple[AestheticMLP, Path]:
    """AestheticMLP(input_dim) with weights from `head_path`; a clear error on a shape mismatch."""
    path = require_path(head_path, "reward.options.aesthetic.head_path")
    head = AestheticMLP(input_dim)
    try:
        head.load_state_dict(load_state_dict(path))
    except RuntimeError as e:
        raise RuntimeError(f"reward.options.aesthetic.head_path={str(path)!r} does not fit the LAION "
                           f"aesthetic MLP with input dim {input_dim} (the CLIP projection dim of "
                           f"reward.options.aesthetic.path): {e}") from e
    return head.eval().requires_grad_(False), path


@REWARDS.register("aesthetic", domain="image", differentiable=True)
def aesthetic(device: torch.device, path: Optional[str] = None, head_path: Optional[str] = None,
              processor_path: Optional[str] = None, dtype: str = "float32"):
    """LAION aesthetic score: AestheticMLP(unit-norm CLIP image embedding); prompts are ignored."""
    require_path(head_path, "reward.options.aesthetic.head_path")  # fail before loading CLIP
    clip = ClipEmbedder(device, path, "reward.options.aesthetic.path", processor_path, dtype)
    head, _ = load_aesthetic_head(head_path, clip.dim)
    head = head.to(clip.device)

    def fn(samples: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> torch.Tensor:
        return head(clip.images(samples)).squeeze(-1)

    return fn
