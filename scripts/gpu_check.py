"""GPU check: one Flow-GRPO epoch with LoRA on SD3.5-medium- and FLUX.1-dev-shaped transformers with
RANDOM weights (nothing is downloaded), at 512 px, through the one trainer.

    python scripts/gpu_check.py                  # on a CUDA machine (bf16; ~24 GB for FLUX's weights)
    python scripts/gpu_check.py --tiny           # dry run of the same code path on CPU, tiny shapes
    python scripts/gpu_check.py --models flux    # one of them

Per model: 16 images per epoch (2 sampling batches of 8, group 8), training minibatches of 4, LoRA
r 32, bf16, max_sequence_length 128; SD3.5: 10 SDE steps with CFG 4.5; FLUX: 6 steps, guidance 3.5
as input. A warm-up epoch, then one timed epoch. For each model prints images/s, peak GPU memory next to the trainer's memory estimate, and the
overhead ratio of scripts/bench_grpo_step.py (epoch time / pure transformer time). The transformer
has the real architecture and size (SD3.5-medium: 24 blocks, dual attention 0..12, RMS QK-norm,
pos_embed_max_size 384; FLUX.1-dev: 19 double + 38 single blocks, 3072 wide, guidance input); text
encoders and VAE are small random stand-ins with the real output widths (T5 4096, pooled 2048/768).
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_grpo_step import pure_model_seconds, sync  # noqa: E402

from flowrl.config import load_config  # noqa: E402
from flowrl.registry import POLICIES  # noqa: E402

SD35_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                   attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                   caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=384,
                   qk_norm="rms_norm", dual_attention_layers=tuple(range(13)))
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                guidance_embeds=True, axes_dims_rope=(16, 56, 56))
# (experiment, text widths of the stand-in encoders, full-size transformer config)
MODELS = {"sd35": ("grpo.py:tiny_sd35", dict(clip_dim=1024, t5_dim=4096), SD35_MEDIUM),
          "flux": ("grpo.py:tiny_flux", dict(clip_dim=768, t5_dim=4096), FLUX_DEV)}


def random_pipeline(kind: str, tiny: bool, folder: Path, dtype: torch.dtype, device: torch.device):
    """The pipeline with random weights: the tiny one (`tiny`), or small random text encoders/VAE
    with the real widths around a full-size random transformer built directly on `device`."""
    from diffusers import FluxPipeline, FluxTransformer2DModel, SD3Transformer2DModel, StableDiffusion3Pipeline

    from flowrl.policies.tiny_flux import build_tiny_flux
    from flowrl.policies.tiny_sd3 import build_tiny_sd35, build_tiny_sd3
    _, widths, full = MODELS[kind]
    if tiny:
        (build_tiny_sd35 if kind == "sd35" else build_tiny_flux)(folder)
    elif kind == "sd35":
        build_tiny_sd3(folder, text_layers=1, **widths)
    else:
        build_tiny_flux(folder, text_layers=1, **widths)
    cls = StableDiffusion3Pipeline if kind == "sd35" else FluxPipeline
    pipe = cls.from_pretrained(str(folder))
    if not tiny:
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                pipe.transformer = (SD3Transformer2DModel if kind == "sd35" else FluxTransformer2DModel)(**full)
        finally:
            torch.set_default_dtype(default)
    for name in ("transformer", "text_encoder", "text_encoder_2", "text_encoder_3"):
        if getattr(pipe, name, None) is not None:
            getattr(pipe, name).to(dtype).requires_grad_(False).eval()
    pipe.vae.requires_grad_(False).eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def register(kind: str, tiny: bool, workdir: Path) -> str:
    """A policy entry `gpu_check_<kind>` building the random pipeline (the registry's extension point)."""
    from flowrl.policies.flux import FluxPolicy
    from flowrl.policies.lora import attach_lora
    from flowrl.policies.sd3 import SD3Policy
    name = f"gpu_check_{kind}"

    def factory(runtime, lora_rank, lora_alpha, lora_targets, resolution, max_sequence_length,
                gradient_checkpointing=False, guidance=1.0, **_):
        pipe = random_pipeline(kind, tiny, workdir / kind, runtime.weight_dtype, runtime.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(runtime.seed)
            attach_lora(pipe.transformer, lora_rank, lora_alpha, tuple(lora_targets))
        if gradient_checkpointing:
            pipe.transformer.enable_gradient_checkpointing()
        pipe.to(runtime.device)
        cls = SD3Policy if kind == "sd35" else FluxPolicy
        return cls(pipe, runtime.device, runtime.weight_dtype, resolution, max_sequence_length, guidance)
    if name not in POLICIES.names():
        POLICIES.register(name)(factory)
    return name


def check(kind: str, tiny: bool, workdir: Path, extra) -> dict:
    from flowrl.trainer import Trainer
    experiment = MODELS[kind][0]
    big = [] if tiny else ["model.resolution=512", "mixed_precision=bf16", "model.max_sequence_length=128",
                           "sample.batch_size=8", "train.batch_size=4", "sample.group_size=8", "model.lora_rank=32",
                           "model.lora_alpha=64", "cpu_threads=0"]
    small = ["model.resolution=32", "model.max_sequence_length=16", "sample.batch_size=4", "train.batch_size=4",
             "sample.group_size=4"] if tiny else []
    steps = ["sample.num_steps=10", "sample.guidance_scale=4.5"] if kind == "sd35" else ["sample.num_steps=6"]
    cfg = load_config(experiment, ["logging.progress=False", "checkpoint.every=0", "eval.every=0",
                                   "sample.num_batches_per_epoch=2", f"model.name={register(kind, tiny, workdir)}"]
                      + big + small + steps + list(extra))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    tr = Trainer(cfg, workdir / f"run_{kind}")
    kl = getattr(tr.algorithm, "beta", 0) > 0
    tr.epoch(0)                                       # warm-up
    sync()
    t = time.perf_counter()
    row = tr.epoch(1)
    sync()
    wall = time.perf_counter() - t
    pure = pure_model_seconds(tr, tr.step_settings(1), kl)
    images = cfg.sample.batch_size * cfg.sample.num_batches_per_epoch
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if torch.cuda.is_available() else None
    out = {"model": kind, "resolution": cfg.model.resolution, "images_per_epoch": images, "epoch_s": wall,
           "images_per_s": images / wall, "overhead_ratio": wall / pure, "peak_gib": peak,
           "reward_mean": row["reward_mean"], "trainable_params": sum(p.numel() for p in tr.params)}
    print(f"[gpu_check] {kind} {cfg.model.resolution} px on {tr.acc.device}: {out['images_per_s']:.2f} images/s, "
          f"epoch {wall:.2f} s, overhead ratio {out['overhead_ratio']:.3f}, peak memory "
          f"{'n/a (CPU)' if peak is None else f'{peak:.2f} GiB'}", flush=True)
    tr.acc.free_memory()            # accelerate keeps references to the prepared model and optimizer
    del tr
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="dry run on tiny shapes (works on CPU)")
    ap.add_argument("--models", nargs="+", default=["sd35", "flux"], choices=sorted(MODELS))
    ap.add_argument("--set", action="append", default=[], help="extra config overrides")
    a = ap.parse_args(argv)
    if not a.tiny and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on a GPU machine, or `--tiny` for a CPU dry run of "
              "the same code path", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as d:
        results = [check(k, a.tiny, Path(d), a.set) for k in a.models]
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
