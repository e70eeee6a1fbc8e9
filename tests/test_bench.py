import math

import numpy as np
import pytest

from flowrl.bench import (band, first_reaching, learning_curve, mean_interval, on_grid,
                          paired_standard_error, standard_error, t_quantile_975)


def test_standard_error_by_hand():
    assert standard_error([2.0, 4.0]) == pytest.approx(1.0)          # std sqrt(2), / sqrt(2)
    assert math.isnan(standard_error([1.0]))


def test_mean_interval_three_seeds_by_hand():
    s = mean_interval([1.0, 2.0, 3.0])                               # std 1, se 1/sqrt(3), t_2 = 4.303
    assert s["mean"] == pytest.approx(2.0) and s["n"] == 3
    assert s["half"] == pytest.approx(4.303 / math.sqrt(3))
    assert (s["lo"], s["hi"]) == pytest.approx((2 - 2.48434, 2 + 2.48434), abs=1e-4)
    one = mean_interval([0.5, float("nan")])
    assert one["n"] == 1 and one["half"] == 0.0 and one["mean"] == 0.5
    assert t_quantile_975(1) == 12.706 and t_quantile_975(100) == 1.96


def test_learning_curve_accumulates_work_and_samples():
    rows = [{"epoch": 0, "eval_reward": 0.5},
            {"epoch": 1, "time_collect": 1.0, "time_train": 2.0, "reward_samples_per_rank": [4, 4]},
            {"epoch": 2, "time_collect": 1.0, "time_train": 1.0, "reward_samples_per_rank": [8],
             "eval_reward": 0.7}]
    c = learning_curve(rows)
    assert c["seconds"].tolist() == [0.0, 5.0] and c["samples"].tolist() == [0.0, 16.0]
    assert c["values"].tolist() == [0.5, 0.7] and c["epochs"].tolist() == [0.0, 2.0]


def test_first_reaching_is_the_first_evaluation_at_or_above():
    assert first_reaching([0, 5, 10], [0.5, 0.7, 0.8], 0.7) == 5.0
    assert first_reaching([0, 5, 10], [0.5, 0.7, 0.8], 0.9) is None


def test_on_grid_interpolates_inside_and_not_outside():
    g = on_grid([0, 10], [0.0, 1.0], [-1, 0, 5, 10, 11])
    assert np.isnan(g[0]) and np.isnan(g[-1])
    assert g[1:4].tolist() == [0.0, 0.5, 1.0]


def test_band_over_defined_curves_only():
    b = band(np.array([[0.0, 1.0], [2.0, np.nan]]))
    assert b["mean"].tolist() == [1.0, 1.0] and b["n"].tolist() == [2, 1]
    assert b["lo"][0] == pytest.approx(1 - 12.706) and b["hi"][0] == pytest.approx(1 + 12.706)
    assert np.isnan(b["lo"][1]) and np.isnan(b["hi"][1])


def test_paired_standard_error_by_hand():
    # differences 1, 3: std sqrt(2) / sqrt(2) = 1
    assert paired_standard_error([1.0, 4.0], [0.0, 1.0]) == pytest.approx(1.0)


def test_run_summary_of_a_two_evaluation_run():
    rows = [{"epoch": 0, "eval_reward": 0.5, "eval_scene_accuracy": 0.1, "eval_diversity": 20.0},
            {"epoch": 1, "time_collect": 2.0, "time_train": 2.0, "reward_samples_per_rank": [128],
             "eval_reward": 0.6, "eval_scene_accuracy": 0.2, "eval_diversity": 30.0},
            {"epoch": 2, "time_collect": 2.0, "time_train": 3.0, "reward_samples_per_rank": [128],
             "eval_reward": 0.8, "eval_scene_accuracy": 0.4, "eval_diversity": 10.0,
             "eval_scene_extra_objects": 2.5}]
    from flowrl.bench import run_summary
    s = run_summary(rows, target=0.7)
    assert (s["reward_base"], s["reward"], s["accuracy"]) == (0.5, 0.8, 0.4)
    assert s["diversity_kept"] == pytest.approx(0.5) and s["seconds"] == 9.0 and s["samples"] == 256
    assert (s["seconds_to_target"], s["samples_to_target"], s["epochs_to_target"]) == (9.0, 256.0, 2.0)
    assert run_summary(rows, target=0.9)["seconds_to_target"] is None
    assert (s["extra_base"], s["extra"]) == (None, 2.5)       # not logged at the base evaluation
    assert s["curve_seconds"] == [0.0, 4.0, 9.0] and s["curve_accuracy"] == [0.1, 0.2, 0.4]


