"""OverlappedRewards: the same outputs, in submission order, as calling the reward synchronously; the
reward runs while the caller goes on; its errors surface; no autograd in the worker."""
import threading
import time

import pytest
import torch

from flowrl.rewards.overlap import OverlappedRewards


def slow_reward(delays):
    """Scores = sum of each sample; batch k sleeps delays[k] (later batches finish FIRST if unordered)."""
    calls = []

    def fn(samples, prompts, metadata):
        calls.append((threading.current_thread().name, torch.is_grad_enabled()))
        time.sleep(delays[len(calls) - 1])
        return samples.flatten(1).sum(1) * 2, {"part": samples.flatten(1).sum(1)}
    return fn, calls


@pytest.mark.parametrize("overlap", [False, True])
def test_same_results_in_submission_order(overlap):
    batches = [torch.randn(3, 4, generator=torch.Generator().manual_seed(b)) for b in range(4)]
    fn, calls = slow_reward([0.04, 0.0, 0.02, 0.0])
    scorer = OverlappedRewards(fn, overlap=overlap)
    for x in batches:
        scorer.submit(x.requires_grad_(), ["p"] * 3, [{}] * 3)
    out = scorer.results()
    for x, (total, parts) in zip(batches, out):
        assert torch.equal(total, x.detach().sum(1) * 2) and torch.equal(parts["part"], x.detach().sum(1))
        assert not total.requires_grad
    assert all(name.startswith("flowrl-reward") == overlap for name, _ in calls)
    assert not any(grad for _, grad in calls)


def test_the_reward_runs_while_the_caller_works():
    fn, _ = slow_reward([0.2] * 3)
    scorer = OverlappedRewards(fn, overlap=True)
    t0 = time.perf_counter()
    for _ in range(3):
        scorer.submit(torch.zeros(2, 2), ["", ""], [{}, {}])
        time.sleep(0.2)                 # "sampling" the next batch
    scorer.results()
    assert time.perf_counter() - t0 < 0.2 * 6 * 0.85    # sum would be 1.2 s; overlapped ~0.8 s


def test_an_error_of_an_earlier_batch_surfaces():
    def bad(samples, prompts, metadata):
        raise ValueError("reward exploded")
    scorer = OverlappedRewards(bad, overlap=True)
    scorer.submit(torch.zeros(1, 2), [""], [{}])
    time.sleep(0.05)
    with pytest.raises(ValueError, match="exploded"):
        scorer.submit(torch.zeros(1, 2), [""], [{}])
    with pytest.raises(ValueError, match="exploded"):
        scorer.results()
