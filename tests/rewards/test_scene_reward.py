"""scene_geneval reads the generator's ground truth back from the pixels and rejects mismatches."""
import random

import numpy as np
import pytest
import torch

from flowrl.data.prompts import load_prompts
from flowrl.registry import REWARDS
from flowrl.rewards import build_reward
from flowrl.rewards.scene import detect_objects, parse_caption, scene_accuracy, scene_measures, scene_scores
from flowrl.scenes import generator as g
from flowrl.scenes.promptsets import split


@pytest.fixture(scope="module")
def truth():
    rows = (split()["train"] + split()["test"]) * 3
    scenes = [g.make_scene(r, 100 + i) for i, r in enumerate(rows)]
    return torch.stack([s.image for s in scenes]), [s.caption for s in scenes], rows


def test_registered_as_an_image_reward():
    assert "scene_geneval" in REWARDS.names()
    assert REWARDS.meta("scene_geneval")["domain"] == "image"


def test_ground_truth_scores_one(truth):
    images, prompts, rows = truth
    reward, strict = scene_scores(images, prompts, rows)
    assert reward.shape == strict.shape == (len(prompts),)
    assert reward.mean() > 0.99 and strict.mean() > 0.98
    assert torch.equal(scene_scores(images, prompts, None)[0], reward)   # parsed from the text: same


def test_mismatched_pairs_score_low(truth):
    images, prompts, rows = truth
    perm = list(range(len(prompts)))
    random.Random(0).shuffle(perm)
    reward, strict = scene_scores(images, [prompts[j] for j in perm], [rows[j] for j in perm])
    assert reward.mean() < 0.5 and strict.mean() < 0.2


def test_each_attribute_is_checked():
    fn = REWARDS.build("scene_geneval", torch.device("cpu"))
    cases = [  # (drawn, asked, expected fraction)
        (g.colors("red", "square"), "a blue square", 0.5),
        (g.colors("red", "square"), "a red circle", 0.0),
        (g.position("circle", "left of", "square"), "a circle right of a square", 2 / 3),
        (g.counting(2, "triangle"), "three triangles", 0.5),
        (g.color_attr("red", "square", "blue", "circle"), "a blue square and a red circle", 0.5),
        (g.two_object("square", "circle"), "a square and a triangle", 0.5)]
    for k, (drawn, asked, want) in enumerate(cases):
        img = g.make_scene(drawn, k).image[None]
        assert float(fn(img, [asked], [{}])[0]) == pytest.approx(want), asked
        assert float(fn(img, [g.caption(drawn)], [{}])[0]) == 1.0


def test_blank_image_scores_zero_and_accuracy_is_binary():
    blank = torch.full((2, 3, 32, 32), g.BACKGROUND)
    assert scene_scores(blank, ["a red square", "two circles"])[0].tolist() == [0.0, 0.0]
    acc = scene_accuracy(torch.stack([g.make_scene(g.single_object("circle"), 0).image] * 2),
                         ["a circle", "a square"], [{}, {}])
    assert acc.tolist() == [1.0, 0.0]


def test_detection_survives_blur_and_ignores_bars():
    from scipy import ndimage

    scene = g.make_scene(g.color_attr("green", "triangle", "yellow", "square"), 3)
    soft = ndimage.gaussian_filter(scene.image.permute(1, 2, 0).double().numpy(), (0.8, 0.8, 0))
    found = sorted((o["class"], o["color"]) for o in detect_objects(soft))
    assert found == [("square", "yellow"), ("triangle", "green")]
    bar = np.full((32, 32, 3), g.BACKGROUND)
    bar[14:18, 4:28] = g.COLORS["red"]
    assert detect_objects(bar) == []


def test_parse_caption_and_its_error():
    assert parse_caption("a photo of a red square and a blue circle.") == g.color_attr("red", "square", "blue", "circle")
    assert parse_caption("four circles") == g.counting(4, "circle")
    with pytest.raises(ValueError, match="metadata"):
        parse_caption("a cat on a mat")


