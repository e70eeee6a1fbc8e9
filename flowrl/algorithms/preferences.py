"""Preferences that people labelled: a JSONL file of image pairs, read, checked and encoded for the
pair losses (flowrl/algorithms/dpo.py), and served to the trainer as each epoch's pairs.

One line per pair: {"prompt": str, "image_a": path, "image_b": path, "preferred": "a" | "b"}, paths
relative to the file and inside its folder (an absolute path or `../` out of it is refused unless
allow_outside=True: algorithm.preference_allow_outside); images (.png/.jpg/...) are encoded with
the policy's encode_images, .npy / .pt files are taken as the policy's samples (2-D points, latents).
Files written by `flowrl annotate` (flowrl/serve/label_store.py) add pair_id, annotator, time,
shown_order and may say "preferred": "tie" | "skip" (such lines are left out) and "sample_a" /
"sample_b" (the exact samples behind the pictures, .pt/.npy: trained on instead of re-encoding the
images). `diffusion_dpo` trains on them with
algorithm.preference_file=PATH (flowrl/algorithms/dpo.py: file_batch).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch

from flowrl.errors import InputFileError, decode_utf8

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
TENSOR_SUFFIXES = (".npy", ".pt")


@dataclass
class PreferencePair:
    """One labelled pair: the preferred and the other image (absolute paths), its prompt and line."""
    prompt: str
    winner: Path
    loser: Path
    line: int


def _parse_line(text: str, where: str) -> dict:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputFileError(f"{where}: not valid JSON ({e.msg}); fix that line") from None
    keys = ("prompt", "image_a", "image_b", "preferred")
    missing = [k for k in keys if k not in row] if isinstance(row, dict) else list(keys)
    if missing:
        raise InputFileError(f"{where}: needs the keys prompt, image_a, image_b, preferred; missing "
                             f"{missing}; add them to that line")
    if row["preferred"] not in ("a", "b", "tie", "skip"):
        raise InputFileError(f"{where}: preferred must be \"a\" or \"b\" (or \"tie\" / \"skip\": left "
                             f"out), got {row['preferred']!r}; fix that line")
    return row


def _sample_path(folder: Path, value, key: str, where: str, allow_outside: bool) -> Path:
    """The file `value` of `key` (relative to `folder`), checked to exist and to stay inside it."""
    f = (folder / str(value)).resolve()
    if not allow_outside and not f.is_relative_to(folder.resolve()):
        raise InputFileError(f"{where}: {key} {value!r} points outside the preference file's folder "
                             f"{folder.resolve()} (to {f}); move the file inside that folder, or set "
                             f"algorithm.preference_allow_outside=True if you trust this file")
    if not f.is_file():
        raise FileNotFoundError(f"{where}: {key} {value!r} not found (looked for {f})")
    return f


def load_preference_file(path, allow_outside: bool = False) -> List[PreferencePair]:
    """Read `{"prompt", "image_a", "image_b", "preferred": "a"|"b"}` per line (image paths relative to
    the file, inside its folder unless allow_outside). Every image must exist (FileNotFoundError
    names the file, the line and the key) and all samples must have one size and finite values
    (InputFileError): checked here, before any model loads."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"preference file {str(path)!r} not found")
    pairs = []
    for n, text in enumerate(decode_utf8(path, "preference file").splitlines(), start=1):
        if not text.strip():
            continue
        where = f"{path}:{n}"
        row = _parse_line(text, where)
        if row["preferred"] not in ("a", "b"):      # ties and skips carry no preference
            continue
        files = {}
        for key in ("image_a", "image_b"):
            key = f"sample_{key[-1]}" if f"sample_{key[-1]}" in row else key
            files[key[-1]] = _sample_path(path.parent, row[key], key, where, allow_outside)
        other = "b" if row["preferred"] == "a" else "a"
        pairs.append(PreferencePair(str(row["prompt"]), files[row["preferred"]], files[other], n))
    if not pairs:
        raise InputFileError(f"preference file {path} holds no pairs preferring a or b; add one JSON "
                             f"line per pair")
    check_sample_sizes(pairs, path)
    return pairs


def _sample_size(f: Path) -> Tuple:
    """An image's (width, height) from its header; a tensor file's shape (values checked finite)."""
    if f.suffix.lower() in IMAGE_SUFFIXES:
        from PIL import Image
        with Image.open(f) as im:
            return ("image", *im.size)
    return ("tensor", *read_sample(f).shape)


def check_sample_sizes(pairs: Sequence[PreferencePair], path: Path) -> None:
    """Every image / tensor of the file has the size of the first one: InputFileError otherwise."""
    seen: Dict[Path, Tuple] = {}
    first = None
    for p in pairs:
        for f in (p.winner, p.loser):
            if f not in seen:
                seen[f] = _sample_size(f)
            if first is None:
                first = (f, seen[f])
            elif seen[f] != first[1]:
                raise InputFileError(f"{path}:{p.line}: {f.name} is {_describe(seen[f])} but {first[0].name} "
                                     f"is {_describe(first[1])}; give every sample one size (resize the images)")


def _describe(size: Tuple) -> str:
    kind, *dims = size
    return f"a {dims[0]}x{dims[1]} image" if kind == "image" else f"a tensor of shape {tuple(dims)}"


