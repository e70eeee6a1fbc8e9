"""A tiny shape classifier for the scene reward: logistic regression on one object's crop.

Features of a component (a connected blob of one colour): its soft mask (pixel saturation / the
blob's 90th-percentile saturation, in [0, 1]) over the box grown by 1 px, resized to 12 x 12, plus
log(width / height) and its absolute value, the fill ratio of the hard mask in its box and the
centroid row / box height. Classes: square, circle, triangle and "other" (bars and ellipses of aspect
~2-6, two shapes merged into one blob), so junk is not counted as an object.

Training set: generator layouts (all six categories) drawn with each shape's coverage blurred
(sigma ~ U(0, 1.5) px) and half of the time re-sharpened, plus pixel noise (0.02), so that the soft
edges and rounded corners of a VAE decoder or a half-trained model still read as the shape a person
would name; plus junk images (1 in 5). ~5 k blobs, multinomial logistic regression fitted by
full-batch L-BFGS (deterministic), ~5-10 s; the weights are cached by flowrl.cache under a name that
hashes this file and the generator (changed code retrains).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch

from flowrl.scenes import generator as g

CLASSES = ("square", "circle", "triangle", "other")
CROP = 12


def component_features(sat: np.ndarray, mask: np.ndarray, box: Tuple[slice, slice]) -> np.ndarray:
    """sat (H, W) saturation of the image; mask (h, w) bool: the blob inside its box `box` (slices)
    -> (CROP * CROP + 4,) float features (see module doc)."""
    (ys, xs), (big_h, big_w) = box, sat.shape
    y0, y1, x0, x1 = max(ys.start - 1, 0), min(ys.stop + 1, big_h), max(xs.start - 1, 0), min(xs.stop + 1, big_w)
    ref = max(float(np.percentile(sat[box][mask], 90)), 1e-3)
    soft = torch.from_numpy(np.clip(sat[y0:y1, x0:x1] / ref, 0, 1)).float()[None, None]
    crop = torch.nn.functional.interpolate(soft, (CROP, CROP), mode="bilinear", align_corners=False)
    h, w = mask.shape
    aspect = np.log(w / h)
    stats = [aspect, abs(aspect), mask.mean(), (np.nonzero(mask)[0].mean() + 0.5) / h]
    return np.concatenate([crop.flatten().numpy(), stats])


def _blob_coverage(kind: str, cx: float, cy: float, w: float, h: float, side: int, ss: int = 4) -> np.ndarray:
    """(side, side) coverage of an axis-aligned bar ("bar") or ellipse ("ellipse") of size w x h."""
    t = (np.arange(side * ss) + 0.5) / ss
    x, y = (t[None, :] - cx) / (w / 2), (t[:, None] - cy) / (h / 2)
    inside = (np.abs(x) <= 1) & (np.abs(y) <= 1) if kind == "bar" else x ** 2 + y ** 2 <= 1
    return inside.reshape(side, ss, side, ss).mean(axis=(1, 3))


def _soften(cov: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A coverage map as a decoder draws it: blurred (sigma ~ U(0, 1.5) px) and, half of the time,
    re-sharpened around 0.5 (gain ~ U(1, 3)): soft or rounded corners, edges crisp or not."""
    from scipy import ndimage

    cov = ndimage.gaussian_filter(cov, rng.uniform(0, 1.5))
    if rng.random() < 0.5:
        cov = np.clip((cov - 0.5) * rng.uniform(1, 3) + 0.5, 0, 1)
    return cov


