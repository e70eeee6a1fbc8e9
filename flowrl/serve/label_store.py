"""The pair pool and label log behind `flowrl annotate serve` (no web code, no torch).

A pair folder holds `pairs.jsonl`, one pair per line:
    {"id": str, "prompt": str, "image_a": path, "image_b": path, ...}   (paths relative to the folder;
extra keys - "sample_a"/"sample_b" latents, "epoch", "metadata" - are copied into the labels).
Labels are appended to `labels.jsonl` (default: in the pair folder), one label per line, the fields of
`dpo.py:human` (prompt, image_a, image_b, preferred) plus pair_id, annotator, time, shown_order:
    {"prompt", "image_a", "image_b", "preferred": "a" | "b" | "tie" | "skip", "pair_id",
     "annotator", "time": ISO-8601 UTC, "shown_order": "ab" | "ba" (left image first), ...}
Each line is ONE os.write() on an O_APPEND descriptor followed by fsync: a label acknowledged to a
client is on disk, and a killed server never leaves half a line. Undo rewrites the file atomically
(temporary file, fsync, rename). Restarting reads the log back and continues.

Assignment: each pair has a capacity of 1 label, or `overlap_annotators` labels from distinct
annotators for the fraction `overlap` of pairs picked by a hash of the id (to measure agreement).
next_pair() leases a pair to an annotator (lease_seconds) so concurrent annotators never get the same
pair beyond its capacity; asking again returns the same leased pair.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from itertools import combinations
from pathlib import Path
from typing import Dict, List, Optional, Tuple

CHOICES = ("a", "b", "tie", "skip")
ORDERS = ("ab", "ba")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


class LabelError(ValueError):
    """A request the store refuses; `status` is the HTTP status to answer with (400, 404, 409)."""

    def __init__(self, msg: str, status: int = 400):
        super().__init__(msg)
        self.status = status


def unit_hash(*parts: str) -> float:
    """A deterministic number in [0, 1) from strings (sha1): which pairs overlap, which side is left."""
    h = hashlib.sha1("\x1f".join(parts).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2 ** 64


def read_jsonl(path: Path) -> List[dict]:
    """Complete lines of a JSONL file (a line still being written, without its newline, is left out)."""
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.split("\n")[:-1]            # the part after the last newline is incomplete
    return [json.loads(s) for s in lines if s.strip()]


def append_line(fd: int, row: dict) -> None:
    """One JSON line in ONE write() on an O_APPEND fd, then fsync: all of it on disk, or none."""
    data = (json.dumps(row, ensure_ascii=False) + "\n").encode()
    if os.write(fd, data) != len(data):
        raise OSError("short write to the label file")
    os.fsync(fd)


def atomic_rewrite(path: Path, rows: List[dict]) -> None:
    """Replace a JSONL file by `rows` atomically (temporary file, fsync, rename, fsync the folder)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def label_stats(rows: List[dict]) -> Dict:
    """Counts, tie rate and agreement of label rows (preferred in a/b/tie/skip).
    tie_rate = ties / (a + b + ties); agreement = over every two distinct annotators who both judged
    one pair (skips left out), the fraction that chose the same (a, b or tie)."""
    counts = {c: 0 for c in CHOICES}
    per_annotator: Dict[str, int] = {}
    by_pair: Dict[str, Dict[str, str]] = {}
    for r in rows:
        counts[r["preferred"]] = counts.get(r["preferred"], 0) + 1
        per_annotator[r.get("annotator", "")] = per_annotator.get(r.get("annotator", ""), 0) + 1
        if r["preferred"] != "skip":
            by_pair.setdefault(str(r.get("pair_id", r.get("image_a"))), {})[r.get("annotator", "")] = r["preferred"]
    judged = counts["a"] + counts["b"] + counts["tie"]
    agree = total = 0
    for votes in by_pair.values():
        for x, y in combinations(votes.values(), 2):
            total, agree = total + 1, agree + (x == y)
    return {"labels": len(rows), **counts, "annotators": per_annotator,
            "tie_rate": counts["tie"] / judged if judged else 0.0,
            "overlap_pairs": sum(len(v) > 1 for v in by_pair.values()),
            "agreement": agree / total if total else None, "agreement_comparisons": total}


