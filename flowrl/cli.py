"""The `flowrl` command (Typer). Heavy libraries are imported inside the commands."""
from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Fine-tune flow-matching models with rewards (Flow-GRPO and friends).")
visualize_app = typer.Typer(no_args_is_help=True, help="Pictures of runs.")
app.add_typer(visualize_app, name="visualize")


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command()
def train(
    config: str = typer.Option(..., "--config", "-c", help="FILE.py:NAME; a bare FILE resolves in config/"),
    set_: List[str] = typer.Option([], "--set", help="override, e.g. --set train.lr=1e-4 (repeatable)"),
    output_dir: Optional[Path] = typer.Option(None, help="run dir (default runs/NAME-TIMESTAMP)"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --output-dir"),
    seed: Optional[int] = typer.Option(None, help="overrides config.seed"),
):
    """Fine-tune a model: `flowrl train --config grpo.py:moons`."""
    from flowrl.checkpoint import CheckpointError
    from flowrl.config import ConfigError, load_config

    overrides = list(set_) + ([f"seed={seed}"] if seed is not None else [])
    try:
        cfg = load_config(config, overrides)
    except (ConfigError, FileNotFoundError) as e:
        _fail(str(e))
    if resume and output_dir is None:
        _fail("--resume needs --output-dir: the run dir to continue")
    name = config.partition(":")[2] or Path(config.partition(":")[0]).stem
    run_dir = output_dir or Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    from flowrl.trainer import Trainer
    try:
        Trainer(cfg, run_dir, resume=resume).train()
    except (ConfigError, CheckpointError, FileNotFoundError) as e:
        _fail(str(e))


@visualize_app.command("checkpoints")
def visualize_checkpoints(run_dir: Path = typer.Argument(..., help="a run dir written by flowrl train"),
                          out: Optional[Path] = typer.Option(None, help="folder for the PNGs (default RUN_DIR/plots)")):
    """Before/after samples coloured by reward and the reward curve, as PNGs."""
    from flowrl.plotting import plot_run
    if not (run_dir / "metrics.jsonl").exists():
        _fail(f"{run_dir} is not a run dir (no metrics.jsonl)")
    for path in plot_run(run_dir, out or run_dir / "plots"):
        typer.echo(str(path))


def main() -> None:
    app()
