"""Score a scenes text-to-image pipeline with `scene_geneval`, GenEval-style, and draw sample grids.

    python -m flowrl.scenes.evaluate [DIR] [--split test] [--per-prompt 4] [--steps 20]
                                     [--guidance 4.5] [--grid /tmp/tiny_t2i_grid.png]
    python -m flowrl.scenes.evaluate --eval-dir RUN_DIR/eval/<tag>   # a run's saved evaluation
    python -m flowrl.scenes.evaluate --before-after RUN_DIR/eval/base RUN_DIR/eval/final --grid ba.png
    python -m flowrl.scenes.evaluate --per-prompt 32 --best-of      # best-of-n headroom of the samples

DIR defaults to the cached tiny-t2i folder (`flowrl init tiny-t2i`). Sampling goes through
StableDiffusion3Pipeline.__call__ itself (Euler ODE, classifier-free guidance), max_sequence_length 16.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Sequence

import torch

from flowrl.rewards.scene import scene_measures


@torch.no_grad()
def sample(pipe, prompts: Sequence[str], seed: int = 0, steps: int = 20, guidance: float = 4.5,
           max_sequence_length: int = 16, batch: int = 64) -> torch.Tensor:
    """-> (N, 3, H, W) float32 in [0, 1]: one image per prompt; batch b uses seed + b."""
    pipe.set_progress_bar_config(disable=True)
    out = []
    for b, start in enumerate(range(0, len(prompts), batch)):
        gen = torch.Generator().manual_seed(seed + b)
        out.append(pipe(list(prompts[start:start + batch]), num_inference_steps=steps, guidance_scale=guidance,
                        max_sequence_length=max_sequence_length, output_type="pt", generator=gen).images.float())
    return torch.cat(out).clamp(0, 1)


def summarize(reward: torch.Tensor, strict: torch.Tensor, rows: List[dict]) -> Dict:
    """Mean reward / strict accuracy overall, per tag, held-out vs seen; "geneval" = the mean over tags
    of the per-tag strict accuracy (GenEval's overall score)."""
    def stats(mask):
        m = torch.tensor(mask, dtype=torch.bool)
        return {"reward": float(reward[m].mean()), "accuracy": float(strict[m].mean()), "n": int(m.sum())}
    tags = sorted({r["tag"] for r in rows})
    per_tag = {t: stats([r["tag"] == t for r in rows]) for t in tags}
    out = {"reward": float(reward.mean()), "accuracy": float(strict.mean()), "n": len(rows),
           "geneval": sum(v["accuracy"] for v in per_tag.values()) / len(per_tag), "per_tag": per_tag}
    for name, flag in (("held_out", True), ("seen", False)):
        if any(bool(r.get("held_out")) == flag for r in rows):
            out[name] = stats([bool(r.get("held_out")) == flag for r in rows])
    return out


def evaluate(pipe, rows: List[dict], per_prompt: int = 4, **sample_kw) -> Dict:
    """Sample `per_prompt` images of every row ({"prompt", attributes...}) and summarize; also returns
    the images (N, 3, H, W), their rows and per-image reward / strict / extra objects (N,) under
    "images" / "rows" / "scores" / "strict" / "extra" (not JSON)."""
    rows = [r for r in rows for _ in range(per_prompt)]
    images = sample(pipe, [r["prompt"] for r in rows], **sample_kw)
    reward, strict, extra = scene_measures(images, [r["prompt"] for r in rows], rows)
    return {**summarize(reward, strict, rows), "extra_objects": float(extra.mean()), "images": images,
            "rows": rows, "scores": reward, "strict": strict, "extra": extra}


def save_grid(images: torch.Tensor, captions: Sequence[str], path: Path, cols: int = 8, scale: int = 4,
              text_h: int = 26) -> Path:
    """A PNG of images (N, 3, H, W) in [0, 1], each enlarged `scale` x, its caption written below."""
    from PIL import Image, ImageDraw

    n, _, h, w = images.shape
    tile_w, tile_h = w * scale, h * scale
    rows = (n + cols - 1) // cols
    sheet = Image.new("RGB", (cols * (tile_w + 4), rows * (tile_h + text_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for i in range(n):
        x, y = (i % cols) * (tile_w + 4), (i // cols) * (tile_h + text_h)
        arr = (images[i].permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype("uint8")
        sheet.paste(Image.fromarray(arr).resize((tile_w, tile_h), Image.NEAREST), (x, y))
        words, line = captions[i].split(), ""
        lines = []
        for word in words:                       # wrap to the tile width (~6 px per character)
            if len(line) + len(word) + 1 > tile_w // 6 and line:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}".strip()
        draw.multiline_text((x + 1, y + tile_h), "\n".join(lines + [line]), fill="black", spacing=0)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return Path(path)


def score_saved(eval_dir: Path) -> Dict:
    """Re-score a trainer evaluation folder (RUN_DIR/eval/<tag>: PNGs + prompts.jsonl) per tag and
    held-out vs seen; attributes from the shipped scenes prompt sets, else parsed from the prompt."""
    from flowrl.data.prompts import load_prompts
    from flowrl.rewards.scene import parse_caption

    known = {}
    for split in ("train", "test"):                # the shipped rows carry tag and held_out
        ps = load_prompts(f"scenes/{split}")
        known.update({p: m for p, m in zip(ps.prompts, ps.metadata)})
    rows = _saved_rows(Path(eval_dir))
    images = _saved_images(Path(eval_dir), rows)
    rows = [{**r, **(known[r["prompt"]] if r["prompt"] in known else parse_caption(r["prompt"]))} for r in rows]
    reward, strict, extra = scene_measures(images, [r["prompt"] for r in rows], rows)
    return {**summarize(reward, strict, rows), "extra_objects": float(extra.mean())}


def _saved_rows(eval_dir: Path) -> List[dict]:
    """The rows of an evaluation folder's prompts.jsonl ({"index", "image", "prompt", "reward", ...})."""
    return [json.loads(line) for line in (eval_dir / "prompts.jsonl").read_text().splitlines() if line.strip()]


def _saved_images(eval_dir: Path, rows: List[dict]) -> torch.Tensor:
    import numpy as np
    from PIL import Image
    return torch.stack([torch.from_numpy(np.asarray(Image.open(Path(eval_dir) / r["image"]).convert("RGB"),
                                                    dtype=np.float32) / 255).permute(2, 0, 1) for r in rows])


def before_after(before_dir: Path, after_dir: Path, path: Path, per_prompt: int = 4, n: int = 16) -> Path:
    """A PNG comparing two evaluations of one run (same prompts, same noise): one row per prompt for
    the first `n` prompts, its first `per_prompt` samples (fewer if some prompt has fewer) before
    (left) and after (right), captions
    with the reward of each image."""
    rows_b, rows_a = (_saved_rows(Path(d)) for d in (before_dir, after_dir))
    if [r["prompt"] for r in rows_b] != [r["prompt"] for r in rows_a]:
        raise ValueError(f"{before_dir} and {after_dir} hold different prompts: compare two evaluations of one run")
    by_prompt: Dict[str, List[int]] = {}
    for i in sorted(range(len(rows_b)), key=lambda i: rows_b[i]["index"]):
        by_prompt.setdefault(rows_b[i]["prompt"], []).append(i)
    chosen = list(by_prompt.values())[:n]
    k = min([per_prompt] + [len(v) for v in chosen])          # samples per side of every row
    imgs, caps = [], []
    for picked in chosen:
        for rows, d, tag in ((rows_b, before_dir, "base"), (rows_a, after_dir, "RL")):
            sel = [rows[i] for i in picked[:k]]
            imgs.append(_saved_images(Path(d), sel))
            caps += [f"{tag} {r['reward']:.2f}: {r['prompt']}" for r in sel]
    return save_grid(torch.cat(imgs), caps, Path(path), cols=2 * k, text_h=40)


def headroom(reward: torch.Tensor, strict: torch.Tensor, extra: torch.Tensor, per_prompt: int) -> List[Dict]:
    """Best-of-n over per-image measures (N,) = P prompts x `per_prompt` samples, each prompt's samples
    consecutive (as `evaluate` returns them), n = 1, 2, 4, ... K: the plain reward, strict accuracy
    and extra objects of the pick when picking by the plain `scene_geneval` (what RL on it can
    concentrate on, clutter included) and by the clutter-penalised reward (fraction / (1 + extra):
    the honest headroom). -> one dict per (pick, n): the means over prompts and, under "<name>_se",
    their standard errors over prompts."""
    from flowrl.bench import best_of_n, standard_error
    measures = {"reward": reward.view(-1, per_prompt), "strict": strict.view(-1, per_prompt),
                "extra": extra.view(-1, per_prompt)}                                 # (P, K) each
    keys = {"scene_geneval": measures["reward"], "no_extra": measures["reward"] / (1 + measures["extra"])}
    ns = [n for n in (1, 2, 4, 8, 16, 32, 64, 128) if n <= per_prompt]
    out = []
    for name, key in keys.items():
        for n in ns:
            picked = best_of_n(key, measures, n)                     # name -> (P,) per prompt
            out.append({"pick": name, "n": n, **{m: float(v.mean()) for m, v in picked.items()},
                        **{f"{m}_se": standard_error(v) for m, v in picked.items()}})
    return out


def main(argv=None) -> Dict:
    from diffusers import StableDiffusion3Pipeline

    from flowrl.data.prompts import load_prompts

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("directory", nargs="?", default=None)
    ap.add_argument("--split", default="test")
    ap.add_argument("--per-prompt", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=4.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grid", default=None, help="PNG of the first 64 samples (one per prompt)")
    ap.add_argument("--eval-dir", default=None, help="instead: re-score RUN_DIR/eval/<tag> of a run")
    ap.add_argument("--before-after", nargs=2, default=None, metavar=("BASE_DIR", "AFTER_DIR"),
                    help="instead: --grid PNG comparing two evaluations of one run (eval/base, eval/final)")
    ap.add_argument("--num-prompts", type=int, default=16, help="--before-after: rows (prompts) drawn")
    ap.add_argument("--best-of", action="store_true",
                    help="also print best-of-n (n = 1, 2, 4 ... --per-prompt) picked by the reward and by "
                         "the clutter-penalised reward: the headroom in the model's own samples")
    a = ap.parse_args(argv)
    if a.best_of and (a.eval_dir or a.before_after):
        ap.error("--best-of samples the model afresh: drop --eval-dir / --before-after, or drop --best-of")
    if a.before_after:
        print("grid:", before_after(Path(a.before_after[0]), Path(a.before_after[1]),
                                    Path(a.grid or "before_after.png"), a.per_prompt, a.num_prompts))
        return {}
    if a.eval_dir:
        summary = score_saved(Path(a.eval_dir))
        print(json.dumps(summary, indent=1))
        return summary
    if a.directory is None:
        from flowrl.cache import cache_dir
        a.directory = str(cache_dir() / "tiny-t2i")
    pipe = StableDiffusion3Pipeline.from_pretrained(a.directory, local_files_only=True)
    ps = load_prompts(f"scenes/{a.split}")
    rows = [{"prompt": p, **m} for p, m in zip(ps.prompts, ps.metadata)]
    res = evaluate(pipe, rows, a.per_prompt, seed=a.seed, steps=a.steps, guidance=a.guidance)
    if a.grid:
        pick = list(range(0, len(res["rows"]), a.per_prompt))[:64]
        caps = [f"{res['rows'][i]['prompt']} ({float(res['scores'][i]):.2f})" for i in pick]
        print("grid:", save_grid(res["images"][pick], caps, Path(a.grid)))
    summary = {k: v for k, v in res.items() if k not in ("images", "rows", "scores", "strict", "extra")}
    if a.best_of:
        summary["best_of"] = headroom(res["scores"], res["strict"], res["extra"], a.per_prompt)
        print("| pick by | n | reward ± SE over prompts | strict accuracy | extra objects |\n| --- | --- | --- | --- | --- |")
        for h in summary["best_of"]:
            print(f"| {h['pick']} | {h['n']} | {h['reward']:.3f} ± {h['reward_se']:.3f} | {h['strict']:.3f} | "
                  f"{h['extra']:.2f} |")
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