class LabelStore:
    """Thread-safe pool of pairs + label log. root: the pair folder; labels: the JSONL to append to."""

    def __init__(self, root: Path, labels: Optional[Path] = None, overlap: float = 0.0,
                 overlap_annotators: int = 2, lease_seconds: float = 600.0):
        self.root = Path(root).resolve()
        if not (self.root / "pairs.jsonl").is_file():
            raise FileNotFoundError(f"{self.root} has no pairs.jsonl; make one with `flowrl annotate pairs`")
        if not 0.0 <= overlap <= 1.0 or overlap_annotators < 2 or lease_seconds <= 0:
            raise ValueError(f"need 0 <= overlap <= 1, overlap_annotators >= 2, lease_seconds > 0 (got "
                             f"{overlap}, {overlap_annotators}, {lease_seconds})")
        self.labels_path = Path(labels).resolve() if labels else self.root / "labels.jsonl"
        self.overlap, self.overlap_annotators, self.lease_seconds = overlap, overlap_annotators, lease_seconds
        self.lock = threading.RLock()
        self.pairs: Dict[str, dict] = {}
        self.order: List[str] = []
        self._pairs_size = -1
        self.rows: List[dict] = read_jsonl(self.labels_path)
        self.leases: Dict[str, Tuple[str, float]] = {}        # annotator -> (pair id, expiry)
        self.labels_path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.labels_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.refresh()

    # ---------------------------------------------------------------- pairs
    def refresh(self) -> None:
        """Read pairs.jsonl again if it grew (the online trainer appends each epoch's pairs)."""
        path = self.root / "pairs.jsonl"
        size = path.stat().st_size
        if size == self._pairs_size:
            return
        with self.lock:
            for n, p in enumerate(read_jsonl(path), start=1):
                pid = str(p.get("id", n))
                if pid not in self.pairs:
                    self.order.append(pid)
                self.pairs[pid] = {**p, "id": pid}
            self._pairs_size = size

    def capacity(self, pid: str) -> int:
        return self.overlap_annotators if unit_hash("overlap", pid) < self.overlap else 1

    def _taken(self, now: float) -> Tuple[Dict[str, int], Dict[str, set]]:
        """Per pair: labels + live leases (slots used), and who labelled it."""
        used: Dict[str, int] = {}
        who: Dict[str, set] = {}
        for r in self.rows:
            pid = str(r.get("pair_id"))
            used[pid] = used.get(pid, 0) + 1
            who.setdefault(pid, set()).add(r.get("annotator"))
        for ann, (pid, exp) in self.leases.items():
            if exp > now and ann not in who.get(pid, ()):
                used[pid] = used.get(pid, 0) + 1
        return used, who

    def progress(self, annotator: str) -> Dict[str, int]:
        """done: this annotator's labels; left: pairs still open to them; total: pairs; labels: all."""
        with self.lock:
            used, who = self._taken(time.time())
            lease = self.leases.get(annotator)
            mine = lease[0] if lease and lease[1] > time.time() else None
            left = sum(1 for pid in self.order if annotator not in who.get(pid, ())
                       and (used.get(pid, 0) < self.capacity(pid) or pid == mine))
            done = sum(1 for r in self.rows if r.get("annotator") == annotator)
            return {"done": done, "left": left, "total": len(self.order), "labels": len(self.rows)}

    def next_pair(self, annotator: str) -> Optional[dict]:
        """Lease the next open pair to `annotator` (the one it holds, if still open), or None."""
        check_name(annotator)
        self.refresh()
        with self.lock:
            now = time.time()
            used, who = self._taken(now)
            held = self.leases.get(annotator)
            if held and held[1] > now and annotator not in who.get(held[0], ()):
                pid = held[0]
            else:
                self.leases.pop(annotator, None)
                used, who = self._taken(now)
                pid = next((p for p in self.order if annotator not in who.get(p, ())
                            and used.get(p, 0) < self.capacity(p)), None)
                if pid is None:
                    return None
            self.leases[annotator] = (pid, now + self.lease_seconds)
            return self.public(pid, annotator)

    def public(self, pid: str, annotator: str) -> dict:
        """What a client sees of a pair: id, prompt, image URLs, the left/right order to show."""
        p = self.pairs[pid]
        order = "ab" if unit_hash("side", pid, annotator) < 0.5 else "ba"
        return {"pair_id": pid, "prompt": p.get("prompt", ""), "shown_order": order,
                "image_a": "/images/" + str(p["image_a"]), "image_b": "/images/" + str(p["image_b"])}

    # ---------------------------------------------------------------- labels
    def _rel(self, path: str) -> str:
        """A pair-folder path, relative to the label file's folder (what dpo.py:human resolves)."""
        return os.path.relpath(self.root / path, self.labels_path.parent)

    def label(self, annotator: str, pair_id: str, preferred: str, shown_order: str) -> dict:
        """Append one label (fsync'd before returning) and release the annotator's lease."""
        check_name(annotator)
        if preferred not in CHOICES:
            raise LabelError(f"preferred must be one of {list(CHOICES)}, got {preferred!r}")
        if shown_order not in ORDERS:
            raise LabelError(f"shown_order must be 'ab' (image_a on the left) or 'ba', got {shown_order!r}")
        self.refresh()
        with self.lock:
            pid = str(pair_id)
            if pid not in self.pairs:
                raise LabelError(f"no pair with id {pair_id!r}; ask /api/next for one", 404)
            used, who = self._taken(time.time())
            if annotator in who.get(pid, ()):
                raise LabelError(f"{annotator!r} already labelled pair {pid!r}; undo it first", 409)
            held = self.leases.get(annotator)
            mine = held is not None and held[0] == pid and held[1] > time.time()
            if not mine and used.get(pid, 0) >= self.capacity(pid):
                raise LabelError(f"pair {pid!r} is already labelled or leased to another annotator", 409)
            p = self.pairs[pid]
            extra = {k: v for k, v in p.items() if k not in ("id", "prompt", "image_a", "image_b")}
            for k in ("sample_a", "sample_b"):
                if k in extra:
                    extra[k] = self._rel(str(extra[k]))
            row = {"prompt": p.get("prompt", ""), "image_a": self._rel(str(p["image_a"])),
                   "image_b": self._rel(str(p["image_b"])), "preferred": preferred, "pair_id": pid,
                   "annotator": annotator, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "shown_order": shown_order, **extra}
            append_line(self._fd, row)
            self.rows.append(row)
            self.leases.pop(annotator, None)
            return row

    def undo(self, annotator: str) -> Optional[dict]:
        """Remove this annotator's last label (the file is rewritten atomically); its pair is leased
        back to them so it comes next. -> the removed row, or None."""
        check_name(annotator)
        with self.lock:
            idx = next((i for i in range(len(self.rows) - 1, -1, -1)
                        if self.rows[i].get("annotator") == annotator), None)
            if idx is None:
                return None
            row = self.rows[idx]
            keep = self.rows[:idx] + self.rows[idx + 1:]
            atomic_rewrite(self.labels_path, keep)
            os.close(self._fd)
            self._fd = os.open(self.labels_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self.rows = keep
            self.leases[annotator] = (str(row["pair_id"]), time.time() + self.lease_seconds)
            return row

    def stats(self) -> Dict:
        self.refresh()
        with self.lock:
            out = label_stats(self.rows)
            out.update(pairs=len(self.order), labels_file=str(self.labels_path))
            return out

    def image_path(self, rel: str) -> Path:
        """The file for /images/<rel>, which must lie inside the pair folder (else LabelError 403/404)."""
        target = (self.root / rel).resolve()
        if not target.is_relative_to(self.root):
            raise LabelError(f"image path {rel!r} leaves the pair folder", 403)
        if not target.is_file() or target.suffix.lower() not in IMAGE_SUFFIXES:
            raise LabelError(f"no image {rel!r} in the pair folder", 404)
        return target

    def close(self) -> None:
        os.close(self._fd)


def check_name(annotator) -> None:
    if not isinstance(annotator, str) or not annotator.strip() or len(annotator) > 100:
        raise LabelError("annotator must be a non-empty name (at most 100 characters)")
