"""The non-finite guard: NaN/inf losses and gradients never reach the optimizer (stop or skip), no
checkpoint holds non-finite state, and errors name the epoch, the step and what went non-finite."""
import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from flowrl.checkpoint import list_checkpoints
from flowrl.config import ConfigError
from flowrl.guards import NonFiniteError, StepGuard, check_state_finite
from flowrl.registry import REWARDS
from flowrl.trainer import Trainer


def make_guard(accumulate=1, mode="stop", max_bad=2):
    acc = Accelerator(cpu=True, gradient_accumulation_steps=accumulate)
    net = torch.nn.Linear(2, 1)
    with torch.no_grad():
        net.weight.fill_(0.5), net.bias.fill_(0.0)
    model, opt = acc.prepare(net, torch.optim.SGD(net.parameters(), lr=0.1))
    return acc, model, opt, StepGuard(acc, opt, list(net.parameters()), 1e9, mode, max_bad)


def step(acc, model, guard, scale, epoch=1, n=1):
    with acc.accumulate(model):
        return guard.backward_and_step(model(torch.ones(1, 2)).sum() * scale, epoch, n)


def test_a_nan_loss_is_skipped_and_stop_raises_after_max_consecutive_naming_epoch_and_step():
    acc, model, opt, guard = make_guard(max_bad=2)
    w0 = model.weight.detach().clone()
    assert step(acc, model, guard, float("nan")) is None
    assert torch.equal(model.weight, w0) and model.weight.grad is None   # never reached the weights
    assert step(acc, model, guard, 1.0) == pytest.approx(3 ** 0.5)      # finite: applied, streak reset
    assert torch.allclose(model.weight, w0 - 0.1)
    step(acc, model, guard, float("inf"))
    with pytest.raises(NonFiniteError, match=r"epoch 4, optimizer step 7: non-finite loss .* 2 consecutive"):
        step(acc, model, guard, float("nan"), epoch=4, n=7)
    assert guard.pop_skipped() == 3 and guard.pop_skipped() == 0


def test_an_inf_gradient_with_a_finite_loss_is_caught():
    acc, model, opt, guard = make_guard(max_bad=1)
    with acc.accumulate(model), pytest.raises(NonFiniteError, match="non-finite gradient norm"):
        x = torch.zeros(1, 2, requires_grad=False)
        guard.backward_and_step(model(x).sum() + torch.sqrt(model.bias * 0).sum(), 1, 1)   # d sqrt(0) = inf


def test_with_grad_accumulation_one_bad_microbatch_drops_the_whole_window():
    acc, model, opt, guard = make_guard(accumulate=2, mode="skip")
    w0 = model.weight.detach().clone()
    assert step(acc, model, guard, float("nan")) is None   # first microbatch: accumulate only
    assert step(acc, model, guard, 1.0) is None            # boundary: the window had a NaN -> skipped
    assert torch.equal(model.weight, w0) and guard.pop_skipped() == 1
    step(acc, model, guard, 1.0)
    assert step(acc, model, guard, 1.0) is not None        # a clean window: only its own gradients
    assert torch.allclose(model.weight, w0 - 0.1)          # mean of 2 clean microbatches, no NaN left over


def test_bad_modes_and_checkpoint_state_checks():
    acc, model, opt, _ = make_guard()
    with pytest.raises(ConfigError, match="train.nonfinite"):
        StepGuard(acc, opt, [], 1.0, "ignore")
    check_state_finite({"w": torch.ones(2)}, {"state": {0: {"exp_avg": torch.ones(2)}}}, 3)
    with pytest.raises(NonFiniteError, match=r"epoch 3: non-finite weights \['w'\]"):
        check_state_finite({"w": torch.tensor([1.0, float("nan")])}, {}, 3)
    with pytest.raises(NonFiniteError, match="optimizer state"):
        check_state_finite({}, {"state": {0: {"exp_avg": torch.tensor([float("inf")])}}}, 3)


def nan_losses_from(trainer, epoch):
    """Fault injection: the algorithm's losses become NaN from `epoch` (1-based) on."""
    real = trainer.algorithm.loss_terms
    state = {"epoch": 0}
    real_epoch = trainer.epoch

    def epoch_fn(e):
        state["epoch"] = e + 1
        return real_epoch(e)

    def loss_terms(policy, mb, st):
        for loss, metrics in real(policy, mb, st):
            yield (loss * float("nan") if state["epoch"] >= epoch else loss), metrics
    trainer.algorithm.loss_terms, trainer.epoch = loss_terms, epoch_fn


def test_stop_keeps_the_newest_finite_checkpoint_even_with_keep_last_1(tmp_path, tiny_moons):
    cfg = tiny_moons("num_epochs=4", "checkpoint.every=1", "checkpoint.keep_last=1", "train.max_nonfinite_steps=1")
    trainer = Trainer(cfg, tmp_path / "run")
    nan_losses_from(trainer, 2)
    with pytest.raises(NonFiniteError, match=r"epoch 2, optimizer step 3: non-finite loss"):
        trainer.train()
    assert [e for e, _ in list_checkpoints(tmp_path / "run")] == [1]
    saved = load_file(tmp_path / "run" / "checkpoints" / "step_1" / "trainable.safetensors")
    assert all(torch.isfinite(v).all() for v in saved.values())
    assert all(torch.equal(saved[k], v) for k, v in trainer.policy.trainable_state_dict().items())
    assert Trainer(cfg, tmp_path / "run", resume=True).start_epoch == 1   # and it resumes


def test_skip_counts_skipped_steps_and_never_moves_the_weights(tmp_path, tiny_moons):
    trainer = Trainer(tiny_moons("num_epochs=2", "train.nonfinite=skip"), tmp_path / "run")
    nan_losses_from(trainer, 2)
    trainer.train()
    rows = trainer.log.read()
    assert [r.get("skipped_steps") for r in rows[1:]] == [0, 2]
    saved = load_file(tmp_path / "run" / "checkpoints" / "step_2" / "trainable.safetensors")
    assert all(torch.isfinite(v).all() for v in saved.values())


@REWARDS.register("test_nan_at_epoch_2", domain="2d")
def _nan_reward(device):
    calls = {"n": 0}

    def fn(samples, prompts, metadata):
        calls["n"] += 1            # 1: base eval, 2-3: epoch 1's batches, 4: epoch 2's first batch
        return torch.full((len(samples),), float("nan") if calls["n"] == 4 else 0.0)
    return fn


def test_a_nan_reward_names_the_epoch_and_the_reward(tmp_path, tiny_moons):
    cfg = tiny_moons("num_epochs=2")
    with cfg.unlocked():
        cfg.reward.weights = {"test_nan_at_epoch_2": 1.0}
    with pytest.raises(NonFiniteError, match=r"^epoch 2: reward 'test_nan_at_epoch_2' returned 16 non-finite"):
        Trainer(cfg, tmp_path / "run").train()


def test_lr_1e30_stops_with_a_clear_error_and_keeps_a_finite_resumable_checkpoint(tmp_path, tiny_moons):
    cfg = tiny_moons("num_epochs=4", "checkpoint.every=1", "checkpoint.keep_last=1", "train.lr=1e30")
    with pytest.raises(NonFiniteError, match=r"^epoch \d+: .*non-finite"):
        Trainer(cfg, tmp_path / "run").train()
    found = list_checkpoints(tmp_path / "run")
    assert found
    saved = load_file(found[-1][1] / "trainable.safetensors")
    assert all(torch.isfinite(v).all() for v in saved.values())
    Trainer(cfg, tmp_path / "run", resume=True)     # loads (the newest finite checkpoint was kept)
