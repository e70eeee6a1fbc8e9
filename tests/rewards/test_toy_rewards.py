import pytest
import torch

from flowrl.rewards import build_reward, check_scores
from flowrl.rewards.toy import fidelity_reward


def test_fidelity_reward_known_points():
    r = fidelity_reward(torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]))
    assert r.tolist() == pytest.approx([1.0, 0.75, 1.0])


def test_unlearning_reward_separates_the_moons(tmp_path):
    fn = build_reward({"moons_unlearning": 1.0}, {"moons_unlearning": {"cache_dir": str(tmp_path)}}, "cpu")
    total, parts = fn(torch.tensor([[0.0, 1.0], [1.0, -0.5]]), ["", ""], [{}, {}])
    assert total[0] > 0.9 and total[1] < 0.1          # upper moon top vs lower moon bottom
    assert torch.equal(parts["moons_unlearning"], total)


def test_weighted_sum_of_rewards():
    fn = build_reward({"moons_fidelity": 2.0}, {}, "cpu")
    total, _ = fn(torch.tensor([[0.0, 0.0]]), [""], [{}])
    assert total.item() == pytest.approx(1.5)


def test_metrics_are_logged_but_add_nothing(tmp_path):
    fn = build_reward({"moons_fidelity": 2.0}, {"moons_unlearning": {"cache_dir": str(tmp_path)}}, "cpu",
                      metrics=("moons_unlearning",))
    total, parts = fn(torch.tensor([[0.0, 1.0]]), [""], [{}])   # top of the upper moon: fidelity 1
    assert total.item() == pytest.approx(2.0) and parts["moons_unlearning"].item() > 0.9
    assert fn.weights == {"moons_fidelity": 2.0, "moons_unlearning": 0.0}
    with pytest.raises(KeyError, match="metrics.*binary_1e"):
        build_reward({"moons_fidelity": 1.0}, {}, "cpu", metrics=("binary_1e",))


def test_bad_scores_name_the_reward():
    with pytest.raises(ValueError, match="'r'.*NaN"):
        check_scores("r", torch.tensor([1.0, float("nan")]), 2)
    with pytest.raises(ValueError, match="'r' returned shape \\(3,\\)"):
        check_scores("r", torch.zeros(3), 2)


def test_unknown_reward_suggests_a_name():
    with pytest.raises(KeyError, match="moons_fidelity"):
        build_reward({"moons_fidelty": 1.0}, {}, "cpu")
