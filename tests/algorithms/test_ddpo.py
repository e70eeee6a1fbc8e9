import pytest
import torch

from flowrl.algorithms.ddpo import DDPO
from flowrl.batch import Batch


def _prepare(algo, rewards, prompt_ids):
    n = len(rewards)
    batch = Batch({"latents": torch.zeros(n, 2, 2)})
    gathered = Batch({"rewards": torch.tensor(rewards), "prompt_ids": torch.tensor(prompt_ids),
                      "group_ids": torch.arange(n)})
    algo.prepare(None, batch, gathered, slice(0, n))
    return batch["advantages"]


def test_tracker_advantages_per_prompt_once_warm():
    algo = DDPO(buffer_size=8, min_count=2)
    a = _prepare(algo, [0.0, 2.0, 10.0, 30.0], [0, 0, 1, 1])
    assert a.tolist() == pytest.approx([-1, 1, -1, 1], abs=1e-5)   # each prompt has 2 >= min_count


def test_tracker_state_round_trips_for_resume():
    algo = DDPO(buffer_size=8, min_count=3)
    _prepare(algo, [0.0, 2.0], [5, 5])
    again = DDPO(buffer_size=8, min_count=3)
    again.load_state_dict(algo.state_dict())
    assert torch.equal(_prepare(algo, [4.0], [5]), _prepare(again, [4.0], [5]))


def test_without_tracker_uses_batch_statistics():
    a = _prepare(DDPO(per_prompt_stat_tracking=False), [1.0, 3.0], [0, 1])
    assert a.tolist() == pytest.approx([-1, 1], abs=1e-5)


def test_advantages_are_clipped_to_adv_clip_max():
    # rewards 0 x 9 and 1: mean 0.1, population std 0.3 -> the outlier's advantage (1 - 0.1)/0.3 = 3,
    # the others -1/3; adv_clip_max 2 cuts the outlier to 2
    a = _prepare(DDPO(per_prompt_stat_tracking=False, adv_clip_max=2.0), [0.0] * 9 + [1.0], list(range(10)))
    assert a[-1].item() == pytest.approx(2.0) and a[:-1].tolist() == pytest.approx([-1 / 3] * 9, rel=1e-4)


def test_batch_statistics_add_eps_to_the_std():
    # rewards 0 and 2e-6: population std 1e-6, + eps 1e-6 -> advantages -+1e-6 / 2e-6 = -+0.5
    a = _prepare(DDPO(per_prompt_stat_tracking=False), [0.0, 2e-6], [0, 1])
    assert a.tolist() == pytest.approx([-0.5, 0.5], rel=1e-3)
