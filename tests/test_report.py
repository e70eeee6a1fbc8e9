"""Pictures and report.html of synthetic run dirs (a healthy and a collapsed one), checked in a real
headless browser (Debian's chromium) when it is installed."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from flowrl.report import (diversity_from_evals, load_run_view, median_bandwidth_np, render_html,
                           summary_numbers, tag_step, vendi_rke_np, write_report)

PNG = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parent.parent


def _moons(n, rng, lower=True):
    t = rng.uniform(0, np.pi, n)
    upper = np.stack([np.cos(t), np.sin(t)], 1)
    if not lower:
        return upper + 0.05 * rng.standard_normal((n, 2))
    low = np.stack([1 - np.cos(t), 0.5 - np.sin(t)], 1)
    pick = rng.random(n) < 0.5
    return np.where(pick[:, None], upper, low) + 0.05 * rng.standard_normal((n, 2))


def _reward(x):
    """1 near the upper moon's circle |x| = 1 (and y > -0.1), else 0."""
    return ((np.abs(np.linalg.norm(x, axis=1) - 1) < 0.2) & (x[:, 1] > -0.1)).astype(np.float32)


def make_points_run(root: Path, collapsed: bool, n: int = 200) -> Path:
    """config.yaml, metrics.jsonl, summary.json and eval/{base,step_5,final}.npz: the final samples
    are the upper moon (healthy) or one tight blob on it (collapsed)."""
    rng = np.random.default_rng(0)
    run = root / ("collapsed" if collapsed else "healthy")
    (run / "eval").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"num_epochs": 10, "train": {"lr": 1e-3},
                                                     "algorithm": {"beta": 0.0 if collapsed else 0.2}}))
    rows = [{"epoch": 0, "eval_reward": 0.5}]
    rows += [{"epoch": e, "reward_mean": 0.5 + 0.04 * e} for e in range(1, 11)]
    rows[5]["eval_reward"], rows[10]["eval_reward"] = 0.8, 0.99
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "summary.json").write_text(json.dumps({"wall_seconds": 12.5}))
    blob = np.array([0.0, 1.0]) + 0.02 * rng.standard_normal((n, 2))
    final = blob if collapsed else _moons(n, rng, False)
    for tag, x in (("base", _moons(n, rng)), ("step_5", _moons(n, rng, False)), ("final", final)):
        np.savez(run / "eval" / f"{tag}.npz", x=x.astype(np.float32), reward=_reward(x))
    return run


