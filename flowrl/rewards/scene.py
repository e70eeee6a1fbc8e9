"""`scene_geneval`: GenEval in miniature for the scenes of flowrl.scenes (coloured shapes).

From the pixels alone, per image:
  1. foreground = saturated pixels (HSV saturation > 0.35, value > 0.25; the background is grey);
  2. each foreground pixel takes the nearest palette hue (red, yellow, green, blue);
  3. objects = connected components of each colour (scipy.ndimage.label, 4-neighbours) of at least
     `min_area` pixels (default 0.6 % of the image: 6 px at 32 px);
  4. shape by a tiny classifier (flowrl.scenes.shape_classifier: logistic regression on the blob's
     12 x 12 soft mask + box statistics, trained on blurred generator scenes, cached): square, circle,
     triangle, or "other" (not an object); position from centroids and boxes with GenEval's rule
     (generator.relations).

The prompt's attributes come from its metadata (GenEval-style "include"/"exclude", as in the
scenes/*.jsonl prompt sets) or, without it, are parsed from the prompt text. Checks per include item:
"present" (>= 1 object of the class); for counting, "count" (exactly n: the exclude item), for colour,
"color" (>= n objects of that class in that colour), for position, "position" (some matching pair is in
that relation). reward = fraction of checks that hold, in [0, 1]; `scene_accuracy` = 1 if all hold
(GenEval's strict per-prompt correctness).
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from flowrl.registry import REWARDS
from flowrl.scenes import generator as g

SAT_MIN, VAL_MIN = 0.35, 0.25


# ------------------------------------------------------------------------------------- parsing
_NUM = {w: n for n, w in g.NUMBERS.items()}
_PHRASE = r"(a|an|one|two|three|four)\s+(?:(red|yellow|green|blue)\s+)?(square|circle|triangle)s?"
_REL = "|".join(g.RELATIONS)


def _item(article: str, color: Optional[str], shape: str) -> dict:
    item = {"class": shape, "count": _NUM.get(article, 1)}
    if color:
        item["color"] = color
    return item


def parse_caption(text: str) -> dict:
    """A scene caption -> its attributes (generator's schema). ValueError if it is not one of the six
    templates ("a red square", "three circles", "a circle and a square", "a circle left of a square",
    "a red square and a blue circle", "a square")."""
    t = " ".join(text.lower().replace("a photo of ", "").strip(" .").split())
    m = re.fullmatch(rf"{_PHRASE}(?:\s+(and|{_REL})\s+{_PHRASE})?", t)
    if not m:
        raise ValueError(f"cannot read scene attributes from prompt {text!r}: give metadata with "
                         f"'include' (scenes/*.jsonl rows) or a caption like 'a red square and a blue circle'")
    first = _item(*m.group(1, 2, 3))
    if m.group(4) is None:
        if m.group(1) in _NUM:
            return g.counting(first["count"], first["class"])
        return g.colors(first["color"], first["class"]) if "color" in first else g.single_object(first["class"])
    second = _item(*m.group(5, 6, 7))
    if m.group(4) != "and":
        return g.position(first["class"], m.group(4), second["class"])
    if "color" in first and "color" in second:
        return g.color_attr(first["color"], first["class"], second["color"], second["class"])
    return g.two_object(first["class"], second["class"])


def attributes_of(prompt: str, metadata: Optional[dict]) -> dict:
    """Metadata with an 'include' list wins; otherwise the prompt is parsed."""
    if metadata and metadata.get("include"):
        return {"tag": metadata.get("tag", ""), "include": metadata["include"],
                "exclude": metadata.get("exclude", [])}
    return parse_caption(prompt)


# ------------------------------------------------------------------------------------ detection
def _hue_sat_val(img: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(H, W, 3) RGB in [0, 1] -> hue in degrees [0, 360), saturation, value, each (H, W)."""
    mx, mn = img.max(-1), img.min(-1)
    d = np.maximum(mx - mn, 1e-8)
    r, gg, b = img[..., 0], img[..., 1], img[..., 2]
    hue = np.where(mx == r, ((gg - b) / d) % 6, np.where(mx == gg, (b - r) / d + 2, (r - gg) / d + 4)) * 60
    return hue, (mx - mn) / np.maximum(mx, 1e-8), mx


PALETTE_HUES = _hue_sat_val(np.array([list(c) for c in g.COLORS.values()]))[0]


def color_labels(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) in [0, 1] -> (H, W) int: index into generator.COLORS, -1 for background."""
    hue, sat, val = _hue_sat_val(img)
    diff = np.abs(hue[..., None] - PALETTE_HUES)
    label = np.minimum(diff, 360 - diff).argmin(-1)
    return np.where((sat > SAT_MIN) & (val > VAL_MIN), label, -1)


def blobs(img: np.ndarray, min_area: Optional[int] = None) -> List[Tuple[np.ndarray, float, float, dict]]:
    """(H, W, 3) RGB in [0, 1] -> one (features, cx, cy, info) per one-colour connected component of
    >= min_area pixels: shape_classifier features, centroid (pixels, x right, y down) and
    info {color, w, h, area} (box size in pixels)."""
    from scipy import ndimage

    from flowrl.scenes.shape_classifier import component_features

    labels = color_labels(img)
    sat = _hue_sat_val(img)[1]
    min_area = max(4, round(0.006 * labels.size)) if min_area is None else min_area
    out = []
    for k, color in enumerate(g.COLORS):
        comp, _ = ndimage.label(labels == k)
        for idx, box in enumerate(ndimage.find_objects(comp), start=1):
            mask = comp[box] == idx
            if mask.sum() < min_area:
                continue
            ys, xs = np.nonzero(mask)
            info = {"color": color, "w": float(mask.shape[1]), "h": float(mask.shape[0]), "area": int(mask.sum())}
            out.append((component_features(sat, mask, box), float(xs.mean() + box[1].start + 0.5),
                        float(ys.mean() + box[0].start + 0.5), info))
    return out


def detect_objects(img: np.ndarray, min_area: Optional[int] = None) -> List[dict]:
    """(H, W, 3) RGB in [0, 1] -> objects {class, color, cx, cy, w, h, area}; blobs the shape
    classifier calls "other" (bars, merged shapes) are not objects."""
    from flowrl.scenes.shape_classifier import classify

    found = blobs(img, min_area)
    classes = classify([f for f, _, _, _ in found])
    return [{"class": c, "cx": cx, "cy": cy, **info} for c, (_, cx, cy, info) in zip(classes, found)
            if c != "other"]


# -------------------------------------------------------------------------------------- scoring
def _matching(objects: List[dict], item: dict) -> List[dict]:
    return [o for o in objects if o["class"] == item["class"]
            and (not item.get("color") or o["color"] == item["color"])]


def _related(a: dict, b: dict, relation: str) -> bool:
    return relation in g.relations((a["cx"], a["cy"]), (a["w"], a["h"]), (b["cx"], b["cy"]), (b["w"], b["h"]))


def checks(attributes: dict, objects: List[dict]) -> Dict[str, bool]:
    """{check name: holds} for one prompt's attributes and one image's detected objects."""
    out: Dict[str, bool] = {}
    inc = attributes["include"]
    limits = {e["class"]: int(e["count"]) for e in attributes.get("exclude", [])}
    for i, item in enumerate(inc):
        n, same = int(item.get("count", 1)), [o for o in objects if o["class"] == item["class"]]
        out[f"{i}.present"] = len(same) >= 1
        if n > 1 or item["class"] in limits:
            out[f"{i}.count"] = n <= len(same) < limits.get(item["class"], 10 ** 9)
        if item.get("color"):
            out[f"{i}.color"] = len(_matching(objects, item)) >= n
        if item.get("position"):
            rel, j = item["position"]
            out[f"{i}.position"] = any(_related(a, b, rel) for a in _matching(objects, item)
                                       for b in _matching(objects, inc[int(j)]))
    for e in attributes.get("exclude", []):
        if not any(it["class"] == e["class"] for it in inc):
            out[f"exclude.{e['class']}"] = len([o for o in objects if o["class"] == e["class"]]) < int(e["count"])
    return out


def extra_objects(attributes: dict, objects: List[dict]) -> int:
    """Objects detected beyond the number the prompt asks for (the sum of its include counts), >= 0.
    GenEval checks counts only on its counting prompts, so a policy can fill the picture with shapes
    (clutter) and still pass "a square"; this measures that."""
    return max(0, len(objects) - sum(int(it.get("count", 1)) for it in attributes["include"]))


def _as_hwc(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] (any device/dtype) -> (B, H, W, 3) float64 numpy, clipped."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"scene_geneval scores RGB images (B, 3, H, W) in [0, 1]; got shape "
                         f"{tuple(images.shape)}")
    return images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy().astype(np.float64)


def scene_measures(images: torch.Tensor, prompts: Sequence[str], metadata: Optional[Sequence[dict]] = None,
                   no_extra: bool = False) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One detection pass per image -> (reward (B,) fraction of checks that hold, strict (B,) 1.0 if
    all hold, extra (B,) objects beyond the prompt's), float32 CPU.
    no_extra: reward = fraction / (1 + extra), and strict also needs extra == 0: an extra shape halves
    the reward, so clutter costs more than it can pass by chance, and an empty picture still scores 0
    (an additive "no clutter" bonus rewarded blank images instead)."""
    arr = _as_hwc(images)
    metadata = list(metadata) if metadata is not None else [{}] * len(prompts)
    if not (len(arr) == len(prompts) == len(metadata)):
        raise ValueError(f"{len(arr)} images, {len(prompts)} prompts, {len(metadata)} metadata: one each")
    frac, strict, extras = [], [], []
    for img, p, m in zip(arr, prompts, metadata):
        attributes, objects = attributes_of(p, m), detect_objects(img)
        c, extra = checks(attributes, objects), extra_objects(attributes, objects)
        penalty = extra if no_extra else 0
        frac.append(sum(c.values()) / len(c) / (1 + penalty))
        strict.append(float(all(c.values()) and penalty == 0))
        extras.append(float(extra))
    return tuple(torch.tensor(x, dtype=torch.float32) for x in (frac, strict, extras))


def scene_scores(images: torch.Tensor, prompts: Sequence[str], metadata: Optional[Sequence[dict]] = None,
                 no_extra: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """-> (reward (B,), strict (B,)) of scene_measures."""
    return scene_measures(images, prompts, metadata, no_extra)[:2]


def scene_accuracy(images: torch.Tensor, prompts: Sequence[str],
                   metadata: Optional[Sequence[dict]] = None) -> torch.Tensor:
    """(B,) float32: 1.0 where every attribute holds (GenEval's strict correctness), else 0.0."""
    return scene_scores(images, prompts, metadata)[1]


@REWARDS.register("scene_geneval", domain="image", differentiable=False)
def scene_geneval(device=None, strict: bool = False, no_extra: bool = False):
    """Options: strict=True scores all-or-nothing (scene_accuracy) instead of the fraction of checks;
    no_extra=True divides it by 1 + the number of objects beyond the prompt's (GenEval has no such
    check, and RL on it learns to fill the picture with shapes: see `scene_extra_objects`)."""
    def fn(images, prompts, metadata):
        return scene_scores(images, prompts, metadata, no_extra)[1 if strict else 0]
    return fn


@REWARDS.register("scene_geneval_no_extra", domain="image", differentiable=False)
def scene_geneval_no_extra(device=None, strict: bool = False):
    """scene_geneval with no_extra=True, under its own name so that the plain `scene_geneval` can be
    logged beside it (config.reward.metrics)."""
    return scene_geneval(device, strict=strict, no_extra=True)


@REWARDS.register("scene_extra_objects", domain="image", differentiable=False)
def scene_extra_objects_metric(device=None):
    """Objects per image beyond those the prompt asks for; log it with config.reward.metrics =
    ("scene_accuracy", "scene_extra_objects") to see clutter that scene_geneval does not penalise."""
    def fn(images, prompts, metadata):
        return scene_measures(images, prompts, metadata)[2]
    return fn


@REWARDS.register("scene_accuracy", domain="image", differentiable=False)
def scene_accuracy_reward(device=None):
    """GenEval's strict per-prompt correctness (1.0 if every attribute holds); log it next to
    `scene_geneval` with config.reward.metrics = ("scene_accuracy",)."""
    def fn(images, prompts, metadata):
        return scene_accuracy(images, prompts, metadata)
    return fn
