"""Pair folders for `flowrl annotate serve`: sampled from a run (or the base model), or made from a
folder of images + prompts. A pair folder holds the images, the policy's samples (.pt, what training
reads back exactly) and `pairs.jsonl` (format: flowrl/serve/label_store.py).
"""
from __future__ import annotations

import json
import os
from itertools import combinations
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from flowrl.serve.label_store import IMAGE_SUFFIXES, append_line

POINT_BOX = (-1.5, 2.5, -1.0, 1.5)     # x0, x1, y0, y1 of the picture of a 2-D sample (two moons)


def render_point(xy: Sequence[float], size: int = 96):
    """A 2-D sample as a picture: a dot on the moons plane (axes drawn faintly). -> PIL image."""
    from PIL import Image, ImageDraw
    x0, x1, y0, y1 = POINT_BOX
    im = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(im)
    to_px = lambda x, y: ((x - x0) / (x1 - x0) * (size - 1), (y1 - y) / (y1 - y0) * (size - 1))  # noqa: E731
    d.line([to_px(x0, 0), to_px(x1, 0)], fill=(220, 220, 220))
    d.line([to_px(0, y0), to_px(0, y1)], fill=(220, 220, 220))
    px, py = to_px(float(xy[0]), float(xy[1]))
    d.ellipse([px - 4, py - 4, px + 4, py + 4], fill=(25, 118, 210))
    return im


def save_sample_picture(sample: torch.Tensor, path: Path) -> None:
    """A decoded sample -> PNG: (3, H, W) / (1, H, W) in [0, 1] as it is, (2,) as a dot (render_point)."""
    from PIL import Image
    s = sample.detach().float().cpu()
    if s.ndim == 1:
        render_point(s.tolist()).save(path)
        return
    arr = (s.clamp(0, 1) * 255).round().to(torch.uint8)
    arr = arr[0] if arr.shape[0] == 1 else arr.permute(1, 2, 0)
    Image.fromarray(arr.numpy()).save(path)