def make_image_run(root: Path, n: int = 6) -> Path:
    from PIL import Image
    run = root / "images"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"num_epochs": 4}))
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "eval_reward": 0.1}) + "\n")
    rng = np.random.default_rng(1)
    for tag, spread in (("base", 1.0), ("final", 0.05)):
        d = run / "eval" / tag
        d.mkdir(parents=True)
        rows = []
        for i in range(n):
            img = np.clip(0.5 + spread * (rng.random((32, 32, 3)) - 0.5), 0, 1)
            Image.fromarray((img * 255).astype(np.uint8)).save(d / f"{i:05d}.png")
            rows.append({"index": i, "image": f"{i:05d}.png", "prompt": f"a photo of cat number {i}",
                         "reward": float(spread)})
        (d / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return make_points_run(root, False), make_points_run(root, True)


def test_tags_and_view(runs):
    healthy, _ = runs
    assert [tag_step(t, 10) for t in ("base", "step_5", "final", "other")] == [0, 5, 10, None]
    view = load_run_view(healthy)
    assert [(e.tag, e.step, e.kind) for e in view.evals] == [("base", 0, "points"), ("step_5", 5, "points"),
                                                           ("final", 10, "points")]
    assert view.diversity_source.startswith("computed from eval/")
    assert len({r["bandwidth"] for r in view.diversity}) == 1  # one scale: the base model's


def test_numpy_scores_match_the_torch_module():
    import torch

    from flowrl.metrics.diversity import median_bandwidth, rke_from_features, vendi_from_features
    x = np.random.default_rng(3).standard_normal((60, 3))
    bw = median_bandwidth_np(x)
    assert bw == pytest.approx(median_bandwidth(torch.from_numpy(x)), rel=1e-9)
    vendi, rke = vendi_rke_np(x, bw)
    xt = torch.from_numpy(x)
    assert vendi == pytest.approx(float(vendi_from_features(xt, "gaussian", bandwidth=bw)), rel=1e-8)
    assert rke == pytest.approx(float(rke_from_features(xt, bandwidth=bw)), rel=1e-8)


def test_computed_diversity_equals_the_trainers_cheap_diversity(runs):
    import torch

    from flowrl.metrics.monitor import DiversityAlarm, cheap_diversity
    view, alarm = load_run_view(runs[0]), DiversityAlarm(0.5)
    for ev, row in zip(view.evals, view.diversity):
        d = cheap_diversity(torch.from_numpy(ev.x), bandwidth=alarm.bandwidth)
        alarm.check(ev.step, d, 0.0)
        assert row["vendi"] == pytest.approx(d["vendi"], rel=1e-5) and row["bandwidth"] == pytest.approx(
            alarm.bandwidth, rel=1e-5)


def test_collapsed_run_loses_more_diversity(runs):
    healthy, collapsed = (summary_numbers(load_run_view(r)) for r in runs)
    assert healthy["reward_final"] == pytest.approx(collapsed["reward_final"], abs=0.05)
    assert collapsed["vendi_final"] < 0.5 * healthy["vendi_final"]
    assert collapsed["vendi_change"] < -0.7 < healthy["vendi_change"] < 0


def test_diversity_json_takes_precedence(runs, tmp_path):
    run = Path(shutil.copytree(runs[0], tmp_path / "copy"))
    rows = [{"tag": "step_10", "step": 10, "vendi": 2.0, "rke": 1.5, "reward_mean": 0.9, "entropy": -1.0},
            {"tag": "base", "step": 0, "vendi": 4.0, "rke": 3.0, "reward_mean": 0.5, "entropy": 0.7}]
    (run / "diversity.json").write_text(json.dumps({"rows": rows}))
    view = load_run_view(run)
    assert [r["tag"] for r in view.diversity] == ["base", "step_10"]
    assert "diversity.json" in view.diversity_source
    s = summary_numbers(view)
    assert s["vendi_change"] == pytest.approx(-0.5) and s["entropy_final"] == -1.0


def test_plots_and_report_without_torch(runs, tmp_path):
    """`visualize checkpoints` in a fresh interpreter: PNGs + report.html, and torch never imported."""
    code = ("import sys; from flowrl.plotting import plot_run; from flowrl.report import write_report;"
            f"p = plot_run({str(runs[1])!r}, {str(tmp_path)!r}, [{str(runs[0])!r}]);"
            f"write_report({str(runs[1])!r}, {str(tmp_path)!r}, p, [{str(runs[0])!r}]);"
            "assert 'torch' not in sys.modules, 'plotting imported torch'; print(len(p))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "4"
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == ["diversity_curve.png", "reward_curve.png", "samples_checkpoints.png", "tradeoff.png"]
    assert all(p.read_bytes().startswith(PNG) and p.stat().st_size > 5000 for p in tmp_path.glob("*.png"))
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and 'id="compare"' in page and "beta: 0.0" in page


def test_image_run_grid_and_report(tmp_path):
    from flowrl.plotting import plot_run
    run = make_image_run(tmp_path)
    view = load_run_view(run)
    assert [e.kind for e in view.evals] == ["images", "images"] and len(view.evals[0].images) == 6
    rows = diversity_from_evals(view.evals)
    assert rows[1]["vendi"] < rows[0]["vendi"]  # near-grey final images are less diverse
    paths = plot_run(run, tmp_path / "plots")
    assert [p.name for p in paths] == ["samples_checkpoints.png", "reward_curve.png", "diversity_curve.png",
                                       "tradeoff.png"]
    html = write_report(run, tmp_path / "plots", paths).read_text()
    assert html.count("<img") == 4


def test_cli_visualize_prints_paths(runs, tmp_path):
    from flowrl.cli import app
    res = CliRunner().invoke(app, ["visualize", "checkpoints", str(runs[1]), "--out", str(tmp_path),
                                   "--compare", str(runs[0])])
    assert res.exit_code == 0, res.output
    assert res.output.strip().splitlines()[-1] == str(tmp_path / "report.html")
    res = CliRunner().invoke(app, ["visualize", "checkpoints", str(runs[1]), "--compare", str(tmp_path)])
    assert res.exit_code == 2 and "not a run dir" in res.output


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no headless browser: install Debian's chromium (apt-get install -y chromium)")


def test_report_renders_in_a_real_browser(runs, tmp_path):
    """Headless Chromium loads report.html: the DOM holds the 4 figures and the tables, and the
    screenshot shows the plots (many blue plot pixels; the page's own CSS has no blue)."""
    from PIL import Image

    from flowrl.plotting import plot_run
    browser = _chromium()
    paths = plot_run(runs[1], tmp_path, [runs[0]])
    page = write_report(runs[1], tmp_path, paths, [runs[0]]).resolve()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    assert dom.count("<img") == 4 and 'id="summary"' in dom and 'id="diversity"' in dom, dom[:500]
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *flags, "--window-size=1200,2600", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120)
    rgb = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    blue = ((rgb[..., 2] > 150) & (rgb[..., 0] < 120)).sum()
    assert rgb.std() > 10 and blue > 2000, (rgb.std(), blue)
