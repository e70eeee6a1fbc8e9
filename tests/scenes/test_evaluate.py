"""Scoring saved evaluations of the scenes world, before/after grids, and grpo.py:tiny_geneval through
the trainer on a smoke build (eval PNGs + prompts.jsonl with the strict accuracy)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from flowrl.data.prompts import load_prompts
from flowrl.scenes import generator as g
from flowrl.rewards.scene import scene_measures
from flowrl.scenes.evaluate import before_after, headroom, main, score_saved


def _eval_dir(path, rows, images):
    path.mkdir(parents=True)
    lines = []
    for i, (r, img) in enumerate(zip(rows, images)):
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path / f"{i:05d}.png")
        lines.append(json.dumps({"index": i, "image": f"{i:05d}.png", "prompt": r["prompt"], "reward": 0.5}))
    (path / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    return path


def _test_rows(n):
    ps = load_prompts("scenes/test")
    return [{"prompt": p, **m} for p, m in zip(ps.prompts, ps.metadata)][:n]


def test_score_saved_reads_ground_truth_as_correct_and_splits_held_out(tmp_path):
    rows = _test_rows(8)
    truth = _eval_dir(tmp_path / "truth", rows, [g.make_scene(r, i).image for i, r in enumerate(rows)])
    s = score_saved(truth)
    assert s["accuracy"] == 1.0 and s["reward"] == 1.0 and s["n"] == 8 and s["extra_objects"] == 0.0
    assert s["held_out"]["n"] + s.get("seen", {"n": 0})["n"] == 8
    blank = _eval_dir(tmp_path / "blank", rows, [torch.full((3, 32, 32), 0.9)] * 8)
    assert score_saved(blank)["accuracy"] == 0.0


def test_before_after_grid_pairs_the_same_prompts(tmp_path):
    rows = [r for r in _test_rows(3) for _ in range(2)]        # 3 prompts x 2 samples
    a = _eval_dir(tmp_path / "a", rows, [torch.full((3, 32, 32), 0.9)] * 6)
    b = _eval_dir(tmp_path / "b", rows, [g.make_scene(r, i).image for i, r in enumerate(rows)])
    out = before_after(a, b, tmp_path / "ba.png", per_prompt=2)
    w, h = Image.open(out).size
    assert w == 4 * (32 * 4 + 4) and h == 3 * (32 * 4 + 40)   # a row per prompt: 2 before, 2 after
    c = _eval_dir(tmp_path / "c", list(reversed(rows)), [torch.zeros(3, 32, 32)] * 6)
    with pytest.raises(ValueError, match="different prompts"):
        before_after(a, c, tmp_path / "x.png", per_prompt=2)


def test_headroom_picks_each_prompts_best_sample():
    rows = [r for r in _test_rows(3) for _ in range(2)]        # 3 prompts x 2 samples: blank, then the truth
    images = torch.stack([torch.full((3, 32, 32), 0.9) if i % 2 == 0 else g.make_scene(r, i).image
                          for i, r in enumerate(rows)])
    measures = scene_measures(images, [r["prompt"] for r in rows], rows)     # reward, strict, extra (6,)
    h = {(x["pick"], x["n"]): x for x in headroom(*measures, per_prompt=2)}
    assert h[("scene_geneval", 1)]["strict"] == pytest.approx(0.5)          # the mean of blank and truth
    for pick in ("scene_geneval", "no_extra"):
        assert (h[(pick, 2)]["reward"], h[(pick, 2)]["strict"], h[(pick, 2)]["extra"]) == (1.0, 1.0, 0.0)
        assert h[(pick, 2)]["reward_se"] == 0.0                            # every prompt's pick is right


def test_best_of_with_a_saved_evaluation_is_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--eval-dir", str(tmp_path), "--best-of"])
    assert e.value.code == 2 and "drop --eval-dir" in capsys.readouterr().err


def test_tiny_geneval_config_trains_and_saves_scored_evaluations(tmp_path):
    from flowrl.config import load_config
    from flowrl.scenes.t2i_parts import T2IConfig
    from flowrl.scenes.train_t2i import ensure_tiny_t2i
    from flowrl.trainer import Trainer

    model = ensure_tiny_t2i(tmp_path / "tiny-t2i", T2IConfig.smoke(), progress=False)
    cfg = load_config("grpo.py:tiny_geneval", [
        f"model.path={model}", "num_epochs=1", "cpu_threads=1", "sample.num_steps=4", "sample.eval_num_steps=2",
        "sample.batch_size=8", "sample.num_batches_per_epoch=1", "sample.group_size=4", "train.batch_size=8",
        "eval.num_samples=4", "eval.batch_size=4", "logging.progress=False"])
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.train()
    rows = [json.loads(l) for l in (tmp_path / "run" / "eval" / "final" / "prompts.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all((tmp_path / "run" / "eval" / "final" / r["image"]).exists() for r in rows)
    assert all(set(r) >= {"prompt", "reward", "scene_geneval", "scene_accuracy"} for r in rows)
    # the logged scores are those of the saved PNGs, re-scored from disk by the evaluation tool
    again = score_saved(tmp_path / "run" / "eval" / "final")
    assert again["reward"] == pytest.approx(sum(r["scene_geneval"] for r in rows) / 4, abs=1e-6)
    assert again["accuracy"] == pytest.approx(sum(r["scene_accuracy"] for r in rows) / 4, abs=1e-6)
    metrics = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "eval_scene_accuracy" in metrics[0] and "reward.scene_accuracy_mean" in metrics[-1]
    assert metrics[-1]["eval_scene_extra_objects"] >= 0 and again["extra_objects"] >= 0   # (8-bit PNGs of a
    # smoke model's noise can split a blob differently: the count is checked by hand in tests/rewards)
