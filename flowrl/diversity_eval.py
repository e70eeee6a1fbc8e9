"""`flowrl eval-diversity`: Vendi / RKE diversity, reward and flow entropy per checkpoint.

Run dir mode: the base model (no checkpoint, first row) and every checkpoint are ODE-sampled from the
FIXED eval noise and prompts of flowrl.evaluation (so rows are comparable and the base / final
samples equal the trainer's eval/base.npz, eval/final.npz), scored by the run's reward, embedded
(flowrl.metrics.features) and scored for diversity. Entropy: flowrl.metrics.entropy along the same
noise, exact divergence for points, Hutchinson for images / latents.
Samples mode: an .npz with `x` (N, D) points or (N, 3, H, W) images (optional `reward` (N,)).

Under `accelerate launch` each rank samples its share of the eval indices; features, rewards and
log-densities are gathered and only the main process scores and writes the JSON.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional

import torch

from flowrl.errors import InputFileError

KERNELS = ("auto", "gaussian", "cosine")
# Vendi / RKE build N x N float64 kernels (and the median rule N^2 / 2 distances): 4096 samples take
# ~134 MB a matrix; 50,000 would take 20 GB. Larger sets are scored on a fixed random subset.
DEFAULT_MAX_SAMPLES = 4096


@dataclass
class Settings:
    num_samples: Optional[int] = None      # global eval samples; None -> config.eval.num_samples
    encoder: str = "auto"                  # flowrl.metrics.features.ENCODERS
    clip_path: Optional[str] = None        # local CLIPModel folder for encoder "clip"
    kernel: str = "auto"                   # Vendi kernel: gaussian (points) / cosine (embeddings)
    bandwidth: Optional[float] = None      # Gaussian width; None -> median rule on the base model
    entropy: bool = True                   # flow entropy (run dir mode only)
    num_probes: int = 1                    # Hutchinson probes per step (images / latents)
    entropy_steps: int = 20                # midpoint ODE steps (vs 100: 0.006 nats off on moons)
    entropy_samples: Optional[int] = None  # None -> all samples for points, 64 for images
    reward: bool = True                    # score samples with the run's reward
    use_ema: bool = True                   # EMA weights of a checkpoint, when saved
    batch_size: Optional[int] = None       # per forward pass; None -> config.eval.batch_size
    progress: bool = True
    max_samples: int = DEFAULT_MAX_SAMPLES  # kernels on at most this many samples (0 = all)


# ---------------------------------------------------------------------------------------- scoring
def resolve_kernel(kernel: str, encoder: str) -> str:
    """'auto' -> 'gaussian' for coordinates / pixels, 'cosine' for learned embeddings."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; expected one of {KERNELS}")
    if kernel != "auto":
        return kernel
    return "cosine" if encoder in ("efficientnet", "clip") else "gaussian"


def diversity_scores(features: torch.Tensor, kernel: str, bandwidth: float) -> Dict[str, float]:
    """features (N, F) -> {"vendi": Vendi with `kernel`, "rke": RKE mode count (Gaussian, bandwidth)}."""
    from flowrl.metrics.diversity import rke_from_features, vendi_from_features
    if features.shape[0] < 2:
        raise ValueError(f"diversity needs at least 2 samples, got {features.shape[0]}")
    x = features.double()
    vendi = vendi_from_features(x, kernel=kernel, bandwidth=bandwidth if kernel == "gaussian" else None)
    return {"vendi": float(vendi), "rke": float(rke_from_features(x, bandwidth=bandwidth))}


def kernel_subset(features: torch.Tensor, max_samples: int) -> torch.Tensor:
    """The rows (N, F) -> (min(N, max_samples), F) that the N x N kernels are built on: all of them if
    N <= max_samples (or max_samples is 0), else a fixed random subset (seed 0, original order), so
    every checkpoint of a run is scored on the same sample indices."""
    n = features.shape[0]
    if not max_samples or n <= max_samples:
        return features
    keep = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:max_samples].sort().values
    return features[keep]


