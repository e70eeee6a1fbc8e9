"""Value Matching experiments (seed 002; cristianpjensen/diffusiongym). Pick one with
`--config value_matching.py:NAME`. The base policy is frozen; only the value network V(x, t) trains.

NOTE: the trainer's evaluation samples the policy's plain ODE, which ignores the control, so
`eval_reward` stays at the base model's; the controlled samples' reward is `reward_mean` (training
rollouts). See flowrl.algorithms.value_matching.ValueMatching.eval_sample for the sampler to use.
"""
import ml_collections

from flowrl.config import sibling

grpo = sibling(__file__, "grpo")


def _value_matching(c, reward_scale: float, hidden: int, depth: int, cond_classes: int = 0):
    c.algorithm = ml_collections.ConfigDict({"name": "value_matching", "reward_scale": reward_scale,
                                             "t_min": 0.02, "hidden": hidden, "depth": depth,
                                             "scale_input": True, "cond_classes": cond_classes})
    c.train.adam_weight_decay = 0.0
    c.train.max_grad_norm = 1.0        # flow_gym clips at 1
    c.train.num_inner_epochs = 1
    c.eval.every = 0                   # the ODE evaluation ignores the control (see above)
    c.eval.diversity_alarm_fraction = 0.0
    return c


def gmm_binary():
    """1-D: base 1/2 N(0,1) + 1/2 N(3, 0.4^2) (exact velocity), reward 1[0 <= x <= 1], lambda = 1:
    the reward-1 fraction should move from P = 0.1707 to e P / (e P + 1 - P) = 0.359.
    One process: 256 controlled rollouts of 50 SDE steps per epoch, one optimizer step each."""
    c = grpo.moons()
    c.model = ml_collections.ConfigDict({"name": "gmm1d", "means": [0.0, 3.0], "stds": [1.0, 0.4],
                                         "weights": [0.5, 0.5], "shift": 1.0})
    c.num_epochs = 300
    c.sample.num_steps = 50
    c.sample.eval_num_steps = 50
    c.sample.batch_size = 256
    c.sample.num_batches_per_epoch = 1
    c.sample.group_size = 256
    c.train.batch_size = 256
    c.train.lr = 3e-3
    c.reward.weights = ml_collections.ConfigDict({"binary_1d": 1.0})
    c.eval.num_samples = 1000
    c.eval.batch_size = 1000
    c.checkpoint.every = 100
    return _value_matching(c, reward_scale=1.0, hidden=64, depth=2)


def moons():
    """2-D moons unlearning: reward P(upper moon) in [0, 1], lambda = 5 (optimum: the upper moon
    weighted e^5 : 1). 512 controlled rollouts of 50 steps per epoch, 4 optimizer steps."""
    c = grpo.moons()
    c.num_epochs = 60
    c.sample.num_steps = 50
    c.train.lr = 1e-3
    return _value_matching(c, reward_scale=5.0, hidden=128, depth=3)


def digits():
    """Class-conditional 8x8 digits (grpo.py:digits' model, prompts and reward P(asked digit)): V sees
    the prompt (labels 0-9 + null, one-hot: cond_classes 11), lambda = 10; 160 controlled rollouts
    of 50 steps per epoch (16 per digit). Measured (1 thread, 19 s): controlled-SDE eval reward
    0.715 -> 0.748 in 60 epochs (lambda 5, lr 1e-3, 30 epochs: 0.717); the value network learns
    from scratch and is the slowest method here."""
    c = grpo.digits()
    c.num_epochs = 60
    c.sample.num_steps = 50
    c.train.lr = 3e-3
    return _value_matching(c, reward_scale=10.0, hidden=256, depth=3, cond_classes=11)


EXPERIMENTS = {"gmm_binary": gmm_binary, "moons": moons, "digits": digits}


def get_config(name="gmm_binary"):
    if name not in EXPERIMENTS:
        raise KeyError(f"value_matching.py has no experiment {name!r}; known: {sorted(EXPERIMENTS)}")
    return EXPERIMENTS[name]()