def read_sample(path: Path, channels: int = 3) -> torch.Tensor:
    """An image file -> (C, H, W) float in [0, 1] (C = 1: grayscale, else RGB); a .npy / .pt file ->
    its tensor as it is (a 2-D point, or a latent)."""
    suffix = path.suffix.lower()
    if suffix in TENSOR_SUFFIXES:
        t = _read_tensor(path)
        if not bool(torch.isfinite(t).all()):
            raise InputFileError(f"{path}: {int((~torch.isfinite(t)).sum())} NaN / inf value(s); replace the "
                                 f"file with finite values")
        return t
    if suffix not in IMAGE_SUFFIXES:
        raise InputFileError(f"{path}: unsupported sample file; use one of {IMAGE_SUFFIXES + TENSOR_SUFFIXES}")
    if channels not in (1, 3):
        raise InputFileError(f"{path}: an image has 1 or 3 channels, the policy's samples have {channels}; "
                             f"give its latents as .npy / .pt files instead")
    import numpy as np
    from PIL import Image
    with Image.open(path) as im:
        arr = np.asarray(im.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0
    t = torch.from_numpy(arr)
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)


def _read_tensor(path: Path) -> torch.Tensor:
    try:
        if path.suffix.lower() == ".npy":
            import numpy as np
            return torch.from_numpy(np.load(path, allow_pickle=False)).float()
        return torch.as_tensor(torch.load(path, map_location="cpu", weights_only=True)).float()
    except Exception as e:  # truncated / not a tensor file: say which file
        raise InputFileError(f"{path}: not a readable {path.suffix} tensor file ({type(e).__name__}: {e}); "
                             f"save it again with np.save / torch.save") from None


def to_latents(policy, samples: Sequence[torch.Tensor], files: Sequence[Path]) -> torch.Tensor:
    """Stack samples and map them to the policy's latents: `policy.encode_images((B, 3, H, W) in
    [0, 1])` for images if the policy has it, else the samples must already have its sample_shape."""
    shape = tuple(policy.sample_shape)
    encode = getattr(policy, "encode_images", None)
    if encode is not None and all(s.ndim == 3 and s.shape[0] == 3 for s in samples):
        sizes = {tuple(s.shape) for s in samples}
        if len(sizes) > 1:
            raise ValueError(f"preference images differ in size {sorted(sizes)}; resize them to one size")
        with torch.no_grad():
            return encode(torch.stack(samples)).float()
    for s, f in zip(samples, files):
        if tuple(s.shape) != shape:
            raise ValueError(f"{f}: sample of shape {tuple(s.shape)} does not match the policy's "
                             f"sample_shape {shape}, and the policy has no encode_images()")
    return torch.stack(samples).float()


def encode_pairs(policy, pairs: Sequence[PreferencePair]):
    """-> (x_w (P, *shape), x_l (P, *shape), prompts [P]): the winners' and losers' latents."""
    shape = tuple(policy.sample_shape)
    channels = shape[0] if len(shape) == 3 and getattr(policy, "encode_images", None) is None else 3
    win = [read_sample(p.winner, channels) for p in pairs]
    lose = [read_sample(p.loser, channels) for p in pairs]
    x_w = to_latents(policy, win, [p.winner for p in pairs])
    x_l = to_latents(policy, lose, [p.loser for p in pairs])
    return x_w, x_l, [p.prompt for p in pairs]


def epoch_pairs(num_pairs: int, per_rank: int, epoch: int, rank: int, world_size: int,
                seed: int) -> torch.Tensor:
    """Which pairs of the file this rank trains on in `epoch`: (per_rank,) long indices into the file.
    The file is walked in a fresh permutation each pass (seeded by (seed, pass)), so every pair is
    seen once per pass; ranks take consecutive slices of the epoch's world_size * per_rank pairs."""
    from flowrl.data.sampler import mix_seed
    start = (epoch * world_size + rank) * per_rank
    k = torch.arange(start, start + per_rank)
    walks, pos = k // num_pairs, k % num_pairs
    out = torch.empty(per_rank, dtype=torch.long)
    for walk in walks.unique().tolist():          # one permutation per pass touched (usually 1)
        perm = torch.randperm(num_pairs, generator=torch.Generator().manual_seed(mix_seed(seed, walk, 23)))
        sel = walks == walk
        out[sel] = perm[pos[sel]]
    return out


def file_batch(policy, pairs: Sequence[PreferencePair], index: torch.Tensor, first_group: int):
    """The trainer's Batch for the file pairs `index` (P,): rows 2p (winner, reward 1) and 2p+1
    (loser, reward 0), group id first_group + p, prompt id = the pair's line in the file, the clean
    sample as latents[:, -1] and zeros as latents[:, 0] (a labelled pair has no known initial noise),
    and the prompts' conditioning as cond.*. The pair losses read only these."""
    from flowrl.batch import Batch
    chosen = [pairs[i] for i in index.tolist()]
    x_w, x_l, prompts = encode_pairs(policy, chosen)
    x = torch.stack([x_w, x_l], dim=1).flatten(0, 1)                  # (2P, *shape): w, l, w, l ...
    prompts2 = [p for p in prompts for _ in range(2)]
    cond = policy.encode(prompts2)
    n = len(chosen)
    tensors = {"latents": torch.stack([torch.zeros_like(x), x], dim=1),
               "rewards": torch.tensor([1.0, 0.0]).repeat(n),
               "prompt_ids": torch.tensor([p.line for p in chosen]).repeat_interleave(2),
               "group_ids": (first_group + torch.arange(n)).repeat_interleave(2),
               **{f"cond.{k}": v for k, v in cond.items()}}
    return Batch(tensors, {"prompts": prompts2, "metadata": [{} for _ in prompts2]})
