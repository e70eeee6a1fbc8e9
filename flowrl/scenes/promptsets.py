"""The scenes' train / held-out test prompt sets, and the JSONL files flowrl loads as "scenes/train" and
"scenes/test" (flowrl/data/prompts/scenes/). Each row is {"prompt": caption, **attributes, "held_out"}.

Every prompt of the six categories is enumerated; a fixed list of COMBINATIONS goes to the test set
only, so the test set measures generalisation: colour-shape pairs never seen together in training
(HELD_OUT_COLOR_SHAPE, also inside colour attribution prompts), counts of a shape never seen with that
number, position triples and an object pair never seen. Every word still occurs in training. The three
single-object prompts are in both sets (held_out false), so the test set has all six categories.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Dict, List, Tuple

from flowrl.scenes import generator as g

HELD_OUT_COLOR_SHAPE = (("blue", "triangle"), ("yellow", "circle"), ("green", "square"))
HELD_OUT_COUNTS = ((2, "triangle"), (3, "circle"), (4, "square"))
HELD_OUT_POSITIONS = (("circle", "left of", "triangle"), ("square", "right of", "circle"),
                      ("triangle", "above", "square"), ("circle", "below", "square"))
HELD_OUT_PAIRS = (("triangle", "circle"),)
PROMPT_DIR = Path(__file__).resolve().parent.parent / "data" / "prompts" / "scenes"


def all_attributes() -> List[Tuple[dict, bool]]:
    """Every scene prompt as (attributes, held_out), in a fixed order (~120 prompts)."""
    held = set(HELD_OUT_COLOR_SHAPE)
    out = [(g.single_object(s), False) for s in g.SHAPES]
    out += [(g.colors(c, s), (c, s) in held) for c in g.COLORS for s in g.SHAPES]
    out += [(g.counting(n, s), (n, s) in HELD_OUT_COUNTS) for n in g.NUMBERS for s in g.SHAPES]
    out += [(g.two_object(a, b), (a, b) in HELD_OUT_PAIRS) for a, b in itertools.permutations(g.SHAPES, 2)]
    out += [(g.position(a, r, b), (a, r, b) in HELD_OUT_POSITIONS)
            for a, b in itertools.permutations(g.SHAPES, 2) for r in g.RELATIONS]
    for (s1, s2), c1, c2 in itertools.product(itertools.permutations(g.SHAPES, 2), g.COLORS, g.COLORS):
        if c1 != c2:
            out.append((g.color_attr(c1, s1, c2, s2), (c1, s1) in held or (c2, s2) in held))
    return out


def split() -> Dict[str, List[dict]]:
    """{"train": [...], "test": [...]} of JSONL rows {"prompt", "tag", "include", "exclude", "held_out"}."""
    sets: Dict[str, List[dict]] = {"train": [], "test": []}
    for attrs, held_out in all_attributes():
        row = {"prompt": g.caption(attrs), **attrs, "held_out": held_out}
        if held_out:
            sets["test"].append(row)
        else:
            sets["train"].append(row)
            if attrs["tag"] == "single_object":
                sets["test"].append(row)
    return sets


def write_prompt_sets(directory: Path = PROMPT_DIR) -> Dict[str, Path]:
    """Write directory/{train,test}.jsonl (one row a line, sorted keys) and return their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in split().items():
        paths[name] = directory / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    return paths


if __name__ == "__main__":   # python -m flowrl.scenes.promptsets  (re-writes the shipped files)
    for p in write_prompt_sets().values():
        print(p)
