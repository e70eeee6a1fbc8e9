"""`flowrl annotate ...`: make pairs, serve the labelling page, summarise a label file."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(no_args_is_help=True, help="Label image pairs in a local web page (preferences for DPO).")


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command("pairs")
def pairs(source: Path = typer.Argument(..., help="a run dir (samples its model) or a folder of images + prompts"),
          out: Optional[Path] = typer.Option(None, help="pair folder for a run (default RUN_DIR/pairs)"),
          prompts: Optional[str] = typer.Option(None, help="prompt set / .txt / .jsonl (default: the run's test prompts)"),
          per_prompt: int = typer.Option(2, "--per-prompt", "-k", help="samples per prompt (even): k/2 pairs each"),
          num_prompts: int = typer.Option(0, help="first N prompts only (0: all)"),
          base: bool = typer.Option(False, "--base", help="sample the base model, not the last checkpoint"),
          same_noise: bool = typer.Option(False, "--same-noise", help="one initial noise per pair, SDE sampling (D3PO)"),
          seed: int = typer.Option(0, help="seed of the noise"),
          max_per_prompt: int = typer.Option(0, help="folder mode: at most N pairs per prompt (0: all)")):
    """Write a pair folder (pairs.jsonl + images) for `flowrl annotate serve`."""
    try:
        if (source / "config.yaml").exists():
            from flowrl.serve.pair_maker import run_pairs
            out = out or source / "pairs"
            n = run_pairs(source, out, prompts, per_prompt, base, same_noise, seed, num_prompts)
        elif source.is_dir():
            from flowrl.serve.pair_maker import folder_pairs
            out, n = source, folder_pairs(source, max_per_prompt)
        else:
            _fail(f"{source} is neither a run dir (config.yaml) nor a folder of images")
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        _fail(str(e))
    typer.echo(f"{n} pairs in {out / 'pairs.jsonl'}; label them: flowrl annotate serve {out}")


@app.command("serve")
def serve(folder: Path = typer.Argument(..., help="a pair folder (holds pairs.jsonl)"),
          port: int = typer.Option(8765, help="port on 127.0.0.1"),
          labels: Optional[Path] = typer.Option(None, help="label JSONL (default FOLDER/labels.jsonl)"),
          overlap: float = typer.Option(0.0, help="fraction of pairs shown to several annotators (agreement)"),
          overlap_annotators: int = typer.Option(2, help="annotators per overlapping pair")):
    """Serve the labelling page on http://127.0.0.1:PORT/ (JSON API: flowrl/serve/annotate_app.py)."""
    from flowrl.serve.annotate_app import serve as run
    try:
        run(folder, port, "127.0.0.1", labels, overlap, overlap_annotators)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))


@app.command("stats")
def stats(file: Path = typer.Argument(..., help="a label JSONL written by the page"),
          as_json: bool = typer.Option(False, "--json", help="print JSON")):
    """Counts, tie rate and agreement between annotators of a label file."""
    from flowrl.serve.label_store import label_stats, read_jsonl
    if not file.is_file():
        _fail(f"label file {file} not found")
    try:
        s = label_stats(read_jsonl(file))
    except (ValueError, KeyError) as e:
        _fail(f"{file} is not a label file: {e}")
    if as_json:
        typer.echo(json.dumps(s, indent=2))
        return
    agreement = "n/a (no pair judged twice)" if s["agreement"] is None else \
        f"{s['agreement']:.3f} over {s['agreement_comparisons']} comparisons on {s['overlap_pairs']} pairs"
    typer.echo(f"labels {s['labels']}: a {s['a']}, b {s['b']}, tie {s['tie']}, skip {s['skip']}; "
               f"tie rate {s['tie_rate']:.3f}")
    typer.echo("annotators: " + ", ".join(f"{k} {v}" for k, v in sorted(s["annotators"].items())))
    typer.echo(f"agreement: {agreement}")
