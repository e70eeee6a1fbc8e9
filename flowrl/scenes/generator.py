"""Captioned scenes of coloured shapes, GenEval's categories at 32 px (any side >= 16 works).

A prompt's *attributes* follow GenEval's metadata (JSON-able):

    {"tag": "color_attr",
     "include": [{"class": "square", "count": 1, "color": "red"},
                 {"class": "circle", "count": 1, "color": "blue"}],
     "exclude": []}

    tag         single_object | colors | counting | two_object | position | color_attr
    include[i]  class (SHAPES), count >= 1, optional color (COLORS), optional
                position [relation, j]: this object is `relation` of include[j] (RELATIONS)
    exclude[i]  {"class", "count"}: fewer than `count` such objects (counting is exact this way)

`make_scene(attributes, seed)` renders one image that satisfies them (colours not asked for, sizes and
places are drawn from the seed) and `caption(attributes)` writes its prompt, e.g. "a red square and a
blue circle", "three triangles", "a circle left of a square". Image convention: (3, H, W) float32 in
[0, 1], x to the right, y downwards ("above" = smaller y); a light grey background; shapes are axis
aligned, anti-aliased by 4x super-sampling, never touching (>= 2 px apart at 32 px).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

SHAPES = ("square", "circle", "triangle")
COLORS: Dict[str, Tuple[float, float, float]] = {     # well-separated hues: 0, ~52, 120, ~230 degrees
    "red": (0.90, 0.12, 0.12), "yellow": (0.95, 0.82, 0.10),
    "green": (0.12, 0.70, 0.15), "blue": (0.12, 0.25, 0.90)}
NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}
RELATIONS = ("left of", "right of", "above", "below")
TAGS = ("single_object", "colors", "counting", "two_object", "position", "color_attr")
BACKGROUND = 0.92          # grey level of the background (saturation 0: never mistaken for an object)
POSITION_THRESHOLD = 0.1   # GenEval's margin, in units of the two objects' summed box sides


@dataclass
class Scene:
    """image (3, H, W) float32 in [0, 1]; the prompt `caption`; its `attributes` (see module doc);
    `objects`: the drawn objects, dicts {class, color, cx, cy, size} in pixels (centre, box side)."""
    image: torch.Tensor
    caption: str
    attributes: dict
    objects: List[dict] = field(default_factory=list)


# ------------------------------------------------------------------------------------ captions
def _noun(shape: str, count: int) -> str:
    return shape if count == 1 else shape + "s"


def _phrase(item: dict) -> str:
    """One include item as words: "a circle", "a red circle", "three circles"."""
    n = int(item.get("count", 1))
    words = [NUMBERS[n] if n > 1 or item.get("_counting") else "a"]
    if item.get("color"):
        words.append(item["color"])
    return " ".join(words + [_noun(item["class"], n)])


def caption(attributes: dict) -> str:
    """The prompt of `attributes` (GenEval's templates without "a photo of")."""
    tag, inc = attributes["tag"], attributes["include"]
    if tag == "counting":
        return _phrase(dict(inc[0], _counting=True))
    if tag == "position":
        rel, _ = inc[1]["position"]
        return f"{_phrase(inc[1])} {rel} {_phrase(inc[0])}"
    return " and ".join(_phrase(item) for item in inc)


# ------------------------------------------------------------------------------ attribute builders
def single_object(shape: str) -> dict:
    return {"tag": "single_object", "include": [{"class": shape, "count": 1}], "exclude": []}


def colors(color: str, shape: str) -> dict:
    return {"tag": "colors", "include": [{"class": shape, "count": 1, "color": color}], "exclude": []}


def counting(count: int, shape: str) -> dict:
    return {"tag": "counting", "include": [{"class": shape, "count": int(count)}],
            "exclude": [{"class": shape, "count": int(count) + 1}]}


def two_object(first: str, second: str) -> dict:
    return {"tag": "two_object", "include": [{"class": first, "count": 1}, {"class": second, "count": 1}],
            "exclude": []}


def position(shape: str, relation: str, other: str) -> dict:
    """"a {shape} {relation} a {other}" (GenEval stores the reference object first)."""
    return {"tag": "position", "include": [{"class": other, "count": 1},
                                           {"class": shape, "count": 1, "position": [relation, 0]}],
            "exclude": []}


def color_attr(color1: str, shape1: str, color2: str, shape2: str) -> dict:
    return {"tag": "color_attr", "include": [{"class": shape1, "count": 1, "color": color1},
                                             {"class": shape2, "count": 1, "color": color2}],
            "exclude": []}


# ------------------------------------------------------------------------------------- geometry
def relations(center_a: Sequence[float], dim_a: Sequence[float], center_b: Sequence[float],
              dim_b: Sequence[float]) -> set:
    """GenEval's relative position of object a to object b: a subset of RELATIONS. Centres (x, y) and
    box sizes (w, h) in pixels; offsets shrink by POSITION_THRESHOLD x (dim_a + dim_b) first, and a
    relation holds when its axis carries more than half of the (unit) offset direction."""
    offset = np.asarray(center_a, float) - np.asarray(center_b, float)
    dims = np.asarray(dim_a, float) + np.asarray(dim_b, float)
    revised = np.maximum(np.abs(offset) - POSITION_THRESHOLD * dims, 0) * np.sign(offset)
    norm = float(np.linalg.norm(offset))
    if norm < 1e-6 or np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / norm
    out = set()
    if dx < -0.5:
        out.add("left of")
    if dx > 0.5:
        out.add("right of")
    if dy < -0.5:
        out.add("above")
    if dy > 0.5:
        out.add("below")
    return out


def _objects_of(attributes: dict, rng: np.random.Generator) -> List[dict]:
    """The objects to draw: each include item `count` times, with its colour or a random one."""
    names = list(COLORS)
    out = []
    for item in attributes["include"]:
        for _ in range(int(item.get("count", 1))):
            color = item.get("color") or names[int(rng.integers(len(names)))]
            out.append({"class": item["class"], "color": color})
    return out


def _place(n: int, side: int, rng: np.random.Generator, tries: int = 400) -> Optional[np.ndarray]:
    """(n, 3) rows (cx, cy, size) in pixels: boxes inside the image, >= 2 px (at 32 px) apart."""
    lo, hi = (0.22, 0.34) if n <= 2 else (0.19, 0.27)
    gap, margin = 2.0 * side / 32, 1.0 * side / 32
    for _ in range(tries):
        size = rng.uniform(lo, hi, n) * side
        half = size / 2 + margin
        cx, cy = rng.uniform(half, side - half), rng.uniform(half, side - half)
        sep = (size[:, None] + size[None, :]) / 2 + gap
        apart = (np.abs(cx[:, None] - cx[None, :]) >= sep) | (np.abs(cy[:, None] - cy[None, :]) >= sep)
        if (apart | np.eye(n, dtype=bool)).all():
            return np.stack([cx, cy, size], 1)
    return None


def _layout_ok(attributes: dict, objects: List[dict], boxes: np.ndarray) -> bool:
    """Position prompts: the asked relation holds, and it is the only one (no diagonal scenes)."""
    for i, item in enumerate(attributes["include"]):
        if item.get("position"):
            rel, j = item["position"]
            a, b = boxes[i], boxes[int(j)]
            if relations(a[:2], a[2:3].repeat(2), b[:2], b[2:3].repeat(2)) != {rel}:
                return False
    return True


def layout(attributes: dict, side: int, rng: np.random.Generator) -> List[dict]:
    """Objects with places: dicts {class, color, cx, cy, size}. Position prompts hold one object per
    include item, so row i of the boxes is include[i]. RuntimeError if no layout is found."""
    objects = _objects_of(attributes, rng)
    for _ in range(200):
        boxes = _place(len(objects), side, rng)
        if boxes is not None and _layout_ok(attributes, objects, boxes):
            return [dict(o, cx=float(b[0]), cy=float(b[1]), size=float(b[2])) for o, b in zip(objects, boxes)]
    raise RuntimeError(f"no layout for {caption(attributes)!r} at {side} px: use a larger image side")


# -------------------------------------------------------------------------------------- drawing
def coverage(shape: str, cx: float, cy: float, size: float, side: int, ss: int = 4) -> np.ndarray:
    """(side, side) float in [0, 1]: the fraction of each pixel inside the shape (ss x ss samples).
    square and circle: box/disc of diameter `size`; triangle: apex up, base `size` wide at the bottom."""
    t = (np.arange(side * ss) + 0.5) / ss
    x, y = t[None, :] - cx, t[:, None] - cy
    h = size / 2
    if shape == "square":
        inside = (np.abs(x) <= h) & (np.abs(y) <= h)
    elif shape == "circle":
        inside = x ** 2 + y ** 2 <= h ** 2
    elif shape == "triangle":
        inside = (y <= h) & (np.abs(x) <= (y + h) / 2)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
    return inside.reshape(side, ss, side, ss).mean(axis=(1, 3))


def render(objects: Sequence[dict], side: int = 32, jitter: Optional[np.ndarray] = None) -> torch.Tensor:
    """Draw `objects` (from `layout`) -> (3, side, side) float32 in [0, 1]. `jitter`: (n, 3) added
    to each object's RGB colour (small, e.g. +-0.04), or None."""
    img = np.full((side, side, 3), BACKGROUND, dtype=np.float64)
    for k, o in enumerate(objects):
        cov = coverage(o["class"], o["cx"], o["cy"], o["size"], side)[..., None]
        rgb = np.asarray(COLORS[o["color"]]) + (0 if jitter is None else jitter[k])
        img = img * (1 - cov) + np.clip(rgb, 0, 1) * cov
    return torch.from_numpy(img.transpose(2, 0, 1).astype(np.float32))


def make_scene(attributes: dict, seed: int, side: int = 32) -> Scene:
    """One scene for `attributes`, deterministic in (attributes, seed, side)."""
    if side < 16:
        raise ValueError(f"side={side} is too small for up to four shapes; use side >= 16 (32 recommended)")
    rng = np.random.default_rng([int(seed), side])
    objects = layout(attributes, side, rng)
    jitter = rng.uniform(-0.04, 0.04, (len(objects), 3))
    clean = {k: v for k, v in attributes.items() if k in ("tag", "include", "exclude")}
    return Scene(render(objects, side, jitter), caption(attributes), clean, objects)
