"""Train the tiny text-to-image model on the scenes and save it as a StableDiffusion3Pipeline folder.

    1. render `num_scenes` scenes of the TRAIN prompts (tags drawn uniformly, then a prompt);
    2. train the AutoencoderKL (MSE on [-1, 1] pixels, object pixels weighted x5, + kl_weight x KL);
       latents = posterior means, normalised with SD3's convention z = (mean - shift_factor) x
       scaling_factor (factors measured on the data and written into the VAE config);
    3. encode every train caption and "" once with the pipeline's own encode_prompt (frozen CLIP/T5);
    4. train the SD3Transformer2DModel by flow matching, the convention of diffusers' SD3 pipeline and
       FlowMatchEulerDiscreteScheduler (timesteps = sigmas x 1000; step x' = x + (sigma' - sigma) v):
       x_sigma = (1 - sigma) x0 + sigma eps, target v = eps - x0, sigma = shift(sigmoid(N(0, 1)))
       (SD3's logit-normal), timestep = sigma x 1000; captions dropped to "" with p = cfg_dropout;
       AdamW, linear warm-up then cosine decay to 0.1 x lr, EMA of the weights (saved);
    5. save_pretrained: `StableDiffusion3Pipeline.from_pretrained(DIR)` loads it (pass
       max_sequence_length=16 when sampling: the T5 length it was trained with).

`ensure_tiny_t2i()` builds it once into flowrl.cache.cache_dir()/tiny-t2i (temp folder, renamed).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from flowrl.scenes.generator import TAGS, make_scene
from flowrl.scenes.promptsets import split
from flowrl.scenes.t2i_parts import T2IConfig, pipeline

CACHE_NAME = "tiny-t2i"
STAMP_FILE = "flowrl_build.json"
Tick = Callable[[str, float], None]    # tick(phase, loss): one optimizer step done


# -------------------------------------------------------------------------------------- data
def scene_dataset(n: int, side: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor, List[str]]:
    """-> images (n, 3, side, side) in [0, 1], prompt index (n,) long, the train prompts. Each scene
    picks a tag uniformly, then one of that tag's train prompts; scene i uses seed (seed, i)."""
    rows = split()["train"]
    by_tag = {t: [i for i, r in enumerate(rows) if r["tag"] == t] for t in TAGS}
    rng = np.random.default_rng(seed)
    idx = [int(rng.choice(by_tag[TAGS[int(rng.integers(len(TAGS)))]])) for _ in range(n)]
    images = torch.stack([make_scene(rows[k], seed * 1_000_003 + i, side).image for i, k in enumerate(idx)])
    return images, torch.tensor(idx), [r["prompt"] for r in rows]


def _lr_factor(step: int, warmup: int) -> float:
    return min(1.0, (step + 1) / max(1, warmup))


def _cosine(step: int, total: int, floor: float = 0.1) -> float:
    """Cosine decay from 1 to `floor` over `total` steps."""
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * step / max(1, total)))


# --------------------------------------------------------------------------------------- VAE
def vae_loss(vae, x: torch.Tensor, kl_weight: float, gen: torch.Generator) -> torch.Tensor:
    """x (B, 3, H, W) in [-1, 1] -> weighted MSE of the reconstruction of a posterior sample + KL.
    Object pixels (saturation > 0.2) weigh 5x: they are ~15 % of the image but all of the reward."""
    post = vae.encode(x).latent_dist
    z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
    rec = vae.decode(z).sample
    img = (x + 1) / 2
    sat = (img.amax(1) - img.amin(1)) / img.amax(1).clamp_min(1e-3)
    weight = 1 + 4 * (sat > 0.2).float().unsqueeze(1)
    kl = 0.5 * (post.mean ** 2 + post.var - 1 - post.logvar).mean()
    return (weight * (rec - x) ** 2).mean() + kl_weight * kl