def score_row(tag: str, step: Optional[int], features: torch.Tensor, rewards: Optional[torch.Tensor],
              log_p: Optional[torch.Tensor], kernel: str, bandwidth: float,
              max_samples: int = DEFAULT_MAX_SAMPLES) -> Dict:
    """One table row: tag, step, num_samples, kernel_samples (Vendi / RKE's share, kernel_subset),
    vendi, rke, reward_mean/std (all samples), entropy (+ stderr) or None."""
    sub = kernel_subset(features, max_samples)
    row = {"tag": tag, "step": step, "num_samples": int(features.shape[0]), "kernel_samples": int(sub.shape[0]),
           **diversity_scores(sub, kernel, bandwidth), "reward_mean": None, "reward_std": None,
           "entropy": None, "entropy_stderr": None}
    if rewards is not None:
        row.update(reward_mean=float(rewards.float().mean()), reward_std=float(rewards.float().std()))
    if log_p is not None and log_p.numel() >= 2:
        row.update(entropy=float(-log_p.mean()), entropy_stderr=float(log_p.std() / math.sqrt(log_p.numel())))
    return row


# ---------------------------------------------------------------------------------- samples file
def load_samples_file(path: Path):
    """(x (N, D) or (N, 3, H, W) float in [0, 1], reward (N,) or None) from an .npz; clear errors."""
    import numpy as np
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"samples file {path} does not exist")
    try:  # np.load is lazy: a truncated / corrupt member only fails when it is read
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.keys() if k in ("x", "reward")}
            keys = list(data.keys())
    except Exception as e:
        raise InputFileError(f"{path} is not a readable .npz file ({type(e).__name__}: {e}); write it "
                             f"again with np.savez(path, x=...)") from None
    if "x" not in keys:
        raise InputFileError(f"{path} has no key 'x' (keys: {keys}); save samples with np.savez(path, x=...)")
    x = arrays["x"]
    if not (x.ndim == 2 or (x.ndim == 4 and x.shape[1] == 3)) or x.shape[0] < 2:
        raise InputFileError(f"{path}: 'x' must be (N, D) points or (N, 3, H, W) images with N >= 2; "
                             f"got shape {x.shape}")
    x = torch.from_numpy(x.astype(np.float32) / (255.0 if x.dtype == np.uint8 else 1.0))
    reward = torch.from_numpy(arrays["reward"].astype(np.float64)).reshape(-1) if "reward" in keys else None
    if reward is not None and reward.numel() != x.shape[0]:
        raise InputFileError(f"{path}: 'reward' has {reward.numel()} values for {x.shape[0]} samples")
    for key, t in (("x", x), ("reward", reward)):
        bad = 0 if t is None else int((~torch.isfinite(t)).sum())
        if bad:
            raise InputFileError(f"{path}: '{key}' holds {bad} NaN / inf value(s); drop those samples or "
                                 f"fix them before scoring")
    return x, reward


def evaluate_samples(path: Path, settings: Settings) -> Dict:
    """Report dict {source, kind, settings, rows: [one row], seconds} for a samples file."""
    from flowrl.metrics.diversity import median_bandwidth
    from flowrl.metrics.features import extract_features, resolve_encoder
    t0 = time.time()
    x, reward = load_samples_file(path)
    if settings.num_samples:
        x, reward = x[:settings.num_samples], (reward[:settings.num_samples] if reward is not None else None)
    encoder = resolve_encoder(x, settings.encoder)
    feats = extract_features(x, encoder, settings.clip_path, batch_size=settings.batch_size or 64)
    kernel = resolve_kernel(settings.kernel, encoder)
    bw = settings.bandwidth or median_bandwidth(kernel_subset(feats, settings.max_samples).double())
    row = score_row(Path(path).stem, None, feats, reward, None, kernel, bw, settings.max_samples)
    meta = {**asdict(settings), "encoder": encoder, "kernel": kernel, "bandwidth": bw,
            "bandwidth_rule": "given" if settings.bandwidth else "median of these samples"}
    return {"source": str(path), "kind": "samples", "settings": meta, "rows": [row],
            "seconds": time.time() - t0}


# --------------------------------------------------------------------------------------- run dir
class _NoReward:
    """Stands in for the run's reward when it is off or unavailable: zeros, reported as None."""

    def __call__(self, samples, prompts, metadata):
        return torch.zeros(samples.shape[0]), {}


def load_run(run_dir: Path, settings: Settings, state):
    """(config, checkpoints, policy (base weights), reward fn or None, eval prompt set)."""
    from flowrl.data.prompts import load_prompts
    from flowrl.runs import build_policy, build_run_reward, load_run_config, run_checkpoints
    cfg = load_run_config(run_dir)
    ckpts = run_checkpoints(run_dir)  # raises CheckpointError when there are none
    with state.main_process_first():  # the main process builds / caches the base model first
        policy = build_policy(cfg, state.device)
    reward = None
    if settings.reward:
        try:
            reward = build_run_reward(cfg, state.device)
        except (FileNotFoundError, ImportError, OSError) as e:
            if state.is_main_process:
                print(f"[flowrl] reward unavailable, reporting no reward_mean: {e}", flush=True)
    prompts = load_prompts(cfg.prompts.test_dataset or cfg.prompts.dataset)
    return cfg, ckpts, policy, reward, prompts


