"""The `flowrl` command (Typer). Heavy libraries are imported inside the commands."""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable, List, Optional

import typer

from flowrl.serve.annotate_cli import app as annotate_app

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Fine-tune flow-matching models with rewards (Flow-GRPO and friends).")
visualize_app = typer.Typer(no_args_is_help=True, help="Pictures of runs.")
app.add_typer(visualize_app, name="visualize")
init_app = typer.Typer(no_args_is_help=True, help="Create local model folders (no download).")
app.add_typer(init_app, name="init")
app.add_typer(annotate_app, name="annotate")


def _fail(msg: str) -> None:
    """One line on stderr, `error: MSG` (newlines folded into '; '), and exit code 2."""
    line = "; ".join(part.strip() for part in str(msg).splitlines() if part.strip())
    typer.secho(f"error: {line}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def user_errors(*extra: type) -> Callable:
    """Decorator for every command: a user error (flowrl.errors.UserError, incl. ConfigError and
    CheckpointError; a missing file; a full / read-only disk; or one of `extra`) ends in one line
    and exit 2; anything else keeps its traceback."""
    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            from flowrl.errors import ENVIRONMENT_ERRNOS, UserError, environment_message
            try:
                return fn(*args, **kwargs)
            except typer.Exit:
                raise
            except (UserError, FileNotFoundError, *extra) as e:
                _fail(str(e))
            except OSError as e:
                if e.errno not in ENVIRONMENT_ERRNOS:
                    raise
                _fail(environment_message(e))
        return wrapper
    return deco


def _say(msg: str) -> None:
    """An info line from the main process only (RANK unset or 0 under accelerate launch)."""
    if os.environ.get("RANK", "0") == "0":
        typer.echo(f"[flowrl] {msg}")


@app.command()
@user_errors()
def train(
    config: str = typer.Option(..., "--config", "-c", help="FILE.py:NAME; a bare FILE resolves in config/"),
    set_: List[str] = typer.Option([], "--set", help="override, e.g. --set train.lr=1e-4 (repeatable)"),
    output_dir: Optional[Path] = typer.Option(None, help="run dir (default runs/NAME-TIMESTAMP-PID)"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --output-dir"),
    resume_from: Optional[str] = typer.Option(None, "--resume-from",
                                              help="continue from checkpoint step_N (e.g. when the newest is corrupt)"),
    seed: Optional[int] = typer.Option(None, help="overrides config.seed"),
):
    """Fine-tune a model: `flowrl train --config grpo.py:moons`."""
    from flowrl.config import load_config, resolve_config_path
    from flowrl.rundir import check_output_dir

    overrides = list(set_) + ([f"seed={seed}"] if seed is not None else [])
    if (resume or resume_from) and output_dir is None:
        _fail("--resume needs --output-dir: the run dir to continue")
    _say(f"config {resolve_config_path(config)}")
    cfg = load_config(config, overrides)
    from flowrl.rundir import default_run_dir
    run_dir = output_dir or default_run_dir(config.partition(":")[2] or Path(config.partition(":")[0]).stem)
    check_output_dir(run_dir)
    from flowrl.trainer import Trainer
    Trainer(cfg, run_dir, resume=resume, resume_from=resume_from).train()


@app.command("serve-reward")
def serve_reward(
    rewards: List[str] = typer.Argument(..., help="NAME or NAME=WEIGHT (a weighted sum), e.g. jpeg_compressibility"),
    port: int = typer.Option(8765, help="TCP port"),
    host: str = typer.Option("127.0.0.1", help="address to bind (0.0.0.0: every interface)"),
    option: List[str] = typer.Option([], "--option", help="REWARD.KEY=VALUE, a reward's option (repeatable)"),
    metric: List[str] = typer.Option([], "--metric", help="a reward computed and returned with weight 0"),
    import_: List[str] = typer.Option([], "--import", help="FILE.py or module registering more rewards"),
    device: str = typer.Option("cpu", help="torch device of the rewards, e.g. cuda:0"),
    max_batch: int = typer.Option(64, help="most samples per reward call (concurrent requests merge)"),
    max_request_mb: float = typer.Option(64.0, help="largest request body accepted (413 above)"),
    threads: int = typer.Option(0, help="torch CPU threads (0: torch's default)"),
):
    """Serve registered rewards over HTTP for training jobs (`--set reward.weights.remote=1
    --set reward.options.remote.url=http://HOST:PORT`): POST /compute, GET /health."""
    from flowrl.serve.reward_app import build_app, serve
    if threads > 0:
        import torch
        torch.set_num_threads(threads)
    try:
        app_, weights = build_app(rewards, option, metric, import_, device, max_batch, int(max_request_mb * 2**20))
    except (ValueError, KeyError, TypeError, ImportError, FileNotFoundError) as e:
        _fail(str(e).strip("'\""))
    serve(app_, host, port, weights)


@app.command("eval-diversity")
@user_errors(ValueError, ImportError)
def eval_diversity(
    run_dir: Optional[Path] = typer.Argument(None, help="a run dir: the base model and every checkpoint"),
    samples: Optional[Path] = typer.Option(None, "--samples", help="an .npz with x: (N, D) or (N, 3, H, W)"),
    output: Optional[Path] = typer.Option(None, help="JSON (default RUN_DIR/diversity.json or X_diversity.json)"),
    num_samples: Optional[int] = typer.Option(None, "--num-samples", "-n", help="default: config.eval.num_samples"),
    encoder: str = typer.Option("auto", help="auto | raw | pixels | efficientnet | clip"),
    clip_path: Optional[str] = typer.Option(None, help="local CLIPModel folder for --encoder clip"),
    kernel: str = typer.Option("auto", help="Vendi kernel: auto | gaussian | cosine"),
    bandwidth: Optional[float] = typer.Option(None, help="Gaussian width (default: median rule on the base)"),
    entropy: bool = typer.Option(True, "--entropy/--no-entropy", help="flow entropy (run dirs)"),
    probes: int = typer.Option(1, "--probes", help="Hutchinson probes per step (images)"),
    entropy_steps: int = typer.Option(20, help="ODE steps of the entropy integral"),
    entropy_samples: Optional[int] = typer.Option(None, help="default: all points / 64 images"),
    reward: bool = typer.Option(True, "--reward/--no-reward", help="score with the run's reward"),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="checkpoints' EMA weights when saved"),
    batch_size: Optional[int] = typer.Option(None, help="per forward pass (default config.eval.batch_size)"),
    max_samples: int = typer.Option(4096, "--max-samples", min=0,
                                    help="Vendi / RKE kernels are N x N: score a fixed random subset of at most "
                                         "this many samples (0 = all; 4096 take ~134 MB a matrix)"),
):
    """Vendi / RKE diversity, reward and entropy per checkpoint: `flowrl eval-diversity RUN_DIR`."""
    from flowrl.diversity_eval import Settings, run_eval_diversity
    if (run_dir is None) == (samples is None):
        _fail("give either a RUN_DIR or --samples FILE.npz (not both)")
    settings = Settings(num_samples=num_samples, encoder=encoder, clip_path=clip_path, kernel=kernel,
                        bandwidth=bandwidth, entropy=entropy, num_probes=probes, entropy_steps=entropy_steps,
                        entropy_samples=entropy_samples, reward=reward, use_ema=ema, batch_size=batch_size,
                        max_samples=max_samples)
    run_eval_diversity(samples or run_dir, samples is not None, settings, output)


@visualize_app.command("checkpoints")
@user_errors()
def visualize_checkpoints(run_dir: Path = typer.Argument(..., help="a run dir written by flowrl train"),
                          out: Optional[Path] = typer.Option(None, help="folder for the PNGs (default RUN_DIR/plots)"),
                          compare: List[Path] = typer.Option([], "--compare", help="another run dir to compare (repeatable)")):
    """Samples per checkpoint, reward / diversity curves, trade-off (PNGs) and a report.html."""
    from flowrl.plotting import plot_run
    from flowrl.report import write_report
    for d in [run_dir, *compare]:
        if not (d / "metrics.jsonl").exists():
            _fail(f"{d} is not a run dir (no metrics.jsonl)")
    paths = plot_run(run_dir, out or run_dir / "plots", compare)
    for path in paths + [write_report(run_dir, out or run_dir / "plots", paths, compare)]:
        typer.echo(str(path))


def _new_folder(directory: Path) -> None:
    """`flowrl init` writes only into an absent or empty folder."""
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        _fail(f"{directory} already exists and is not an empty folder; give a new folder")


@init_app.command("tiny-sd3")
@user_errors()
def init_tiny_sd3(directory: Path = typer.Argument(..., help="folder to create (absent or empty)"),
                  seed: int = typer.Option(0, help="seed of the random weights")):
    """Write a tiny RANDOM StableDiffusion3Pipeline folder (~1 MB) for tests and smoke runs; use it with
    `--set model.path=DIR` (model.path "" builds one in the flowrl cache by itself)."""
    _new_folder(directory)
    from flowrl.policies.sd3 import ensure_tiny_sd3
    typer.echo(str(ensure_tiny_sd3(directory, seed=seed)))


@init_app.command("tiny-flux")
@user_errors()
def init_tiny_flux(directory: Path = typer.Argument(..., help="folder to create (absent or empty)"),
                   seed: int = typer.Option(0, help="seed of the random weights")):
    """Write a tiny RANDOM FluxPipeline folder (~1 MB) for tests and smoke runs; use it with
    `--set model.path=DIR` (model.path "" builds one in the flowrl cache by itself)."""
    _new_folder(directory)
    from flowrl.policies.flux import ensure_tiny_flux
    typer.echo(str(ensure_tiny_flux(directory, seed=seed)))


@init_app.command("tiny-t2i")
@user_errors()
def init_tiny_t2i(directory: Optional[Path] = typer.Argument(None, help="also copy the model here (absent or empty)"),
                  seed: int = typer.Option(0, help="seed of the data, weights and training"),
                  progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bar"),
                  threads: int = typer.Option(0, help="torch CPU threads (0: torch's default; 1 is faster "
                                                      "on a machine busy with other jobs)")):
    """Train the scenes text-to-image model (a real AutoencoderKL + SD3Transformer2DModel, GenEval in
    miniature; ~5-10 min on 2 CPU cores) into the flowrl cache (FLOWRL_CACHE/tiny-t2i), once: later
    calls reuse it. `--config grpo.py:tiny_geneval` fine-tunes it with the scene_geneval reward."""
    import shutil

    if directory is not None:
        _new_folder(directory)
    from dataclasses import replace

    from flowrl.scenes.t2i_parts import T2IConfig
    from flowrl.scenes.train_t2i import STAMP_FILE, ensure_tiny_t2i
    if threads > 0:
        import torch
        torch.set_num_threads(threads)
    cached = ensure_tiny_t2i(cfg=replace(T2IConfig(), seed=seed), progress=progress)
    if directory is not None:
        directory.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(cached, directory, dirs_exist_ok=True)
    typer.echo((cached / STAMP_FILE).read_text())
    typer.echo(str(directory or cached))


def main() -> None:
    app()