def test_through_build_reward_with_shipped_metadata():
    ps = load_prompts("scenes/test")
    rows = [{"prompt": p, **m} for p, m in zip(ps.prompts, ps.metadata)][:6]
    images = torch.stack([g.make_scene(r, i).image for i, r in enumerate(rows)])
    total, parts = build_reward({"scene_geneval": 1.0}, {}, torch.device("cpu"))(
        images, [r["prompt"] for r in rows], ps.metadata[:6])
    assert total.shape == (6,) and torch.equal(total, parts["scene_geneval"]) and total.min() == 1.0
    wrong = images.flip(0)   # other prompts' scenes: strict accuracy 0 where the attributes differ
    total, parts = build_reward({"scene_geneval": 1.0}, {}, "cpu", metrics=("scene_accuracy",))(
        wrong, [r["prompt"] for r in rows], ps.metadata[:6])
    assert parts["scene_accuracy"].sum() < 6
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        scene_scores(torch.zeros(2, 32, 32), ["a square"] * 2)


def test_partial_credit_and_strict_accuracy_by_hand():
    # a red circle asked as "a yellow circle": object + count hold, colour fails -> 1/2, strict 0;
    # two squares asked as "three squares": the class holds, the count fails -> 1/2, strict 0
    red = {"include": [{"class": "circle", "color": "red", "count": 1}], "exclude": [], "tag": "colors"}
    two = {"include": [{"class": "square", "count": 2}], "exclude": [], "tag": "counting"}
    images = torch.stack([g.make_scene({"prompt": "a red circle", **red}, 0).image,
                          g.make_scene({"prompt": "a red circle", **red}, 1).image,
                          g.make_scene({"prompt": "two squares", **two}, 2).image,
                          g.make_scene({"prompt": "two squares", **two}, 3).image])
    yellow = {**red, "include": [{"class": "circle", "color": "yellow", "count": 1}]}
    three = {**two, "include": [{"class": "square", "count": 3}]}
    _, parts = build_reward({"scene_geneval": 1.0}, {}, "cpu", metrics=("scene_accuracy",))(
        images, ["a red circle", "a yellow circle", "two squares", "three squares"], [red, yellow, two, three])
    assert parts["scene_geneval"].tolist() == [1.0, 0.5, 1.0, 0.5]
    assert parts["scene_accuracy"].tolist() == [1.0, 0.0, 1.0, 0.0]



def test_clutter_passes_geneval_but_counts_as_extra_objects():
    """Three triangles drawn for "a triangle": scene_geneval (like GenEval's single_object) gives full
    marks; the extra-objects metric counts 3 - 1 = 2. The ground truth counts 0 extra."""
    img = g.make_scene(g.counting(3, "triangle"), 5).image[None]
    meta = [g.single_object("triangle")]
    assert scene_scores(img, ["a triangle"], meta)[0].tolist() == [1.0]
    assert scene_measures(img, ["a triangle"], meta)[2].tolist() == [2.0]
    assert REWARDS.build("scene_extra_objects", torch.device("cpu"))(img, ["three triangles"], [{}]).tolist() == [0.0]


def test_ground_truth_has_no_extra_objects(truth):
    images, prompts, rows = truth
    assert scene_measures(images, prompts, rows)[2].mean() < 0.02


def test_no_extra_divides_by_one_plus_the_extra_objects():
    """"a triangle" over three drawn triangles: 1 check of 1 / (1 + 2 extra) = 1/3; over one: 1.
    "a triangle and a square" over three triangles: 1/2 / (1 + 1) = 0.25. A blank picture: 0."""
    three = g.make_scene(g.counting(3, "triangle"), 5).image
    one = g.make_scene(g.single_object("triangle"), 5).image
    fn = REWARDS.build("scene_geneval", torch.device("cpu"), no_extra=True)
    meta = [g.single_object("triangle")] * 2
    assert fn(torch.stack([three, one]), ["a triangle"] * 2, meta).tolist() == pytest.approx([1 / 3, 1.0])
    named = REWARDS.build("scene_geneval_no_extra", torch.device("cpu"))
    assert named(torch.stack([three, one]), ["a triangle"] * 2, meta).tolist() == pytest.approx([1 / 3, 1.0])
    assert fn(torch.full((1, 3, 32, 32), g.BACKGROUND), ["a triangle"], meta[:1]).tolist() == [0.0]
    two = g.two_object("triangle", "square")
    assert fn(three[None], ["a triangle and a square"], [two]).tolist() == [0.25]
    assert REWARDS.build("scene_geneval", torch.device("cpu"))(three[None], ["a triangle and a square"],
                                                                 [two]).tolist() == [0.5]
    assert scene_scores(torch.stack([three, one]), ["a triangle"] * 2, meta, no_extra=True)[1].tolist() == [0, 1]
