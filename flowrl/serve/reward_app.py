"""`flowrl serve-reward`: registered rewards (or their weighted sum) over HTTP, for any number of
training jobs. FastAPI + uvicorn; the wire format is in flowrl.serve.reward_protocol.

Concurrent requests are queued and scored together, up to `max_batch` samples per reward call (only
requests whose samples have the same shape are merged); rewards run one call at a time in one worker
thread, so a model is never used by two threads at once.
"""

import asyncio
import importlib
import json
import importlib.util
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from flowrl.serve.reward_protocol import ProtocolError, decode_request


class Batcher:
    """Merges queued requests into reward calls of at most `max_batch` samples (one at a time)."""

    def __init__(self, reward, max_batch: int, device: str = "cpu"):
        self.reward, self.max_batch, self.device = reward, int(max_batch), torch.device(device)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward")
        self.queue: Optional[asyncio.Queue] = None
        self.scored, self.calls = 0, 0   # samples scored, reward calls (requests merge into one call)

    async def score(self, samples: torch.Tensor, prompts: List[str], metadata: List[dict]):
        """-> (total (B,), {name: (B,)}) of this request's samples, in their order."""
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((samples, prompts, metadata, fut))
        return await fut

    async def run(self) -> None:
        self.queue = asyncio.Queue()
        carry = None
        while True:
            first = carry or await self.queue.get()
            group, n, carry = [first], len(first[0]), None
            while not self.queue.empty() and n < self.max_batch:
                item = self.queue.get_nowait()
                if item[0].shape[1:] != first[0].shape[1:] or n + len(item[0]) > self.max_batch:
                    carry = item
                    break
                group.append(item)
                n += len(item[0])
            await self._score_group(group)

    async def _score_group(self, group) -> None:
        samples = torch.cat([g[0] for g in group])
        prompts = [p for g in group for p in g[1]]
        metadata = [m for g in group for m in g[2]]
        try:
            total, parts = await asyncio.get_running_loop().run_in_executor(
                self.executor, self._call, samples, prompts, metadata)
        except Exception as e:  # noqa: BLE001 - the reward's failure goes back to every waiting request
            for g in group:
                if not g[3].done():
                    g[3].set_exception(e)
            return
        start = 0
        for g in group:
            end = start + len(g[0])
            if not g[3].done():
                g[3].set_result((total[start:end], {k: v[start:end] for k, v in parts.items()}))
            start = end
        self.scored, self.calls = self.scored + len(samples), self.calls + 1

    @torch.no_grad()
    def _call(self, samples, prompts, metadata) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """The reward in chunks of max_batch: (total (N,), parts) on the CPU."""
        totals, parts = [], {}
        for s in range(0, len(samples), self.max_batch):
            sl = slice(s, s + self.max_batch)
            total, p = self.reward(samples[sl].to(self.device), prompts[sl], metadata[sl])
            totals.append(total)
            for k, v in p.items():
                parts.setdefault(k, []).append(v)
        return torch.cat(totals), {k: torch.cat(v) for k, v in parts.items()}


async def _read_limited(request, max_bytes: int) -> bytes:
    from fastapi import HTTPException
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise HTTPException(413, f"request body of {declared} bytes exceeds the server's limit of "
                                 f"{max_bytes} bytes; send smaller batches (reward.options.remote.batch_size)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise HTTPException(413, f"request body exceeds the server's limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(reward, max_batch: int = 64, max_bytes: int = 64 << 20, device: str = "cpu"):
    """The ASGI app scoring with `reward` (a flowrl.rewards.WeightedReward)."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse

    batcher = Batcher(reward, max_batch, device)

    @asynccontextmanager
    async def lifespan(app):
        task = asyncio.create_task(batcher.run())
        while batcher.queue is None:
            await asyncio.sleep(0)
        yield
        task.cancel()
        batcher.executor.shutdown(wait=False)

    app = FastAPI(title="flowrl reward server", lifespan=lifespan)
    app.state.batcher = batcher

    @app.get("/health")
    async def health():
        return {"status": "ok", "rewards": reward.weights, "max_batch": batcher.max_batch,
                "max_bytes": max_bytes, "samples_scored": batcher.scored, "reward_calls": batcher.calls}

    @app.post("/compute")
    async def compute(request: Request):
        body = await _read_limited(request, max_bytes)
        try:
            samples, prompts, metadata = decode_request(body, request.headers.get("content-type", ""))
        except ProtocolError as e:
            raise HTTPException(400, str(e)) from None
        try:
            total, parts = await batcher.score(samples, prompts, metadata)
        except Exception as e:  # noqa: BLE001
            return JSONResponse({"detail": f"reward failed: {type(e).__name__}: {e}"}, status_code=500)
        return {"scores": total.tolist(), "components": {k: v.tolist() for k, v in parts.items()}}

    return app


# ----------------------------------------------------------------------------- the command
def parse_weights(specs: Sequence[str]) -> Dict[str, float]:
    """["jpeg_compressibility", "aesthetic=0.5"] -> {"jpeg_compressibility": 1.0, "aesthetic": 0.5}."""
    out = {}
    for spec in specs:
        for item in filter(None, spec.split(",")):
            name, sep, w = item.partition("=")
            try:
                out[name.strip()] = float(w) if sep else 1.0
            except ValueError:
                raise ValueError(f"bad reward {item!r}: use NAME or NAME=WEIGHT, e.g. aesthetic=0.5") from None
    return out


def parse_options(specs: Sequence[str]) -> Dict[str, dict]:
    """["jpeg_compressibility.quality=90"] -> {"jpeg_compressibility": {"quality": 90}} (JSON, else YAML)."""
    import yaml
    out: Dict[str, dict] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        name, dot, opt = key.partition(".")
        if not (sep and dot and name and opt):
            raise ValueError(f"bad --option {spec!r}: use REWARD.KEY=VALUE, e.g. jpeg_compressibility.quality=90")
        try:
            out.setdefault(name, {})[opt] = json.loads(value)   # numbers as JSON reads them (1e-3)
        except ValueError:
            out[name][opt] = yaml.safe_load(value)
    return out


def import_reward_module(spec: str) -> None:
    """Import a module (dotted name or FILE.py) whose import registers extra rewards."""
    if spec.endswith(".py"):
        path = Path(spec).resolve()
        if not path.exists():
            raise FileNotFoundError(f"--import {spec}: no such file")
        mod_spec = importlib.util.spec_from_file_location(f"flowrl_user_rewards_{path.stem}", path)
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[mod_spec.name] = module
        mod_spec.loader.exec_module(module)
    else:
        importlib.import_module(spec)


def build_app(rewards: Sequence[str], options: Sequence[str] = (), metrics: Sequence[str] = (),
              imports: Sequence[str] = (), device: str = "cpu", max_batch: int = 64,
              max_bytes: int = 64 << 20):
    """Parse the command's arguments, build the rewards, -> (app, {name: weight})."""
    from flowrl.rewards import build_reward
    for spec in imports:
        import_reward_module(spec)
    if max_batch < 1 or max_bytes < 1:
        raise ValueError("--max-batch and --max-request-mb must be positive")
    reward = build_reward(parse_weights(rewards), parse_options(options), torch.device(device), tuple(metrics))
    return create_app(reward, max_batch, max_bytes, device), reward.weights


def serve(app, host: str, port: int, weights: Dict[str, float]) -> None:
    import uvicorn
    print(f"[flowrl] serving rewards {weights} on http://{host}:{port} (POST /compute, GET /health)",
          flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
