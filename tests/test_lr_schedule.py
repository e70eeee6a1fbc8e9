"""Learning-rate schedules: hand-computed factors, and the optimizer's groups follow them."""
import math

import ml_collections
import pytest
import torch

from flowrl.config import ConfigError, load_config
from flowrl.lr_schedule import apply_lr_schedule, lr_factor


def test_factors_by_hand():
    assert lr_factor("constant", 7, 10, 0.1) == 1.0
    # linear, final 0.1 over 10 epochs: 1 - 0.9 * 5/10 = 0.55; from epoch 10 on: 0.1
    assert lr_factor("linear", 0, 10, 0.1) == 1.0
    assert lr_factor("linear", 5, 10, 0.1) == pytest.approx(0.55)
    assert lr_factor("linear", 10, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor("linear", 25, 10, 0.1) == pytest.approx(0.1)
    # cosine over 4 epochs: epoch 1 -> 0.1 + 0.9 (1 + cos(pi/4)) / 2 = 0.1 + 0.45 * 1.70711 = 0.86820
    assert lr_factor("cosine", 1, 4, 0.1) == pytest.approx(0.868198, abs=1e-6)
    assert lr_factor("cosine", 2, 4, 0.0) == pytest.approx(0.5)
    assert lr_factor("cosine", 4, 4, 0.2) == pytest.approx(0.2)


def test_bad_schedules_are_refused():
    with pytest.raises(ValueError, match="unknown"):
        lr_factor("step", 0, 10)
    with pytest.raises(ValueError, match="decay_epochs >= 1"):
        lr_factor("linear", 0, 0)
    with pytest.raises(ConfigError, match="train.lr_schedule='cosin'.*one of"):
        load_config("grpo.py:moons", ["train.lr_schedule=cosin"])
    with pytest.raises(ConfigError, match="train.lr_final=1.5"):
        load_config("grpo.py:moons", ["train.lr_final=1.5"])


def test_apply_sets_every_group_and_decays_over_num_epochs_by_default():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW([{"params": [a]}, {"params": [b]}], lr=1.0)
    train = ml_collections.ConfigDict({"lr": 2e-3, "lr_schedule": "linear", "lr_decay_epochs": 0,
                                       "lr_final": 0.5})
    lr = apply_lr_schedule(opt, train, epoch=2, num_epochs=4)      # 2e-3 * (1 - 0.5 * 2/4) = 1.5e-3
    assert lr == pytest.approx(1.5e-3)
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(1.5e-3)] * 2
    train.lr_decay_epochs = 8                                       # 2e-3 * (1 - 0.5 * 2/8)
    assert apply_lr_schedule(opt, train, 2, 4) == pytest.approx(2e-3 * 0.875)
    assert math.isclose(apply_lr_schedule(opt, ml_collections.ConfigDict({"lr": 1e-3}), 3, 4), 1e-3)
