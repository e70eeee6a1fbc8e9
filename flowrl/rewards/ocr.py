"""OCR reward (Flow-GRPO's text-rendering task) with RapidOCR (PP-OCRv4 onnx models, CPU).

    reward = 1 - min(levenshtein(recognised, target), len(target)) / max(len(target), 1)   in [0, 1]

Target text: metadata["text"] when present, else the first quoted substring of the prompt
('a sign that says "Hello World"' -> "Hello World"; "..." is tried before '...').
Recognised text: the text of every detected box (RapidOCR drops boxes scoring < `text_score`),
in reading order, concatenated. Both strings are normalised the same way before comparing:

  * case-insensitive (both lower-cased) unless `case_sensitive=True`;
  * whitespace: removed entirely (Flow-GRPO: `.replace(' ', '')`) unless `keep_spaces=True`, in which
    case boxes are joined with one space and whitespace runs collapse to one space;
  * `substring_match=True` (Flow-GRPO's rule, the default): if the target occurs inside the recognised
    text the distance is 0, so extra text elsewhere in the image is not penalised.

Not differentiable. Needs `pip install rapidocr-onnxruntime` (models ship inside the wheel).
"""
from __future__ import annotations

import re
from typing import Optional, Sequence

import torch

from flowrl.registry import REWARDS
from flowrl.rewards.jpeg import to_uint8_images

# PaddleOCR's detector sizing (what Flow-GRPO runs): shrink only images whose longest side is > 960.
# RapidOCR's own default (shortest side raised to >= 736) is ~20x slower on small images.
ENGINE_DEFAULTS = {"det_limit_type": "max", "det_limit_side_len": 960}
_QUOTED = (re.compile(r'"([^"]+)"'), re.compile(r"'([^']+)'"))


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions all cost 1) between strings a and b."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def normalise_text(text: str, case_sensitive: bool = False, keep_spaces: bool = False) -> str:
    """Lower-case (unless case_sensitive) and remove whitespace (or collapse it if keep_spaces)."""
    text = text if case_sensitive else text.lower()
    if keep_spaces:
        return " ".join(text.split())
    return "".join(text.split())


def text_similarity(recognised: str, target: str, substring_match: bool = True) -> float:
    """1 - edit distance / max(len(target), 1), clipped to [0, 1]; strings already normalised.

    An empty target scores 1 for an empty recognition, else 0."""
    if not target:
        return 1.0 if not recognised else 0.0
    if substring_match and target in recognised:
        return 1.0
    dist = min(levenshtein(recognised, target), len(target))
    return 1.0 - dist / max(len(target), 1)


def target_text(prompt: str, meta: Optional[dict]) -> str:
    """metadata["text"] if present, else the first "..." (then '...') substring of the prompt."""
    if meta and meta.get("text") is not None:
        return str(meta["text"])
    for pattern in _QUOTED:
        match = pattern.search(prompt)
        if match:
            return match.group(1)
    raise ValueError(f"ocr reward: no target text for prompt {prompt!r}; put the text to render in "
                     f"double quotes in the prompt or give metadata['text'] (e.g. an OCR prompt set)")


def quiet_onnxruntime():
    """Import onnxruntime with its telemetry off: ORT_DISABLE_TELEMETRY=1 before the import (the full
    opt-out; `import flowrl` sets it too) and disable_telemetry_events() after. Returns the module."""
    import os
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime
    onnxruntime.disable_telemetry_events()
    return onnxruntime


def _make_engine(text_score: float, use_cls: bool, engine_options: Optional[dict]):
    try:
        quiet_onnxruntime()
        from rapidocr_onnxruntime import RapidOCR
    except ImportError as e:
        raise ImportError("the ocr reward needs RapidOCR: pip install rapidocr-onnxruntime") from e
    options = {**ENGINE_DEFAULTS, **dict(engine_options or {})}
    return RapidOCR(text_score=float(text_score), use_cls=bool(use_cls), **options)


def recognise(engine, image_rgb, joiner: str = "") -> str:
    """Run RapidOCR on one (H, W, 3) uint8 RGB array; return the box texts joined by `joiner`."""
    result, _ = engine(image_rgb[:, :, ::-1].copy())  # RapidOCR takes ndarrays as BGR
    if not result:
        return ""
    # with detection each item is [box, text, score]; without it, [text, score]
    return joiner.join(str(item[-2]) for item in result)


@REWARDS.register("ocr", domain="image", differentiable=False)
def ocr(device: torch.device, case_sensitive: bool = False, keep_spaces: bool = False,
        substring_match: bool = True, text_score: float = 0.5, use_cls: bool = False,
        engine_options: Optional[dict] = None):
    """OCR text-match reward in [0, 1]; see the module docstring for the options.

    engine_options: keyword arguments for `RapidOCR(...)` on top of ENGINE_DEFAULTS
      (e.g. {"det_use_cuda": True} or {"det_limit_type": "min", "det_limit_side_len": 736}).
    The engine is built once per factory call and reused by every call of the returned fn."""
    engine = _make_engine(text_score, use_cls, engine_options)
    joiner = " " if keep_spaces else ""

    def fn(samples: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> torch.Tensor:
        metadata = list(metadata) if metadata else [{}] * len(prompts)
        scores = []
        for image, prompt, meta in zip(to_uint8_images(samples), prompts, metadata):
            target = normalise_text(target_text(prompt, meta), case_sensitive, keep_spaces)
            seen = normalise_text(recognise(engine, image, joiner), case_sensitive, keep_spaces)
            scores.append(text_similarity(seen, target, substring_match))
        return torch.tensor(scores, dtype=torch.float32)

    return fn
