"""Scenes: deterministic captioned images whose ground truth holds, and the shipped prompt sets."""
import json

import pytest
import torch

from flowrl.data.prompts import load_prompts
from flowrl.scenes import generator as g
from flowrl.scenes.promptsets import HELD_OUT_COLOR_SHAPE, PROMPT_DIR, all_attributes, split


def test_scene_is_deterministic_and_in_range():
    attrs = g.color_attr("red", "square", "blue", "circle")
    a, b, c = g.make_scene(attrs, 7), g.make_scene(attrs, 7), g.make_scene(attrs, 8)
    assert a.image.shape == (3, 32, 32) and a.image.dtype == torch.float32
    assert 0 <= a.image.min() and a.image.max() <= 1
    assert torch.equal(a.image, b.image) and a.objects == b.objects
    assert not torch.equal(a.image, c.image)
    assert a.caption == "a red square and a blue circle"
    json.dumps(a.attributes), json.dumps(a.objects)       # JSON-able ground truth


@pytest.mark.parametrize("attrs,caption", [
    (g.single_object("circle"), "a circle"), (g.colors("green", "triangle"), "a green triangle"),
    (g.counting(3, "square"), "three squares"), (g.counting(1, "circle"), "one circle"),
    (g.two_object("square", "triangle"), "a square and a triangle"),
    (g.position("circle", "left of", "square"), "a circle left of a square"),
    (g.color_attr("yellow", "triangle", "red", "circle"), "a yellow triangle and a red circle")])
def test_captions_follow_geneval_templates(attrs, caption):
    assert g.caption(attrs) == caption


def test_ground_truth_objects_match_the_attributes():
    for i, (attrs, _) in enumerate(all_attributes()):
        scene = g.make_scene(attrs, i)
        want = sum(int(it["count"]) for it in attrs["include"])
        assert len(scene.objects) == want
        for item in attrs["include"]:
            same = [o for o in scene.objects if o["class"] == item["class"]]
            assert len(same) >= item["count"]
            if item.get("color"):
                assert any(o["color"] == item["color"] for o in same)
        if attrs["tag"] == "position":
            rel, j = attrs["include"][1]["position"]
            a, b = scene.objects[1], scene.objects[j]
            assert g.relations((a["cx"], a["cy"]), (a["size"],) * 2, (b["cx"], b["cy"]), (b["size"],) * 2) == {rel}


def test_objects_do_not_touch_and_stay_inside():
    for seed in range(50):
        objs = g.make_scene(g.counting(4, "square"), seed).objects
        for o in objs:
            assert o["size"] / 2 <= o["cx"] <= 32 - o["size"] / 2 and o["size"] / 2 <= o["cy"] <= 32 - o["size"] / 2
        for i, a in enumerate(objs):
            for b in objs[i + 1:]:
                gap = (a["size"] + b["size"]) / 2 + 2
                assert abs(a["cx"] - b["cx"]) >= gap - 1e-9 or abs(a["cy"] - b["cy"]) >= gap - 1e-9


def test_relations_geneval_rule():
    assert g.relations((5, 10), (4, 4), (20, 10), (4, 4)) == {"left of"}
    assert g.relations((10, 25), (4, 4), (10, 5), (4, 4)) == {"below"}
    assert g.relations((10, 10), (4, 4), (10.5, 10), (4, 4)) == set()


def test_other_sizes_and_bad_size():
    assert g.make_scene(g.counting(4, "triangle"), 0, side=64).image.shape == (3, 64, 64)
    with pytest.raises(ValueError, match="side >= 16"):
        g.make_scene(g.single_object("square"), 0, side=8)


def test_shipped_prompt_sets_are_current_and_load_with_metadata():
    for name, rows in split().items():
        text = (PROMPT_DIR / f"{name}.jsonl").read_text()
        assert text == "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows), \
            "run `python -m flowrl.scenes.promptsets` to re-write the shipped prompt sets"
        ps = load_prompts(f"scenes/{name}")
        assert ps.prompts == [r["prompt"] for r in rows]
        assert all(m["include"] and m["tag"] in g.TAGS for m in ps.metadata)


def test_test_set_holds_out_combinations_but_no_words():
    sets = split()
    train, test = {r["prompt"] for r in sets["train"]}, sets["test"]
    assert {r["tag"] for r in test} == set(g.TAGS)
    held = [r for r in test if r["held_out"]]
    assert held and all(r["prompt"] not in train for r in held)
    assert all(r["prompt"] in train for r in test if not r["held_out"])
    train_words = {w for p in train for w in p.split()}
    assert {w for r in test for w in r["prompt"].split()} <= train_words
    for color, shape in HELD_OUT_COLOR_SHAPE:       # never seen together in training
        assert not any(f"{color} {shape}" in p for p in train)