def entropy_log_probs(policy, prompt_set, indices: torch.Tensor, cfg, settings: Settings,
                      device) -> torch.Tensor:
    """log p0 of the ODE samples from the eval noise of `indices` (this rank's), (n,) float64 CPU."""
    from flowrl.evaluation import eval_noise
    from flowrl.metrics.entropy import sample_with_log_prob
    noise = eval_noise(indices, policy.sample_shape, cfg.eval.seed)
    exact = len(policy.sample_shape) == 1 and policy.sample_shape[0] <= 16
    gen = torch.Generator(device=device).manual_seed(cfg.eval.seed + 1)
    bs, out = settings.batch_size or cfg.eval.batch_size, []
    for start in range(0, len(indices), bs):
        idx = indices[start:start + bs].tolist()
        cond = policy.encode([prompt_set.prompts[i % len(prompt_set)] for i in idx])
        vel = lambda z, s, c=cond: policy.velocity(z, s, c, guidance=cfg.sample.guidance_scale)  # noqa: E731
        _, log_p = sample_with_log_prob(vel, noise[start:start + bs].to(device), settings.entropy_steps,
                                        divergence="exact" if exact else "hutchinson",
                                        num_probes=settings.num_probes, generator=gen)
        out.append(log_p.cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def _entropy_indices(indices: torch.Tensor, settings: Settings, image_like: bool, world: int) -> torch.Tensor:
    if not settings.entropy:
        return indices[:0]
    total = settings.entropy_samples or (64 if image_like else None)
    return indices if total is None else indices[:max(1, total // world)]


def sample_rank_share(policy, reward, prompts, cfg, settings: Settings, state, indices) -> Dict:
    """This rank's eval samples -> gathered {features, rewards, log_p} (CPU) and the encoder name."""
    from accelerate.utils import gather

    from flowrl.evaluation import evaluate
    from flowrl.metrics.features import extract_features, resolve_encoder
    policy.net.eval()
    local = evaluate(policy, _NoReward() if reward is None else reward, prompts, indices,
                     cfg.sample.eval_num_steps, cfg.sample.guidance_scale,
                     settings.batch_size or cfg.eval.batch_size, cfg.eval.seed, state.device)
    encoder = resolve_encoder(local["samples"], settings.encoder)
    feats = extract_features(local["samples"], encoder, settings.clip_path, device=state.device)
    image_like = local["samples"].ndim == 4 or len(policy.sample_shape) > 1
    ent_idx = _entropy_indices(indices, settings, image_like, state.num_processes)
    log_p = entropy_log_probs(policy, prompts, ent_idx, cfg, settings, state.device) if len(ent_idx) else None
    out = {"features": gather(feats.to(state.device)).cpu(),
           "rewards": gather(local["rewards"].float().to(state.device)).cpu()}
    if log_p is not None:
        out["log_p"] = gather(log_p.to(state.device)).cpu()
    return {**out, "encoder": encoder}


def _run_meta(settings: Settings, encoder: str, kernel: str, bandwidth: float, n: int, state) -> Dict:
    return {**asdict(settings), "num_samples": n, "encoder": encoder, "kernel": kernel,
            "bandwidth": bandwidth, "num_processes": state.num_processes,
            "bandwidth_rule": "given" if settings.bandwidth else "median of the base model's samples"}


def evaluate_run(run_dir: Path, settings: Settings, state=None) -> Optional[Dict]:
    """Report dict for a run dir (rows: base, then every checkpoint); None on non-main ranks."""
    from flowrl.evaluation import eval_indices
    from flowrl.metrics.diversity import median_bandwidth
    from flowrl.runs import load_policy_weights
    t0, state = time.time(), state or process_state()
    cfg, ckpts, policy, reward, prompts = load_run(run_dir, settings, state)
    n = settings.num_samples or cfg.eval.num_samples
    indices = eval_indices(n, state.process_index, state.num_processes)
    if len(indices) == 0:
        raise ValueError(f"--num-samples {n} is smaller than the number of processes {state.num_processes}")
    todo = [("base", 0, None)] + [(p.name, step, p) for step, p in ckpts]
    rows, bw, kernel, encoder = [], settings.bandwidth, None, None
    for tag, step, path in _progress(todo, settings.progress and state.is_main_process):
        if path is not None:
            load_policy_weights(policy, path, use_ema=settings.use_ema)
        got = sample_rank_share(policy, reward, prompts, cfg, settings, state, indices)
        if not state.is_main_process:
            continue
        encoder = got["encoder"]
        kernel = resolve_kernel(settings.kernel, encoder)
        feats = got["features"]
        bw = bw or median_bandwidth(kernel_subset(feats, settings.max_samples).double())  # the base row's
        rows.append(score_row(tag, step, feats, got["rewards"] if reward is not None else None,
                              got.get("log_p"), kernel, bw, settings.max_samples))
    if not state.is_main_process:
        return None
    meta = _run_meta(settings, encoder, kernel, bw, int(len(indices) * state.num_processes), state)
    return {"source": str(run_dir), "kind": "run", "settings": meta, "rows": rows,
            "seconds": time.time() - t0}


def process_state():
    """accelerate's PartialState; on CPU under `accelerate launch` it must be told cpu + gloo, else
    every rank runs alone (distributed_type NO, gather a no-op)."""
    import os

    from accelerate import PartialState
    if torch.cuda.is_available():
        return PartialState()
    multi = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return PartialState(cpu=True, **({"backend": "gloo"} if multi else {}))


def _progress(items: List, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(items, disable=not enabled, desc="checkpoints", unit="ckpt", dynamic_ncols=True)


# ---------------------------------------------------------------------------------------- output
def default_output(source: Path, samples: bool) -> Path:
    """RUN_DIR/diversity.json, or <stem>_diversity.json next to a samples file."""
    source = Path(source)
    return source.with_name(source.stem + "_diversity.json") if samples else source / "diversity.json"


def write_json(report: Dict, path: Path) -> Path:
    from flowrl.rundir import atomic_write_text
    atomic_write_text(Path(path), json.dumps(report, indent=2))
    return Path(path)


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(report: Dict) -> None:
    """A rich table of the rows (tag, step, N, Vendi, RKE, reward, entropy)."""
    from rich.console import Console
    from rich.table import Table
    s = report["settings"]
    table = Table(title=f"diversity of {report['source']}",
                  caption=f"{s['encoder']} features, {s['kernel']} kernel Vendi, Gaussian RKE, bandwidth "
                          f"{s['bandwidth']:.4g} ({s['bandwidth_rule']}); {kernel_note(report)}")
    for col in ("tag", "step", "N", "Vendi", "RKE", "reward", "entropy (nats)"):
        table.add_column(col, justify="left" if col == "tag" else "right")
    for r in report["rows"]:
        ent = None if r["entropy"] is None else f"{r['entropy']:.3f} ± {r['entropy_stderr']:.3f}"
        table.add_row(r["tag"], _fmt(r["step"], "d"), str(r["num_samples"]), _fmt(r["vendi"], ".3f"),
                      _fmt(r["rke"], ".3f"), _fmt(r["reward_mean"], ".4f"), ent or "-")
    Console(width=max(100, Console().width)).print(table)


def kernel_note(report: Dict) -> str:
    """Says whether Vendi / RKE saw every sample or a subset (--max-samples)."""
    rows, m = report["rows"], report["settings"].get("max_samples")
    cut = [r for r in rows if r.get("kernel_samples", r["num_samples"]) < r["num_samples"]]
    if not cut:
        return f"Vendi / RKE on all samples (--max-samples {m})"
    return (f"Vendi / RKE on a fixed random subset of {cut[0]['kernel_samples']} of {cut[0]['num_samples']} "
            f"samples (--max-samples {m}; 0 = all, O(N^2) memory); reward and entropy on all")


def run_eval_diversity(target: Path, samples: bool, settings: Settings,
                       output: Optional[Path]) -> Optional[Path]:
    """The CLI's body: evaluate, print the table and write the JSON on the main process only.
    Under several processes every rank meets the others at the end before the process group is
    torn down (a rank that exits alone can abort gloo's threads on the others)."""
    state = process_state()
    try:
        if samples:  # nothing to share: only the main process scores the file
            report = evaluate_samples(target, settings) if state.is_main_process else None
        else:
            report = evaluate_run(target, settings, state)
        if report is None:
            return None
        print_table(report)
        print(kernel_note(report), flush=True)
        path = write_json(report, output or default_output(target, samples))
        print(f"wrote {path} ({report['seconds']:.1f} s)", flush=True)
        return path
    finally:
        if state.num_processes > 1:
            state.wait_for_everyone()
            state.destroy_process_group()