def _junk_coverage(rng: np.random.Generator, side: int) -> np.ndarray:
    """A junk blob's coverage: an elongated bar / ellipse (aspect ~2-6) or two shapes merged into one
    blob (centres 0.55-0.8 sizes apart)."""
    size = rng.uniform(0.2, 0.32) * side
    cx, cy = rng.uniform(0.35, 0.65, 2) * side
    kind = ("bar", "ellipse", "merged")[int(rng.integers(3))]
    if kind == "merged":
        a, b = rng.choice(g.SHAPES, 2)
        phi = rng.uniform(0, 2 * np.pi)
        dx, dy = rng.uniform(0.55, 0.8) * size * np.array([np.cos(phi), np.sin(phi)])
        return np.maximum(g.coverage(a, cx, cy, size, side), g.coverage(b, cx + dx, cy + dy, size, side))
    long_, short = size * rng.uniform(2.0, 4.5), size * rng.uniform(0.5, 0.9)
    w, h = (long_, short) if rng.random() < 0.5 else (short, long_)
    return _blob_coverage(kind, cx, cy, min(w, side - 2), min(h, side - 2), side)


def degraded_image(objects: List[dict], junk: bool, rng: np.random.Generator, side: int = 32) -> np.ndarray:
    """(side, side, 3) in [0, 1]: `objects` (generator.layout dicts) or, if `junk`, one junk blob,
    each coverage softened (_soften), composited on the background, plus pixel noise (0.02)."""
    img = np.full((side, side, 3), g.BACKGROUND)
    names = list(g.COLORS)
    layers = ([(_junk_coverage(rng, side), names[int(rng.integers(len(names)))])] if junk else
              [(g.coverage(o["class"], o["cx"], o["cy"], o["size"], side), o["color"]) for o in objects])
    for cov, color in layers:
        cov = _soften(cov, rng)[..., None]
        img = img * (1 - cov) + np.asarray(g.COLORS[color]) * cov
    return np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1)


def training_set(num_scenes: int = 3000, side: int = 32, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """-> features (N, F), labels (N,) int into CLASSES: blobs of degraded generator scenes (labelled by
    the nearest drawn object, 'other' if none is within 10 % of the side) and of junk images (1 in 5)."""
    from flowrl.rewards.scene import blobs
    from flowrl.scenes.promptsets import all_attributes

    specs, rng = [a for a, _ in all_attributes()], np.random.default_rng(seed)
    feats, labels = [], []
    for i in range(num_scenes):
        junk = i % 5 == 4
        objects = [] if junk else g.layout(specs[i % len(specs)], side, rng)
        for f, cx, cy, _ in blobs(degraded_image(objects, junk, rng, side)):
            dist = [abs(o["cx"] - cx) + abs(o["cy"] - cy) for o in objects]
            near = bool(dist) and min(dist) < 0.1 * side
            feats.append(f)
            labels.append(CLASSES.index(objects[int(np.argmin(dist))]["class"]) if near else 3)
    return np.asarray(feats), np.asarray(labels)


def fit(l2: float = 3e-2, steps: int = 200) -> Dict[str, torch.Tensor]:
    """Train the classifier (multinomial logistic regression, full-batch L-BFGS in float64, weight
    decay `l2`, deterministic) -> {"coef": (4, F), "intercept": (4,)} float32 (CLASSES order)."""
    x, y = training_set()
    x, y = torch.from_numpy(x).double(), torch.from_numpy(y).long()
    w = torch.zeros(len(CLASSES), x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(len(CLASSES), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w.T + b, y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss
    opt.step(closure)
    return {"coef": w.detach().float(), "intercept": b.detach().float()}


def cache_name() -> str:
    files = [Path(__file__), Path(g.__file__)]
    return "scene_shape_classifier_" + hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:12]


_WEIGHTS: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}


def weights() -> Tuple[np.ndarray, np.ndarray]:
    """(coef (4, F), intercept (4,)) float64, trained once and cached (memory and flowrl cache)."""
    from flowrl.cache import cached_state_dict

    name = cache_name()
    if name not in _WEIGHTS:
        state = cached_state_dict(name, fit)
        _WEIGHTS[name] = (state["coef"].double().numpy(), state["intercept"].double().numpy())
    return _WEIGHTS[name]


def classify(features: List[np.ndarray]) -> List[str]:
    """Blob features (component_features) -> class names (CLASSES)."""
    if not features:
        return []
    coef, intercept = weights()
    return [CLASSES[i] for i in (np.asarray(features) @ coef.T + intercept).argmax(1)]