def publish_pairs(folder: Path, latents: torch.Tensor, decoded: torch.Tensor, prompts: List[str],
                  ids: List[str], extra: Optional[List[Dict]] = None) -> List[Dict]:
    """Write pairs into `folder`: latents, decoded (2P, ...) with rows 2p, 2p+1 = pair p, prompts [P],
    ids [P]. Files <id>_a/b.png and <id>_a/b.pt first, then one pairs.jsonl line per pair (one
    write + fsync each), so a served pair's files always exist. -> the records written."""
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    fd = os.open(folder / "pairs.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        for p, pid in enumerate(ids):
            rec = {"id": pid, "prompt": prompts[p]}
            for k, side in enumerate("ab"):
                save_sample_picture(decoded[2 * p + k], folder / f"{pid}_{side}.png")
                torch.save(latents[2 * p + k].detach().cpu().clone(), folder / f"{pid}_{side}.pt")
                rec[f"image_{side}"], rec[f"sample_{side}"] = f"{pid}_{side}.png", f"{pid}_{side}.pt"
            rec.update((extra or [{}] * len(ids))[p])
            append_line(fd, rec)
            records.append(rec)
    finally:
        os.close(fd)
    return records


def folder_pairs(folder: Path, max_per_prompt: int = 0) -> int:
    """Pairs from a folder of images with prompts: `prompts.jsonl` ({"image": file, "prompt": text}
    per line) or a `<image>.txt` caption beside each image. Images of one prompt are paired (every
    combination, at most max_per_prompt per prompt; 0: all). Writes folder/pairs.jsonl -> count."""
    folder = Path(folder)
    if (folder / "pairs.jsonl").exists():
        raise FileExistsError(f"{folder / 'pairs.jsonl'} exists already; serve it or delete it first")
    by_prompt: Dict[str, List[str]] = {}
    index = folder / "prompts.jsonl"
    if index.exists():
        for n, line in enumerate(index.read_text().splitlines(), start=1):
            if line.strip():
                row = json.loads(line)
                if "image" not in row or "prompt" not in row:
                    raise ValueError(f"{index}:{n}: needs the keys image and prompt")
                if not (folder / row["image"]).is_file():
                    raise FileNotFoundError(f"{index}:{n}: image {row['image']!r} not found in {folder}")
                by_prompt.setdefault(row["prompt"], []).append(row["image"])
    else:
        for img in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            cap = img.with_suffix(".txt")
            if cap.exists():
                by_prompt.setdefault(cap.read_text().strip(), []).append(str(img.relative_to(folder)))
    rows = []
    for prompt, images in by_prompt.items():
        combos = list(combinations(images, 2))
        for a, b in combos[:max_per_prompt or None]:
            rows.append({"id": f"p{len(rows):05d}", "prompt": prompt, "image_a": a, "image_b": b})
    if not rows:
        raise ValueError(f"{folder}: no two images share a prompt; give prompts.jsonl "
                         f"({{\"image\": file, \"prompt\": text}} per line) or <image>.txt captions")
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


@torch.no_grad()
def sample_pairs(policy, prompts: List[str], num_steps: int, guidance: float, generator: torch.Generator,
                 same_noise: bool = False, noise_level: float = 0.7, kind: str = "sde"):
    """Two samples per prompt. -> (latents (2P, *shape), decoded (2P, ...)). Different noise and the
    ODE by default; same_noise=True: one initial noise per pair and SDE steps (what D3PO compares)."""
    from flowrl.sampling.rollout import ode_sample, rollout
    shape = tuple(policy.sample_shape)
    p2 = [p for p in prompts for _ in range(2)]
    cond = policy.encode(p2)
    device = next(policy.net.parameters()).device
    if same_noise:
        noise = torch.randn((len(prompts), *shape), generator=generator).repeat_interleave(2, 0).to(device)
        sigmas = policy.sigmas(num_steps)
        traj = rollout(lambda z, s: policy.velocity(z, s, cond, guidance=guidance), noise, sigmas,
                       torch.ones(num_steps, dtype=torch.bool), noise_level, kind, generator)
        latents = traj.final
    else:
        noise = torch.randn((2 * len(prompts), *shape), generator=generator).to(device)
        latents = ode_sample(lambda z, s: policy.velocity(z, s, cond, guidance=guidance), noise,
                             policy.sigmas(num_steps))
    return latents, policy.decode(latents)


def run_pairs(run_dir: Path, out: Path, prompts_spec: Optional[str], per_prompt: int, use_base: bool,
              same_noise: bool, seed: int, num_prompts: int = 0, batch_prompts: int = 16) -> int:
    """`flowrl annotate pairs RUN_DIR`: per_prompt samples per prompt (from the last checkpoint, or
    the base model), paired consecutively (per_prompt // 2 pairs per prompt) into `out`. -> pairs."""
    from flowrl.data.prompts import load_prompts
    from flowrl.checkpoint import pick_checkpoint
    from flowrl.runs import build_policy, load_policy_weights, load_run_config
    if per_prompt < 2 or per_prompt % 2:
        raise ValueError(f"--per-prompt {per_prompt}: give an even number >= 2 (pairs of samples)")
    if (out / "pairs.jsonl").exists():
        raise FileExistsError(f"{out / 'pairs.jsonl'} exists already; give a new --out folder")
    cfg = load_run_config(run_dir)
    pset = load_prompts(prompts_spec if prompts_spec is not None else (cfg.prompts.test_dataset or cfg.prompts.dataset))
    policy = build_policy(cfg, torch.device("cpu"))
    if not use_base:
        ckpt = pick_checkpoint(run_dir)
        if ckpt is None:
            raise FileNotFoundError(f"{run_dir} has no checkpoint yet; pass --base to sample the base model")
        load_policy_weights(policy, ckpt)
    policy.net.eval()
    idx = list(range(len(pset)))[:num_prompts or None]
    jobs = [i for i in idx for _ in range(per_prompt // 2)]       # one entry per pair
    g = torch.Generator().manual_seed(seed)
    total = 0
    for start in range(0, len(jobs), batch_prompts):
        chunk = jobs[start:start + batch_prompts]
        prompts = [pset.prompts[i] for i in chunk]
        lat, dec = sample_pairs(policy, prompts, cfg.sample.eval_num_steps, cfg.sample.guidance_scale, g,
                                same_noise, cfg.sample.noise_level, cfg.sample.kind)
        ids = [f"p{start + k:05d}" for k in range(len(chunk))]
        extra = [{"metadata": pset.metadata[i]} if pset.metadata[i] else {} for i in chunk]
        total += len(publish_pairs(out, lat, dec, prompts, ids, extra))
    return total
