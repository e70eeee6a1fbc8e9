"""What training did, read back from a run dir (numpy only, no torch), and a static report.html.

Reads RUN_DIR/config.yaml, metrics.jsonl, summary.json, diversity.json (flowrl eval-diversity) and
the trainer's fixed-noise evaluations: eval/<tag>.npz (x (N, D), reward (N,)) for points, or
eval/<tag>/<index>.png + prompts.jsonl for images, tags base, step_N, final.
Diversity comes from diversity.json when present, else it is computed here from the eval samples
(points: raw coordinates; images: 8x8 thumbnails; the first 512 samples, as the trainer's
cheap_diversity) with the Gaussian-kernel Vendi / RKE scores on the base model's median bandwidth,
so every checkpoint is measured on the same scale.
"""
from __future__ import annotations

import base64
import html
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

THUMB = 8               # thumbnail side for image diversity (as flowrl.metrics.monitor.THUMBNAIL)
MAX_DIVERSITY_N = 512   # samples per eval used here (as flowrl.metrics.monitor.MAX_SAMPLES)


@dataclass
class EvalSet:
    """One evaluation of the fixed eval set: points (x, reward) or images (paths, prompts, reward)."""
    tag: str
    step: int
    x: Optional[np.ndarray] = None                       # (N, D) points
    reward: Optional[np.ndarray] = None                  # (N,)
    images: List[Path] = field(default_factory=list)     # PNG paths, in index order
    prompts: List[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return "points" if self.x is not None else "images"


@dataclass
class RunView:
    run_dir: Path
    config: Dict
    metrics: List[Dict]
    summary: Dict
    evals: List[EvalSet]
    diversity: List[Dict]          # rows: tag, step, vendi, rke, reward_mean, entropy (or None)
    diversity_source: str


def tag_step(tag: str, num_epochs: int) -> Optional[int]:
    """'base' -> 0, 'step_N' -> N, 'final' -> num_epochs, anything else -> None."""
    if tag == "base":
        return 0
    if tag == "final":
        return int(num_epochs)
    m = re.fullmatch(r"step_(\d+)", tag)
    return int(m.group(1)) if m else None


def _load_image_eval(folder: Path, step: int) -> Optional[EvalSet]:
    table = folder / "prompts.jsonl"
    if not table.exists():
        return None
    rows = read_jsonl(table)
    rows = sorted((r for r in rows if (folder / r["image"]).exists()), key=lambda r: r["index"])
    if not rows:
        return None
    return EvalSet(folder.name, step, reward=np.array([r.get("reward", np.nan) for r in rows], float),
                   images=[folder / r["image"] for r in rows], prompts=[r.get("prompt", "") for r in rows])


def list_evals(run_dir: Path, num_epochs: int) -> List[EvalSet]:
    """Every evaluation under RUN_DIR/eval, ordered by step (base first, final last)."""
    d, found = Path(run_dir) / "eval", []
    if not d.is_dir():
        return []
    for p in d.iterdir():
        step = tag_step(p.stem if p.suffix == ".npz" else p.name, num_epochs)
        if step is None:
            continue
        if p.suffix == ".npz":
            data = np.load(p)
            reward = data["reward"] if "reward" in data.files else None
            found.append(EvalSet(p.stem, step, x=data["x"].reshape(len(data["x"]), -1), reward=reward))
        elif p.is_dir() and (ev := _load_image_eval(p, step)) is not None:
            found.append(ev)
    return sorted(found, key=lambda e: (e.step, e.tag == "final"))


# ------------------------------------------------------------------------------------- diversity
def median_bandwidth_np(x: np.ndarray) -> float:
    """sqrt(median_{i<j} ||x_i - x_j||^2 / 2) (as flowrl.metrics.diversity.median_bandwidth)."""
    n = len(x)
    if n < 2:
        return 1.0
    d2 = sq_dists_np(x)[np.triu_indices(n, 1)]
    med = np.sort(d2)[(len(d2) - 1) // 2]  # torch's lower median
    if med <= 0:
        pos = d2[d2 > 0]
        med = pos.mean() if len(pos) else 2.0
    return float(np.sqrt(med / 2.0))


def sq_dists_np(x: np.ndarray) -> np.ndarray:
    """(N, D) -> (N, N) squared Euclidean distances, float64, zero diagonal."""
    x = x.reshape(len(x), -1).astype(np.float64)
    x = x - x.mean(0)
    sq = (x * x).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)
    np.fill_diagonal(d2, 0.0)
    return d2


def vendi_rke_np(x: np.ndarray, bandwidth: float) -> Tuple[float, float]:
    """Gaussian-kernel (Vendi, RKE) of samples x (N, D), numpy twin of flowrl.metrics.diversity."""
    k = np.exp(-sq_dists_np(x) / (2.0 * bandwidth ** 2)) / len(x)
    lam = np.linalg.eigvalsh(k)
    lam = lam[lam > 1e-12]
    return float(np.exp(-(lam * np.log(lam)).sum())), float(1.0 / (k * k).sum())


def eval_features(ev: EvalSet, limit: int = MAX_DIVERSITY_N) -> np.ndarray:
    """Points as they are; images as THUMB x THUMB RGB thumbnails in [0, 1], flattened. (n, F)."""
    if ev.x is not None:
        return ev.x[:limit].astype(np.float64)
    from PIL import Image
    thumbs = [np.asarray(Image.open(p).convert("RGB").resize((THUMB, THUMB), Image.BOX), np.float64) / 255
              for p in ev.images[:limit]]
    return np.stack(thumbs).reshape(len(thumbs), -1)


def diversity_from_evals(evals: Sequence[EvalSet]) -> List[Dict]:
    """Rows {tag, step, num_samples, vendi, rke, reward_mean, entropy: None} on the base bandwidth."""
    feats = [eval_features(ev) for ev in evals]
    usable = [(ev, f) for ev, f in zip(evals, feats) if len(f) >= 2]
    if not usable:
        return []
    bw = median_bandwidth_np(usable[0][1])
    rows = []
    for ev, f in usable:
        vendi, rke = vendi_rke_np(f, bw)
        reward = float(np.nanmean(ev.reward)) if ev.reward is not None and len(ev.reward) else None
        rows.append({"tag": ev.tag, "step": ev.step, "num_samples": len(f), "vendi": vendi, "rke": rke,
                     "reward_mean": reward, "entropy": None, "entropy_stderr": None, "bandwidth": bw})
    return rows


def load_diversity(run_dir: Path, evals: Sequence[EvalSet]) -> Tuple[List[Dict], str]:
    """(rows ordered by step, where they came from): diversity.json if present, else the evals."""
    path = Path(run_dir) / "diversity.json"
    if path.exists():
        rows = read_json(path).get("rows", [])
        return sorted(rows, key=lambda r: r.get("step") or 0), "diversity.json (flowrl eval-diversity)"
    src = "computed from eval/ samples (" + ("8x8 thumbnails" if evals and evals[0].kind == "images"
                                              else "raw coordinates") + ", Gaussian kernel, base bandwidth)"
    return diversity_from_evals(evals), src


def read_jsonl(path: Path) -> List[Dict]:
    """Rows of a run's JSON-lines file ([] when it does not exist). Here, not flowrl.rundir: no torch.
    A last line cut off by a crash or a full disk is skipped with a warning; any other bad line is an
    InputFileError naming PATH:LINE (flowrl.errors.read_jsonl)."""
    from flowrl.errors import read_jsonl as read
    return read(path, "run log", "delete that line (a run rewrites its log from the checkpoint on --resume)",
                cut_last_ok=True)


def read_json(path: Path) -> Dict:
    """A JSON file's object; InputFileError naming it (and the fix) when it is not valid JSON."""
    from flowrl.errors import InputFileError
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputFileError(f"{path}: not valid JSON ({e}); delete it (flowrl writes it again) or restore "
                             f"it") from None


def load_run_view(run_dir: Path) -> RunView:
    """Everything the pictures and the report need. Raises if RUN_DIR holds no run."""
    import yaml
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists() and not (run_dir / "metrics.jsonl").exists():
        raise FileNotFoundError(f"{run_dir} is not a run dir (no config.yaml / metrics.jsonl)")
    cfg_path = run_dir / "config.yaml"
    config = yaml.safe_load(cfg_path.read_text()) if cfg_path.exists() else {}
    summary_path = run_dir / "summary.json"
    summary = read_json(summary_path) if summary_path.exists() else {}
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    num_epochs = config.get("num_epochs") or max((r.get("epoch", 0) for r in metrics), default=0)
    evals = list_evals(run_dir, num_epochs)
    diversity, source = load_diversity(run_dir, evals)
    return RunView(run_dir, config, metrics, summary, evals, diversity, source)


def summary_numbers(view: RunView) -> Dict[str, Optional[float]]:
    """Headline numbers: base / final reward, Vendi, RKE, entropy and the relative Vendi change."""
    out: Dict[str, Optional[float]] = {}
    ev = [e for e in view.evals if e.reward is not None]
    if ev:
        out["reward_base"], out["reward_final"] = (float(np.nanmean(e.reward)) for e in (ev[0], ev[-1]))
    rows = view.diversity
    if rows:
        for key in ("vendi", "rke", "entropy"):
            out[f"{key}_base"], out[f"{key}_final"] = rows[0].get(key), rows[-1].get(key)
        if rows[0].get("vendi"):
            out["vendi_change"] = rows[-1]["vendi"] / rows[0]["vendi"] - 1.0
    out["epochs"] = view.config.get("num_epochs")
    out["wall_seconds"] = view.summary.get("wall_seconds")
    return out


# ------------------------------------------------------------------------------------------ HTML
CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}figure{margin:1em 0}img{max-width:100%}
figcaption{color:#555;font-size:.9em}pre{background:#f8f8f8;padding:1em;overflow:auto;font-size:.85em}
.warn{color:#a00;font-weight:bold}"""

CAPTIONS = {
    "samples": "Samples of the base model and each evaluated checkpoint from the same fixed noise "
               "(and prompts).",
    "reward_curve": "Reward over training: per-epoch SDE samples and the fixed-noise ODE evaluation.",
    "diversity_curve": "Diversity over training (Vendi / RKE: effective number of distinct samples; "
                       "entropy in nats).",
    "tradeoff": "Reward against diversity, one point per checkpoint in training order: up-left is "
                "reward hacking.",
}


def _fmt(v, spec=".4g") -> str:
    return "-" if v is None else format(v, spec) if isinstance(v, (int, float)) else html.escape(str(v))


def _figure(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    key = next((k for k in CAPTIONS if Path(path).stem.startswith(k)), None)
    cap = CAPTIONS.get(key, Path(path).stem.replace("_", " "))
    return (f'<figure id="{html.escape(Path(path).stem)}"><img alt="{html.escape(Path(path).stem)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{html.escape(cap)}</figcaption></figure>')


def _summary_table(s: Dict) -> str:
    pairs = [("reward", "reward_base", "reward_final"), ("Vendi", "vendi_base", "vendi_final"),
             ("RKE", "rke_base", "rke_final"), ("entropy (nats)", "entropy_base", "entropy_final")]
    body = "".join(f'<tr><td class="l">{n}</td><td>{_fmt(s.get(a))}</td><td>{_fmt(s.get(b))}</td></tr>'
                   for n, a, b in pairs if s.get(a) is not None)
    change = s.get("vendi_change")
    note = "" if change is None else (f'<p class="{"warn" if change < -0.5 else ""}" id="vendi-change">'
                                      f"Vendi diversity changed by {change:+.0%} from the base model.</p>")
    return (f'<table id="summary"><tr><th class="l"></th><th>base model</th><th>final</th></tr>{body}'
            f"</table>{note}")


def _diversity_table(rows: List[Dict]) -> str:
    cols = ("tag", "step", "num_samples", "vendi", "rke", "reward_mean", "entropy")
    head = "".join(f"<th>{c}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows)
    return f'<table id="diversity"><tr>{head}</tr>{body}</table>'


def _compare_table(views: Sequence[RunView]) -> str:
    """One row per run: reward and Vendi of the base model and the final checkpoint."""
    head = ("<tr><th class='l'>run</th><th>reward base</th><th>reward final</th><th>Vendi base</th>"
            "<th>Vendi final</th><th>Vendi change</th><th>entropy final</th></tr>")
    body = ""
    for v in views:
        s = summary_numbers(v)
        change = s.get("vendi_change")
        body += (f"<tr><td class='l'>{html.escape(v.run_dir.resolve().name)}</td>"
                 + "".join(f"<td>{_fmt(s.get(k))}</td>" for k in ("reward_base", "reward_final",
                                                                 "vendi_base", "vendi_final"))
                 + f"<td>{'-' if change is None else format(change, '+.0%')}</td>"
                 + f"<td>{_fmt(s.get('entropy_final'))}</td></tr>")
    return f'<table id="compare">{head}{body}</table>'


def render_html(view: RunView, pictures: Sequence[Path], others: Sequence[RunView] = ()) -> str:
    """The report page: summary numbers, comparison with `others`, the pictures (base64),
    the per-checkpoint table and the config."""
    import yaml
    s = summary_numbers(view)
    name = html.escape(view.run_dir.resolve().name)
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>flowrl report: {name}</title>",
             f"<style>{CSS}</style></head><body><h1>flowrl run <code>{name}</code></h1>",
             f"<p>{html.escape(str(view.run_dir.resolve()))}: {_fmt(s.get('epochs'))} epochs, "
             f"{_fmt(s.get('wall_seconds'), '.1f')} s of training.</p>",
             "<h2>Summary</h2>", _summary_table(s)]
    if others:
        parts += ["<h2>Compared runs</h2>", _compare_table([view, *others])]
    parts += ["<h2>Pictures</h2>"] + [_figure(p) for p in pictures]
    parts += [f"<h2>Per checkpoint</h2><p>Diversity source: {html.escape(view.diversity_source)}.</p>",
              _diversity_table(view.diversity), "<h2>Config</h2>",
              f'<pre id="config">{html.escape(yaml.safe_dump(view.config, sort_keys=True))}</pre>',
              "</body></html>"]
    return "\n".join(parts)


def write_report(run_dir: Path, out: Path, pictures: Sequence[Path], compare: Sequence[Path] = ()) -> Path:
    """Write OUT/report.html (self-contained: pictures embedded as base64) and return its path."""
    path = Path(out) / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    others = [load_run_view(c) for c in compare]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_html(load_run_view(run_dir), pictures, others), encoding="utf-8")
    os.replace(tmp, path)
    return path
