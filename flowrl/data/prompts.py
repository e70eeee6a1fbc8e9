"""Prompt datasets: text files (one prompt a line), JSONL files ({"prompt": ..., any metadata}), the
small sets shipped in flowrl/data/prompts/, or "" for an unconditional model (one empty prompt)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

from flowrl.errors import InputFileError, decode_utf8, read_jsonl

SHIPPED = Path(__file__).parent / "prompts"


@dataclass
class PromptSet:
    prompts: List[str]
    metadata: List[Dict] = field(default_factory=list)

    def __post_init__(self):
        if not self.metadata:
            self.metadata = [{} for _ in self.prompts]
        if not self.prompts:
            raise ValueError("prompt set is empty")

    @classmethod
    def checked(cls, path: Path, prompts: List[str]) -> "PromptSet":
        """A PromptSet from `path`'s prompts; InputFileError naming the file if there are none."""
        if not prompts:
            raise InputFileError(f"prompt file {path} holds no prompts (every line is empty); put one "
                                 f"prompt per line, or set prompts.dataset=\"\" for an unconditional model")
        return cls(list(prompts))

    def __len__(self) -> int:
        return len(self.prompts)


def load_prompts(spec: str) -> PromptSet:
    """'' -> unconditional; a path (.txt/.jsonl); or the name of a shipped set (e.g. 'ocr/train')."""
    if spec == "":
        return PromptSet([""])
    path = Path(spec)
    if not path.exists():
        for cand in (SHIPPED / spec, SHIPPED / f"{spec}.txt", SHIPPED / f"{spec}.jsonl"):
            if cand.exists():
                path = cand
                break
        else:
            names = sorted(str(p.relative_to(SHIPPED).with_suffix("")) for p in SHIPPED.rglob("*.*"))
            raise FileNotFoundError(f"prompt dataset {spec!r} not found: give a .txt/.jsonl path or one of "
                                    f"the shipped sets {names}")
    if path.suffix == ".jsonl":
        rows = read_jsonl(path, "prompt file", 'fix that line: {"prompt": "...", ...}')
        bad = [i for i, r in enumerate(rows) if "prompt" not in r]
        if bad:
            raise InputFileError(f"{path}: rows {bad[:5]} (0-based, blank lines skipped) have no 'prompt' "
                                 f"field; give every line a \"prompt\"")
        prompts = PromptSet.checked(path, [r["prompt"] for r in rows])
        prompts.metadata = [{k: v for k, v in r.items() if k != "prompt"} for r in rows]
        return prompts
    text = decode_utf8(path, "prompt file")
    return PromptSet.checked(path, [line.strip() for line in text.splitlines() if line.strip()])
