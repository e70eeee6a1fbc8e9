"""Rewards of sampling batch b computed while batch b+1 is sampled (one worker thread, in order).

    scorer = OverlappedRewards(reward_fn, overlap=True)
    for each batch: ...sample...; scorer.submit(samples, prompts, metadata)
    results = scorer.results()      # [(total (B,), {name: (B,)}), ...] in submission order

The reward runs exactly as it would synchronously (same inputs, same order, one call at a time, no
autograd, the samples' CUDA device current), so the scores, and everything computed from them, are
identical to the synchronous path. With overlap=False `submit` scores at once. Sampling and the reward
overlap as far as they release the GIL: torch kernels, PIL encoders, HTTP waits, sleeps do.
"""
from __future__ import annotations

import contextlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import List, Sequence

import torch


def _score(reward_fn, samples: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict]):
    device = torch.cuda.device(samples.device) if samples.is_cuda else contextlib.nullcontext()
    with torch.no_grad(), device:     # grad mode and the current CUDA device are per thread
        return reward_fn(samples, prompts, metadata)


class OverlappedRewards:
    def __init__(self, reward_fn, overlap: bool = True):
        self.reward_fn = reward_fn
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="flowrl-reward") if overlap else None
        self.futures: List[Future] = []

    def submit(self, samples: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict]) -> None:
        """Queue one batch (B, ...) for scoring; raises at once the error of an earlier batch, if any."""
        for f in self.futures:
            if f.done() and f.exception() is not None:
                raise f.exception()
        if self.executor is None:
            f = Future()
            f.set_result(_score(self.reward_fn, samples, prompts, metadata))
        else:
            f = self.executor.submit(_score, self.reward_fn, samples, list(prompts), list(metadata))
        self.futures.append(f)

    def results(self) -> list:
        """Every submitted batch's reward output, in submission order (waits for the last ones), then
        stops the worker; the first error raised by the reward is raised here."""
        try:
            return [f.result() for f in self.futures]
        finally:
            if self.executor is not None:
                self.executor.shutdown(wait=True, cancel_futures=True)