def test_variance_split_by_hand():
    from flowrl.bench import variance_split
    # one prompt, x0 #0 -> rewards 0, 1 ; x0 #1 -> 1, 1: total var of (0,1,1,1) = 0.1875
    v = variance_split([[[0.0, 1.0], [1.0, 1.0]]])
    assert v["total"] == pytest.approx(0.1875) and v["window"] == pytest.approx(0.125)
    assert v["initial"] == pytest.approx(0.0625) and v["window_fraction"] == pytest.approx(2 / 3)
    assert v["zero_same_x0"] == 0.5 and v["zero_mixed"] == 0.0


def test_phase_split_drops_the_warm_up_epoch():
    from flowrl.bench import phase_split
    rows = [{"epoch": 0, "eval_reward": 0.5},
            {"epoch": 1, "time_sample": 9.0, "time_train": 9.0, "time_collect": 9.0},
            {"epoch": 2, "time_sample": 2.0, "time_reward": 1.0, "time_train": 3.0, "time_collect": 3.5},
            {"epoch": 3, "time_sample": 4.0, "time_reward": 1.0, "time_train": 5.0, "time_collect": 5.5,
             "cpu_collect": 3.0, "cpu_train": 4.0}]
    s = phase_split(rows)
    assert (s["sample"], s["reward"], s["train"], s["decode"]) == (3.0, 1.0, 4.0, 0.0)
    assert s["epoch"] == 8.5
    assert s["cpu_epoch"] == 3.5          # (0 + 7) / 2: epoch 2 logged no CPU times


def test_learning_curve_on_the_cpu_clock():
    rows = [{"epoch": 0, "eval_reward": 0.5},
            {"epoch": 1, "time_collect": 9.0, "time_train": 9.0, "cpu_collect": 1.0, "cpu_train": 2.5,
             "eval_reward": 0.6}]
    assert learning_curve(rows, clock="cpu")["seconds"].tolist() == [0.0, 3.5]


def test_per_rank_overrides_keep_the_global_batches():
    from types import SimpleNamespace
    from flowrl.bench import per_rank_overrides
    c = SimpleNamespace(sample=SimpleNamespace(batch_size=32), train=SimpleNamespace(batch_size=32))
    assert per_rank_overrides(c, 2) == ["sample.batch_size=16", "train.batch_size=16"]
    assert per_rank_overrides(c, 1) == ["sample.batch_size=32", "train.batch_size=32"]
    c.train.batch_size = 30
    with pytest.raises(ValueError, match=r"train.batch_size.*30.*4 processes"):
        per_rank_overrides(c, 4)
    with pytest.raises(ValueError, match=r"0 processes.*>= 1"):
        per_rank_overrides(c, 0)


def test_best_of_n_by_hand_and_against_every_subset():
    from itertools import combinations

    from flowrl.bench import best_of_n
    # one prompt, keys 0.1 / 0.5 / 0.9: best of 2 over the 3 pairs = (0.5 + 0.9 + 0.9) / 3
    assert best_of_n([[0.1, 0.9, 0.5]], {"r": [[0.1, 0.9, 0.5]]}, 2)["r"] == pytest.approx([2.3 / 3])
    assert best_of_n([[0.1, 0.9, 0.5]], {"r": [[0.1, 0.9, 0.5]]}, 1)["r"] == pytest.approx([0.5])
    assert best_of_n([[0.1, 0.9, 0.5]], {"r": [[0.1, 0.9, 0.5]]}, 3)["r"] == pytest.approx([0.9])
    # a second measure read at the key's pick; two prompts averaged
    rng = np.random.default_rng(0)
    key, other = rng.random((2, 6)), rng.random((2, 6))
    for n in range(1, 7):
        brute = [np.mean([o[list(s)][np.argmax(kk[list(s)])] for s in combinations(range(6), n)])
                 for kk, o in zip(key, other)]
        assert best_of_n(key, {"o": other}, n)["o"] == pytest.approx(brute)
    # tied keys share their measure's mean: keys (1, 1), measures (0, 2) -> the pick is worth 1
    assert best_of_n([[1.0, 1.0]], {"m": [[0.0, 2.0]]}, 2)["m"] == pytest.approx([1.0])
    with pytest.raises(ValueError, match="1 <= n <= K"):
        best_of_n([[0.1, 0.2]], {"r": [[0.1, 0.2]]}, 3)
