"""Nested state (optimizer state dicts, DeepSpeed ZeRO shards) as safetensors + JSON, no pickles.

flatten_tree(obj) -> (tensors, skeleton): tensors go to safetensors under path keys; the skeleton is
JSON with {"t": key} for tensors, {"v": x} for JSON scalars, {"d": [[k, v]...]}, {"l": [...]},
{"tu": [...]}, and {"skip": type} for objects JSON cannot hold (e.g. DeepSpeed's loss scaler).
merge_tree(skeleton, tensors, current) rebuilds the object, taking skipped leaves from `current`
(the live object's own state_dict(), which holds equivalent ones).
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch

_SCALARS = (bool, int, float, str, type(None))


def flatten_tree(obj: Any, prefix: str = "") -> Tuple[Dict[str, torch.Tensor], Any]:
    tensors: Dict[str, torch.Tensor] = {}

    def walk(x, path):
        if torch.is_tensor(x):
            tensors[path] = x.detach().contiguous().cpu()
            return {"t": path}
        if isinstance(x, _SCALARS):
            return {"v": x}
        if isinstance(x, dict):
            if not all(isinstance(k, (str, int)) for k in x):
                return {"skip": type(x).__name__}
            return {"d": [[k, walk(v, f"{path}.{k}")] for k, v in x.items()]}
        if isinstance(x, (list, tuple)):
            items = [walk(v, f"{path}.{i}") for i, v in enumerate(x)]
            return {"tu" if isinstance(x, tuple) else "l": items}
        return {"skip": type(x).__name__}

    return tensors, walk(obj, prefix or "root")


def merge_tree(node: Any, tensors: Dict[str, torch.Tensor], current: Any = None) -> Any:
    if "t" in node:
        if node["t"] not in tensors:
            raise KeyError(f"tensor {node['t']!r} missing from the saved file")
        t = tensors[node["t"]]
        return t.to(current.device) if torch.is_tensor(current) else t
    if "v" in node:
        return node["v"]
    if "skip" in node:
        return current
    if "d" in node:
        out = type(current)() if isinstance(current, dict) else {}
        if isinstance(current, dict):
            out.update(current)
        for k, v in node["d"]:
            out[k] = merge_tree(v, tensors, current.get(k) if isinstance(current, dict) else None)
        return out
    kind = "tu" if "tu" in node else "l"
    cur = current if isinstance(current, (list, tuple)) else []
    items = [merge_tree(v, tensors, cur[i] if i < len(cur) else None) for i, v in enumerate(node[kind])]
    return tuple(items) if kind == "tu" else items
