"""OCR reward: edit distance by hand, target extraction, and RapidOCR on rendered text."""
import numpy as np
import pytest
import torch

from flowrl.registry import REWARDS
from flowrl.rewards.ocr import levenshtein, normalise_text, target_text, text_similarity


@pytest.mark.parametrize("a,b,d", [
    ("", "", 0), ("abc", "", 3), ("", "abc", 3), ("kitten", "sitting", 3), ("flaw", "lawn", 2),
    ("abc", "abc", 0), ("abc", "acb", 2), ("hello", "hallo", 1), ("sunday", "saturday", 3),
])
def test_levenshtein_hand_values(a, b, d):
    assert levenshtein(a, b) == d == levenshtein(b, a)


def test_similarity_normalisation_and_clipping():
    assert text_similarity("hallo", "hello") == pytest.approx(0.8)     # 1 - 1/5
    assert text_similarity("", "hello") == 0.0
    assert text_similarity("completely different", "hi") == 0.0        # distance clipped to len
    assert text_similarity("xxhelloxx", "hello") == 1.0                # Flow-GRPO substring rule
    assert text_similarity("xxhelloxx", "hello", substring_match=False) == pytest.approx(0.2)
    assert text_similarity("", "") == 1.0 and text_similarity("a", "") == 0.0


def test_normalise_text():
    assert normalise_text("  Hello \n World ") == "helloworld"
    assert normalise_text("  Hello \n World ", keep_spaces=True) == "hello world"
    assert normalise_text("Hello", case_sensitive=True) == "Hello"


def test_target_text():
    assert target_text('a sign that says "Open Late" in neon', {}) == "Open Late"
    assert target_text("a mug printed with 'coffee'", None) == "coffee"
    assert target_text('"ignored"', {"text": "Meta"}) == "Meta"
    with pytest.raises(ValueError, match="quotes"):
        target_text("no quotes here", {})


def render(word: str, size=(320, 96), font_size=56) -> torch.Tensor:
    """Black `word` on white -> (1, 3, H, W) float in [0, 1]."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", size, "white")
    font = ImageFont.load_default(size=font_size)  # Pillow >= 10.1: scalable bundled font
    ImageDraw.Draw(img).text((12, 12), word, font=font, fill="black")
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255


@pytest.fixture(scope="module")
def ocr():
    return REWARDS.build("ocr", torch.device("cpu"))


def test_registered():
    assert REWARDS.meta("ocr") == {"domain": "image", "differentiable": False}


def test_rendered_word(ocr):
    img = torch.cat([render("Flow"), render("Flow"), torch.ones(1, 3, 96, 320)])
    prompts = ['a sign that says "flow"', 'a sign that says "zebra"', 'a sign that says "flow"']
    scores = ocr(img, prompts, [{}, {}, {}])
    assert scores.shape == (3,) and scores.dtype == torch.float32
    assert scores[0] >= 0.8
    assert scores[1] <= 0.4
    assert scores[2] == pytest.approx(0.0)


def test_metadata_target_overrides_prompt(ocr):
    scores = ocr(render("Reward"), ["no quotes"], [{"text": "reward"}])
    assert scores[0] >= 0.8


@pytest.mark.parametrize("preset, expected", [(None, "1"), ("0", "0")])
def test_import_flowrl_turns_onnxruntime_telemetry_off_before_it_loads(preset, expected):
    """ORT_DISABLE_TELEMETRY=1 (onnxruntime's full opt-out, read when it initialises) is set by
    `import flowrl` unless the user set it; it is inherited by child processes."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    if preset is not None:
        env["ORT_DISABLE_TELEMETRY"] = preset
    code = ("import os, subprocess, sys, flowrl; print(os.environ.get('ORT_DISABLE_TELEMETRY')); "
            "print(subprocess.run([sys.executable, '-c', 'import os; print(os.environ.get(\"ORT_DISABLE_TELEMETRY\"))'],"
            " capture_output=True, text=True).stdout.strip())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.stdout.split() == [expected, expected], out.stderr


def test_quiet_onnxruntime_disables_telemetry_events(monkeypatch):
    pytest.importorskip("onnxruntime")
    import onnxruntime

    from flowrl.rewards.ocr import quiet_onnxruntime
    calls = []
    monkeypatch.setattr(onnxruntime, "disable_telemetry_events", lambda: calls.append(1))
    assert quiet_onnxruntime() is onnxruntime and calls == [1]
