"""Wire format of the reward server, shared by the server (flowrl.serve.reward_app) and the client
(flowrl.rewards.remote). No web framework here: bytes in, tensors out.

flowrl's own protocol (POST /compute), two request bodies:
    application/json:  {"images": [base64 PNG, ...], "prompts": [str], "metadata": [dict]}
                       PNGs are 8-bit RGB; the server scores them as (B, 3, H, W) floats k / 255.
    application/x-safetensors: a safetensors file with one tensor "samples" (any shape (B, ...),
                       float32 sent exactly) and header metadata {"prompts": JSON list,
                       "metadata": JSON list}. Exact: remote scores equal local scores bit for bit.
response (200):     {"scores": [B floats], "components": {name: [B floats]}}
errors:             4xx {"detail": "..."} for bad bodies (not retried), 5xx when the reward failed.
GET /health:        {"status": "ok", "rewards": {name: weight}, "max_batch": int, "max_bytes": int,
                     "samples_scored": int, "reward_calls": int}

Flow-GRPO's protocol (opt-in, client only): POST to the URL a pickled dict {"images": [JPEG bytes],
"prompts": [...], "meta_datas": [...], "only_strict": False}; the response is a pickled dict holding
a list of scores under "scores" (GenEval server) or "outputs" (DeQA / UnifiedReward servers). The
response is read by `restricted_loads`, which accepts only plain containers and numbers.
"""
from __future__ import annotations

import base64
import io
import json
import math
import pickle
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

JSON = "application/json"
SAFETENSORS = "application/x-safetensors"


class ProtocolError(ValueError):
    """A body that does not follow the protocol (a 4xx on the server, a bad answer on the client)."""


