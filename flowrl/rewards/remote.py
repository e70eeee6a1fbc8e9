"""`remote`: a reward computed by a reward server (`flowrl serve-reward`, or a Flow-GRPO server).

    --set reward.weights.remote=1.0 --set reward.options.remote.url=http://127.0.0.1:8765

Options (reward.options.remote.*):
    url          the server ("http://HOST:PORT"); flowrl's protocol posts to URL/compute
    protocol     "flowrl" (JSON / safetensors, see flowrl.serve.reward_protocol) or "flowgrpo"
                 (Flow-GRPO's pickled JPEG batches; answers read by a restricted unpickler that
                 accepts only plain containers and numbers)
    encoding     flowrl protocol: "safetensors" (float32 samples, exact) or "png" (8-bit images)
    batch_size   samples per request; concurrency: requests in flight at once (per process)
    timeout      seconds per request; retries: extra attempts after a failure (HTTP 5xx, timeout,
                 connection error, malformed or non-finite answer), waiting backoff * 2**k seconds
    required     True: when every attempt failed, raise RemoteRewardError (the run stops before its
                 next checkpoint; `--resume` continues once the server is back). False: score
                 `fallback` for those samples and print a warning each time
    component    "" for the server's weighted total, or one of its reward names
    score_key    flowgrpo protocol: the list to read ("" = "scores", else "outputs")
A health check runs when the reward is built: an unreachable server fails the run at once.
"""
from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import List, Sequence

import torch

from flowrl.errors import UserError
from flowrl.registry import REWARDS
from flowrl.serve import reward_protocol as wire


class RemoteRewardError(UserError, RuntimeError):
    """The reward server could not score a batch; the message names the URL and the last error."""


