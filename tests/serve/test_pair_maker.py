"""`flowrl annotate pairs`: from a run dir (its base model here) and from a folder of captioned images."""
import json

from PIL import Image
from typer.testing import CliRunner

from flowrl.cli import app
from flowrl.config import load_config
from flowrl.rundir import write_run_config
from flowrl.serve.label_store import read_jsonl


def test_pairs_from_a_run_dir_sample_k_per_prompt(tmp_path):
    write_run_config(tmp_path / "run", load_config("dpo.py:moons", ["model.base_iters=300", "sample.eval_num_steps=5"]))
    out = CliRunner().invoke(app, ["annotate", "pairs", str(tmp_path / "run"), "--base", "--per-prompt", "4"])
    assert out.exit_code == 0, out.output
    rows = read_jsonl(tmp_path / "run" / "pairs" / "pairs.jsonl")
    assert len(rows) == 2 and all((tmp_path / "run" / "pairs" / r[k]).is_file() for r in rows
                                  for k in ("image_a", "image_b", "sample_a", "sample_b"))
    bad = CliRunner().invoke(app, ["annotate", "pairs", str(tmp_path / "run"), "--per-prompt", "3", "--out",
                                   str(tmp_path / "x")])
    assert bad.exit_code == 2 and "even number" in bad.output


def test_pairs_from_a_folder_of_captioned_images(tmp_path):
    for i, caption in enumerate(["a red square", "a red square", "a red square", "a blue circle"]):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(caption)
    out = CliRunner().invoke(app, ["annotate", "pairs", str(tmp_path)])
    assert out.exit_code == 0, out.output
    rows = [json.loads(x) for x in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert [(r["image_a"], r["image_b"]) for r in rows] == [("0.png", "1.png"), ("0.png", "2.png"), ("1.png", "2.png")]
    again = CliRunner().invoke(app, ["annotate", "pairs", str(tmp_path)])
    assert again.exit_code == 2 and "exists already" in again.output