# ------------------------------------------------------------------------------------- requests
def to_uint8(samples: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float in [0, 1] -> (B, H, W, 3) uint8 (clamped, round to nearest)."""
    if samples.ndim != 4 or samples.shape[1] != 3:
        raise ProtocolError(f"image encodings need samples of shape (B, 3, H, W); got {tuple(samples.shape)}")
    return samples.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def image_bytes(samples: torch.Tensor, fmt: str = "PNG", **save_args) -> List[bytes]:
    """(B, 3, H, W) float in [0, 1] -> B encoded images (PNG lossless, or JPEG for Flow-GRPO)."""
    from PIL import Image
    out = []
    for arr in to_uint8(samples):
        buf = io.BytesIO()
        Image.fromarray(arr, mode="RGB").save(buf, format=fmt, **save_args)
        out.append(buf.getvalue())
    return out


def encode_request(samples: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict],
                   encoding: str = "safetensors") -> Tuple[bytes, str]:
    """-> (body, content type) of a /compute request. encoding: "safetensors" (exact) or "png"."""
    if encoding == "png":
        images = [base64.b64encode(b).decode("ascii") for b in image_bytes(samples)]
        body = {"images": images, "prompts": list(prompts), "metadata": list(metadata)}
        return json.dumps(body).encode(), JSON
    if encoding == "safetensors":
        from safetensors.torch import save
        meta = {"prompts": json.dumps(list(prompts)), "metadata": json.dumps(list(metadata))}
        return save({"samples": samples.detach().float().cpu().contiguous()}, metadata=meta), SAFETENSORS
    raise ValueError(f"unknown encoding {encoding!r}; use 'safetensors' or 'png'")


def _decode_png(items) -> torch.Tensor:
    from PIL import Image
    arrays = []
    for i, item in enumerate(items):
        try:
            img = Image.open(io.BytesIO(base64.b64decode(item, validate=True)))
            arrays.append(np.asarray(img.convert("RGB")))
        except Exception as e:  # noqa: BLE001 - any decoding failure is the client's
            raise ProtocolError(f"images[{i}] is not a base64 PNG: {e}") from None
    if len({a.shape for a in arrays}) > 1:
        raise ProtocolError("images have different sizes; send one size per request")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


def _lists(prompts, metadata, n: int) -> Tuple[List[str], List[dict]]:
    prompts = [""] * n if prompts is None else prompts
    metadata = [{}] * n if metadata is None else metadata
    if not (isinstance(prompts, list) and all(isinstance(p, str) for p in prompts)):
        raise ProtocolError("'prompts' must be a list of strings")
    if not (isinstance(metadata, list) and all(isinstance(m, dict) for m in metadata)):
        raise ProtocolError("'metadata' must be a list of objects")
    if len(prompts) != n or len(metadata) != n:
        raise ProtocolError(f"{n} samples but {len(prompts)} prompts and {len(metadata)} metadata entries")
    return prompts, metadata


def decode_request(body: bytes, content_type: str) -> Tuple[torch.Tensor, List[str], List[dict]]:
    """A /compute body -> (samples (B, ...) float32, prompts, metadata); ProtocolError if malformed."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind == SAFETENSORS:
        from safetensors.torch import load
        if len(body) < 8:
            raise ProtocolError("safetensors body too short")
        n = int.from_bytes(body[:8], "little")
        try:
            header = json.loads(body[8:8 + n])
            tensors = load(body)
            meta = header.get("__metadata__") or {}
            prompts, metadata = json.loads(meta.get("prompts", "null")), json.loads(meta.get("metadata", "null"))
        except Exception as e:  # noqa: BLE001
            raise ProtocolError(f"unreadable safetensors body: {e}") from None
        if set(tensors) != {"samples"} or tensors["samples"].ndim < 1:
            raise ProtocolError(f"the safetensors body must hold one tensor 'samples'; got {sorted(tensors)}")
        samples = tensors["samples"].float()
    elif kind == JSON:
        try:
            data = json.loads(body)
        except ValueError as e:
            raise ProtocolError(f"body is not JSON: {e}") from None
        if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not data["images"]:
            raise ProtocolError("JSON body needs a non-empty list 'images' of base64 PNGs")
        samples, prompts, metadata = _decode_png(data["images"]), data.get("prompts"), data.get("metadata")
    else:
        raise ProtocolError(f"content type {content_type!r} not supported; use {JSON} or {SAFETENSORS}")
    if samples.shape[0] == 0:
        raise ProtocolError("no samples in the request")
    return (samples, *_lists(prompts, metadata, samples.shape[0]))


# ------------------------------------------------------------------------------------ responses
def scores_list(scores, n: int, where: str) -> torch.Tensor:
    """A list of n finite numbers -> (n,) float32 tensor; ProtocolError naming `where` otherwise."""
    if not isinstance(scores, (list, tuple)) or not all(
            isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores):
        raise ProtocolError(f"{where} is not a list of numbers")
    if len(scores) != n:
        raise ProtocolError(f"{where} has {len(scores)} scores for {n} samples")
    bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
    if bad:
        raise ProtocolError(f"{where} has non-finite scores (NaN/inf) at index {bad[:5]}")
    return torch.tensor([float(s) for s in scores], dtype=torch.float32)


def parse_response(text: bytes, n: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """A /compute response body -> (scores (n,), {component: (n,)}); ProtocolError if malformed."""
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ProtocolError(f"response is not JSON: {str(e)[:80]}") from None
    if not isinstance(data, dict) or "scores" not in data:
        raise ProtocolError("response has no 'scores'")
    comps = data.get("components") or {}
    return scores_list(data["scores"], n, "response 'scores'"), {
        str(k): scores_list(v, n, f"response component {k!r}") for k, v in dict(comps).items()}


# ------------------------------------------------------------------------- Flow-GRPO (pickles)
_SAFE_BUILTINS = {"dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "bool",
                  "str", "bytes", "bytearray", "NoneType"}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers, strings and numbers only: any class or function reference
    (numpy arrays, torch tensors, os.system, ...) raises pickle.UnpicklingError."""

    def find_class(self, module, name):
        if module == "builtins" and name in _SAFE_BUILTINS:
            return getattr(__import__("builtins"), name)
        raise pickle.UnpicklingError(f"refused to unpickle {module}.{name}: only plain containers and "
                                     f"numbers are accepted from a reward server")


def restricted_loads(data: bytes):
    """pickle.loads that accepts only plain containers and numbers (see RestrictedUnpickler)."""
    return RestrictedUnpickler(io.BytesIO(data)).load()


def flowgrpo_request(samples: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> bytes:
    """Flow-GRPO's body: a pickled dict of JPEG bytes (PIL default quality), prompts and metadata."""
    return pickle.dumps({"images": image_bytes(samples, "JPEG"), "prompts": list(prompts),
                         "meta_datas": list(metadata), "only_strict": False})


def parse_flowgrpo_response(content: bytes, n: int, key: str = "") -> torch.Tensor:
    """A Flow-GRPO server's pickled answer -> (n,) scores from `key` ("" = "scores", else "outputs")."""
    try:
        data = restricted_loads(content)
    except Exception as e:  # noqa: BLE001 - truncated, refused class, not a pickle
        raise ProtocolError(f"response is not a plain pickle: {e}") from None
    if not isinstance(data, dict):
        raise ProtocolError("response pickle is not a dict")
    key = key or next((k for k in ("scores", "outputs") if k in data), "scores")
    if key not in data:
        raise ProtocolError(f"response has no {key!r} (keys: {sorted(map(str, data))})")
    return scores_list(list(data[key]), n, f"response {key!r}")
