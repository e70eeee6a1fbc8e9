"""Online human feedback with a scripted annotator: `dpo.py:human_online_tiny_geneval` (or any
human_online config) trains while a thread labels each epoch's pairs through the page's JSON API,
preferring the image with the higher scene_geneval (moons: P(upper moon)). Prints the held-out reward
before / after, labels used and the wall time.

    python scripts/bench_human_online.py --epochs 10 --run-dir runs/human_online_t2i
"""
import argparse
import json
import socket
import time
from pathlib import Path

from flowrl.config import load_config
from flowrl.serve.scripted_annotator import ScriptedAnnotator, moons_scorer, scene_scorer
from flowrl.trainer import Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="dpo.py:human_online_tiny_geneval")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--run-dir", type=Path, default=Path("runs") / f"human_online-{time.strftime('%Y%m%d-%H%M%S')}")
    ap.add_argument("--set", action="append", default=[], help="extra config overrides")
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = load_config(args.config, [f"num_epochs={args.epochs}", f"algorithm.port={port}", "algorithm.poll_s=0.1",
                                    "logging.progress=False", *args.set])
    scorer = scene_scorer if "scene_geneval" in cfg.reward.weights else moons_scorer
    t0 = time.time()
    trainer = Trainer(cfg, args.run_dir)
    bot = ScriptedAnnotator(f"http://127.0.0.1:{port}", args.run_dir / "human", scorer, poll_s=0.05,
                            tie_margin=0.0 if scorer is scene_scorer else 0.5)
    bot.start()
    summary = trainer.train()
    bot.stop()
    rows = [json.loads(x) for x in (args.run_dir / "metrics.jsonl").read_text().splitlines()]
    every = [json.loads(x) for x in (args.run_dir / "human" / "labels.jsonl").read_text().splitlines()]
    labels = sum(r["preferred"] in ("a", "b") for r in every)
    waits = sum(r.get("human_wait_s", 0) for r in rows)
    print(f"{args.config}: {args.epochs} epochs, wall {time.time() - t0:.0f} s (labelling waits {waits:.0f} s)")
    print(f"held-out reward {summary['reward_before']:.3f} -> {summary['reward_after']:.3f}; "
          f"{bot.labelled} pairs labelled by the scripted annotator, {labels} of them a or b (the rest ties)")
    accs = [r["eval_scene_accuracy"] for r in rows if "eval_scene_accuracy" in r]
    if len(accs) >= 2:
        print(f"strict accuracy {accs[0]:.3f} -> {accs[-1]:.3f}")


if __name__ == "__main__":
    main()