class RemoteReward:
    """fn(samples (B, ...), prompts, metadata) -> (B,) float32 scores from a reward server."""

    def __init__(self, url: str, protocol: str = "flowrl", encoding: str = "safetensors", batch_size: int = 64,
                 concurrency: int = 1, timeout: float = 60.0, retries: int = 3, backoff: float = 0.5,
                 required: bool = True, fallback: float = 0.0, component: str = "", score_key: str = ""):
        import httpx

        from flowrl.config import ConfigError     # bad options: one line and exit 2 from the CLI
        if not str(url).startswith(("http://", "https://")):
            raise ConfigError(f"reward.options.remote.url must be http://HOST:PORT; got {url!r}")
        if protocol not in ("flowrl", "flowgrpo"):
            raise ConfigError(f"reward.options.remote.protocol must be 'flowrl' or 'flowgrpo'; got {protocol!r}")
        if min(batch_size, concurrency) < 1 or retries < 0 or timeout <= 0:
            raise ConfigError("reward.options.remote: batch_size, concurrency >= 1, retries >= 0, timeout > 0")
        if encoding not in ("safetensors", "png"):
            raise ConfigError(f"reward.options.remote.encoding must be 'safetensors' or 'png'; got {encoding!r}")
        self.url, self.protocol, self.encoding = str(url).rstrip("/"), protocol, encoding
        self.batch_size, self.concurrency, self.retries, self.backoff = batch_size, concurrency, retries, backoff
        self.required, self.fallback, self.component, self.score_key = required, fallback, component, score_key
        self.timeout, self.fallbacks = float(timeout), 0
        self.client = httpx.Client(timeout=self.timeout, limits=httpx.Limits(max_connections=concurrency))

    # --------------------------------------------------------------------------- health
    def check_health(self) -> dict:
        """GET URL/health (flowrl) or URL (flowgrpo: any HTTP answer means up); RemoteRewardError if down."""
        import httpx
        try:
            if self.protocol == "flowgrpo":
                self.client.get(self.url, timeout=min(self.timeout, 10.0))
                return {}
            r = self.client.get(f"{self.url}/health", timeout=min(self.timeout, 10.0))
            r.raise_for_status()
            info = r.json()
        except (httpx.HTTPError, ValueError) as e:
            raise RemoteRewardError(
                f"no reward server answers at {self.url} ({type(e).__name__}: {e}); start one with "
                f"`flowrl serve-reward NAME --port PORT` or fix reward.options.remote.url") from None
        if self.component and self.component not in info.get("rewards", {}):
            raise RemoteRewardError(f"reward server at {self.url} serves {sorted(info.get('rewards', {}))}, "
                                    f"not component {self.component!r}; fix reward.options.remote.component")
        return info

    # ---------------------------------------------------------------------------- scoring
    def __call__(self, samples: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> torch.Tensor:
        samples = samples.detach().float().cpu()
        prompts, metadata = list(prompts), list(metadata)
        starts = list(range(0, len(samples), self.batch_size))
        chunks = [(samples[s:s + self.batch_size], prompts[s:s + self.batch_size],
                   metadata[s:s + self.batch_size]) for s in starts]
        if self.concurrency > 1 and len(chunks) > 1:
            with ThreadPoolExecutor(min(self.concurrency, len(chunks))) as pool:
                parts: List[torch.Tensor] = list(pool.map(lambda c: self._score(*c), chunks))
        else:
            parts = [self._score(*c) for c in chunks]
        return torch.cat(parts) if parts else torch.zeros(0)

    def _score(self, samples, prompts, metadata) -> torch.Tensor:
        """One request, retried with exponential backoff; -> (b,) scores (or the fallback)."""
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                return self._post(samples, prompts, metadata)
            except _Retry as e:
                last = str(e)
        msg = (f"reward server at {self.url} failed {self.retries + 1} attempts; last error: {last}")
        if self.required:
            raise RemoteRewardError(f"{msg}. The last checkpoint is intact: restart the server and "
                                    f"continue with --resume")
        self.fallbacks += len(samples)
        print(f"[flowrl] warning: {msg}; scoring {len(samples)} samples {self.fallback} "
              f"(reward.options.remote.required=False)", file=sys.stderr, flush=True)
        return torch.full((len(samples),), float(self.fallback))

    def _post(self, samples, prompts, metadata) -> torch.Tensor:
        import httpx
        n = len(samples)
        try:
            if self.protocol == "flowgrpo":
                body, url, headers = wire.flowgrpo_request(samples, prompts, metadata), self.url, {}
            else:
                body, ctype = wire.encode_request(samples, prompts, metadata, self.encoding)
                url, headers = f"{self.url}/compute", {"content-type": ctype}
        except wire.ProtocolError as e:
            raise RemoteRewardError(f"cannot send these samples to {self.url}: {e}; images go as PNG/JPEG, "
                                    f"any tensor as reward.options.remote.encoding=safetensors") from None
        try:
            r = self.client.post(url, content=body, headers=headers)
        except httpx.TimeoutException:
            raise _Retry(f"no answer within {self.timeout:g} s (reward.options.remote.timeout)") from None
        except httpx.TransportError as e:
            raise _Retry(f"{type(e).__name__}: {e}") from None
        if r.status_code >= 500 or r.status_code == 429:
            raise _Retry(f"HTTP {r.status_code}: {r.text[:200]}")
        if r.status_code >= 400:    # our request is wrong: retrying cannot help
            raise RemoteRewardError(f"reward server at {self.url} refused the request: HTTP {r.status_code}: "
                                    f"{r.text[:300]}")
        try:
            if self.protocol == "flowgrpo":
                return wire.parse_flowgrpo_response(r.content, n, self.score_key)
            total, comps = wire.parse_response(r.content, n)
        except wire.ProtocolError as e:
            raise _Retry(f"bad answer: {e}") from None
        if not self.component:
            return total
        if self.component not in comps:
            raise _Retry(f"bad answer: no component {self.component!r}")
        return comps[self.component]


class _Retry(Exception):
    """A failure worth another attempt."""


@REWARDS.register("remote", domain="any", differentiable=False)
def remote(device: torch.device, url: str = "http://127.0.0.1:8765", protocol: str = "flowrl",
           encoding: str = "safetensors", batch_size: int = 64, concurrency: int = 1, timeout: float = 60.0,
           retries: int = 3, backoff: float = 0.5, required: bool = True, fallback: float = 0.0,
           component: str = "", score_key: str = "", health_check: bool = True):
    """A reward server's scores; see the module docstring for the options."""
    fn = RemoteReward(url, protocol, encoding, batch_size, concurrency, timeout, retries, backoff, required,
                      fallback, component, score_key)
    if health_check:
        fn.check_health()
    return fn