def train_vae(vae, images: torch.Tensor, cfg: T2IConfig, tick: Tick) -> float:
    """AdamW on random batches of `images` (N, 3, H, W) in [0, 1] for cfg.vae_steps; -> last loss."""
    vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    loss = torch.tensor(float("nan"))
    for step in range(cfg.vae_steps):
        for group in opt.param_groups:
            group["lr"] = cfg.vae_lr * _lr_factor(step, cfg.warmup) * (1 - step / cfg.vae_steps) ** 0.5
        x = images[torch.randint(len(images), (cfg.vae_batch,), generator=gen)] * 2 - 1
        loss = vae_loss(vae, x, cfg.kl_weight, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        tick("vae", loss.item())
    vae.eval().requires_grad_(False)
    return loss.item()


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Posterior means of `images` (N, 3, H, W) in [0, 1], then set the VAE config's shift_factor
    (mean) and scaling_factor (1 / std) and return the normalised latents (N, C, h, w), ~N(0, 1)."""
    means = torch.cat([vae.encode(images[i:i + batch] * 2 - 1).latent_dist.mean
                       for i in range(0, len(images), batch)])
    shift, scale = float(means.mean()), float(1.0 / means.std())
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    return (means - shift) * scale


# ------------------------------------------------------------------------------- transformer
@torch.no_grad()
def encode_captions(pipe, prompts: List[str], max_length: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The pipeline's own encode_prompt of `prompts` + [""] -> embeds (P+1, L, D), pooled (P+1, Dp);
    row P is the empty prompt (classifier-free guidance's unconditional branch)."""
    emb, _, pooled, _ = pipe.encode_prompt(prompt=list(prompts) + [""], prompt_2=None, prompt_3=None,
                                           device="cpu", do_classifier_free_guidance=False,
                                           max_sequence_length=max_length)
    return emb.float(), pooled.float()


def flow_matching_loss(model, x0: torch.Tensor, emb: torch.Tensor, pooled: torch.Tensor, shift: float,
                       gen: torch.Generator) -> torch.Tensor:
    """MSE(v, eps - x0) at x_sigma = (1 - sigma) x0 + sigma eps, sigma = shift(sigmoid(N(0, 1))),
    timestep = sigma x 1000 (as StableDiffusion3Pipeline feeds it). x0: (B, C, h, w) normalised."""
    u = torch.sigmoid(torch.randn(x0.shape[0], generator=gen))
    sigma = shift * u / (1 + (shift - 1) * u)
    eps = torch.randn(x0.shape, generator=gen)
    s = sigma.view(-1, 1, 1, 1)
    v = model(hidden_states=(1 - s) * x0 + s * eps, timestep=sigma * 1000, encoder_hidden_states=emb,
              pooled_projections=pooled, return_dict=False)[0]
    return ((v - (eps - x0)) ** 2).mean()


def train_transformer(model, latents: torch.Tensor, prompt_idx: torch.Tensor, emb: torch.Tensor,
                      pooled: torch.Tensor, cfg: T2IConfig, tick: Tick) -> float:
    """Flow matching on (latents (N, C, h, w), caption row prompt_idx (N,)) with caption dropout to the
    last row of emb/pooled (""); ends with the EMA weights loaded into `model`. -> last loss."""
    model.train().requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    empty, loss = emb.shape[0] - 1, torch.tensor(float("nan"))
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * _lr_factor(step, cfg.warmup) * _cosine(step, cfg.steps)
        idx = torch.randint(len(latents), (cfg.batch,), generator=gen)
        rows = torch.where(torch.rand(cfg.batch, generator=gen) < cfg.cfg_dropout, empty, prompt_idx[idx])
        loss = flow_matching_loss(model, latents[idx], emb[rows], pooled[rows], cfg.shift, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.lerp_(p.detach(), 1 - decay)
        tick("transformer", loss.item())
    with torch.no_grad():
        for e, p in zip(ema, params):
            p.copy_(e)
    model.eval().requires_grad_(False)
    return loss.item()


# ------------------------------------------------------------------------------------- build
def _progress(cfg: T2IConfig, show: bool) -> Tuple[Tick, Callable[[], None]]:
    """A tqdm bar over every optimizer step (VAE + transformer) -> (tick, close)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.vae_steps + cfg.steps, disable=not show, desc="tiny-t2i", unit="step")

    def tick(phase: str, loss: float) -> None:
        bar.set_postfix_str(f"{phase} loss {loss:.4f}", refresh=False)
        bar.update(1)
    return tick, bar.close


def build_tiny_t2i(out_dir: Path, cfg: T2IConfig = T2IConfig(), progress: bool = True) -> Dict:
    """Train every component and save_pretrained into `out_dir`; -> the build record (config, losses,
    seconds per phase), also written to out_dir/flowrl_build.json."""
    times, t0 = {}, time.time()
    torch.manual_seed(cfg.seed)
    pipe = pipeline(cfg)
    images, prompt_idx, prompts = scene_dataset(cfg.num_scenes, cfg.side, cfg.seed)
    times["data_s"] = time.time() - t0
    tick, close = _progress(cfg, progress)
    try:
        vae_loss_end = train_vae(pipe.vae, images, cfg, tick)
        times["vae_s"] = time.time() - t0 - sum(times.values())
        latents = encode_latents(pipe.vae, images)
        emb, pooled = encode_captions(pipe, prompts, cfg.max_length)
        times["encode_s"] = time.time() - t0 - sum(times.values())
        tr_loss_end = train_transformer(pipe.transformer, latents, prompt_idx, emb, pooled, cfg, tick)
        times["transformer_s"] = time.time() - t0 - sum(times.values())
    finally:
        close()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(out), safe_serialization=True)
    record = {"config": cfg.to_json(), "source": source_digest(), "vae_loss": vae_loss_end,
              "flow_matching_loss": tr_loss_end, "seconds": {**times, "total_s": time.time() - t0},
              "torch_threads": torch.get_num_threads()}
    (out / STAMP_FILE).write_text(json.dumps(record, indent=1))
    return record


def source_digest() -> str:
    """Hash of the code that shapes the model (generator, prompt sets, parts, this trainer)."""
    import hashlib

    from flowrl.scenes import generator, promptsets, t2i_parts

    files = [generator.__file__, promptsets.__file__, t2i_parts.__file__, __file__]
    return hashlib.sha256(b"".join(Path(f).read_bytes() for f in files)).hexdigest()[:16]


def is_current(folder: Path, cfg: T2IConfig) -> bool:
    """True if `folder` holds a complete build of `cfg` by the current code."""
    stamp = Path(folder) / STAMP_FILE
    if not (Path(folder) / "model_index.json").exists() or not stamp.exists():
        return False
    record = json.loads(stamp.read_text())
    return record.get("config") == cfg.to_json() and record.get("source") == source_digest()


def ensure_tiny_t2i(target: Optional[Path] = None, cfg: T2IConfig = T2IConfig(), progress: bool = True) -> Path:
    """`target` (default cache_dir()/tiny-t2i) holding a current build, building it if needed: into a
    temporary sibling folder, renamed into place, so no reader ever sees half a model."""
    from flowrl.cache import build_folder_atomically, cache_dir

    target = Path(target) if target is not None else cache_dir() / CACHE_NAME
    return build_folder_atomically(target, lambda tmp: build_tiny_t2i(tmp, cfg, progress),
                                   lambda d: is_current(d, cfg))
