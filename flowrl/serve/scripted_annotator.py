"""A scripted "annotator" for tests and benchmarks: a thread that polls the JSON API like a person,
scores both samples of each pair with a reward and prefers the higher one (a tie within `tie_margin`).
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable, Dict, Tuple

from flowrl.serve.label_store import read_jsonl

Scorer = Callable[[Dict, Path], Tuple[float, float]]    # (pair record, pair folder) -> (r_a, r_b)


def choose(r_a: float, r_b: float, tie_margin: float = 0.0) -> str:
    """'a' | 'b' | 'tie' for rewards r_a, r_b."""
    if abs(r_a - r_b) <= tie_margin:
        return "tie"
    return "a" if r_a > r_b else "b"


def moons_scorer(record: Dict, folder: Path) -> Tuple[float, float]:
    """P(upper moon) of the two .pt samples of a pair (the 2-D moons flow)."""
    import torch

    from flowrl.rewards import build_reward
    if not hasattr(moons_scorer, "fn"):
        moons_scorer.fn = build_reward({"moons_unlearning": 1.0}, {}, torch.device("cpu"))
    x = torch.stack([torch.load(folder / record[f"sample_{s}"], weights_only=True) for s in "ab"])
    r, _ = moons_scorer.fn(x, ["", ""], [{}, {}])
    return float(r[0]), float(r[1])


def scene_scorer(record: Dict, folder: Path) -> Tuple[float, float]:
    """scene_geneval of the two PNGs of a pair (what a person sees), for the tiny text-to-image world."""
    from flowrl.algorithms.preferences import read_sample
    from flowrl.rewards.scene import scene_scores
    import torch
    imgs = torch.stack([read_sample(folder / record[f"image_{s}"]) for s in "ab"])
    meta = record.get("metadata") or {}
    r, _ = scene_scores(imgs, [record["prompt"]] * 2, [meta, meta])
    return float(r[0]), float(r[1])


class ScriptedAnnotator(threading.Thread):
    """Labels every pair it is given through the HTTP API until stop() (bounded by max_seconds)."""

    def __init__(self, url: str, folder: Path, scorer: Scorer, name: str = "bot", tie_margin: float = 0.0,
                 poll_s: float = 0.2, max_seconds: float = 600.0, max_labels: int = 0):
        super().__init__(daemon=True)
        self.url, self.folder, self.scorer, self.who = url.rstrip("/"), Path(folder), scorer, name
        self.tie_margin, self.poll_s, self.max_seconds = tie_margin, poll_s, max_seconds
        self.max_labels = max_labels          # stop after this many labels (0: never)
        self.stopped, self.labelled, self.errors = threading.Event(), 0, []

    def run(self) -> None:
        import httpx
        end = time.time() + self.max_seconds
        with httpx.Client(timeout=10) as client:
            while not self.stopped.is_set() and time.time() < end and not (
                    self.max_labels and self.labelled >= self.max_labels):
                try:
                    self._one(client)
                except Exception as e:   # noqa: BLE001  (server starting / restarting: try again)
                    self.errors.append(repr(e))
                    self.stopped.wait(self.poll_s)

    def _one(self, client) -> None:
        got = client.get(f"{self.url}/api/next", params={"annotator": self.who}).json()
        pair = got.get("pair")
        if pair is None:
            self.stopped.wait(self.poll_s)
            return
        records = {r["id"]: r for r in read_jsonl(self.folder / "pairs.jsonl")}
        r_a, r_b = self.scorer(records[pair["pair_id"]], self.folder)
        body = {"annotator": self.who, "pair_id": pair["pair_id"], "shown_order": pair["shown_order"],
                "preferred": choose(r_a, r_b, self.tie_margin)}
        client.post(f"{self.url}/api/label", json=body).raise_for_status()
        self.labelled += 1

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=10)
