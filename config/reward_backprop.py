"""Reward backprop (DRTune / AlignProp; seed 004): differentiable rewards only.
Pick one with `--config reward_backprop.py:NAME`. The reward rises within a few optimizer steps, but
direct reward gradients hack the reward and collapse diversity (seed 004): watch eval_diversity and
the diversity alarm; algorithm.w2_coefficient > 0 (pull toward the base velocity) slows the collapse."""
import ml_collections

from flowrl.config import sibling

grpo = sibling(__file__, "grpo")


def moons():
    """Two moons unlearning through the classifier's gradient (moons_unlearning is differentiable);
    pure DRTune (no regulariser), every ODE step trained. Measured: eval reward 0.517 -> 1.0 and Vendi
    diversity 5.0 -> ~1.7 (samples gather on the middle of the upper moon: the alarm fires)."""
    c = grpo.moons()
    c.algorithm = ml_collections.ConfigDict({"name": "reward_backprop", "last_k": 0,
                                             "w2_coefficient": 0.0, "grad_chunk": 0})
    c.sample.group_size = 1          # no groups: every sample stands alone
    c.num_epochs = 10
    c.train.lr = 3e-4
    return c


def moons_w2():
    """`moons` with the W2 pull to the base (alpha 0.1): reward 0.517 -> ~0.95, the whole upper moon
    kept (Vendi ~3)."""
    c = moons()
    c.algorithm.w2_coefficient = 0.1
    c.train.lr = 1e-3
    return c


def moons_fidelity():
    """Two moons fidelity (closeness to the moons' centre circles) through its gradient:
    0.863 -> ~0.93 in 20 epochs (seed 000's PPO: 0.875 -> 0.923)."""
    c = moons()
    c.reward.weights = ml_collections.ConfigDict({"moons_fidelity": 1.0})
    c.num_epochs = 20
    c.train.lr = 1e-4
    c.eval.diversity_alarm_fraction = 0.5
    return c


def digits():
    """Class-conditional 8x8 digits through the digit classifier's gradient (differentiable)."""
    c = grpo.digits()
    c.algorithm = ml_collections.ConfigDict({"name": "reward_backprop", "last_k": 0,
                                             "w2_coefficient": 0.1, "grad_chunk": 0})
    c.sample.group_size = 1
    c.train.lr = 1e-4
    return c

EXPERIMENTS = {"moons": moons, "moons_w2": moons_w2, "moons_fidelity": moons_fidelity,
               "digits": digits}


def get_config(name="moons"):
    if name not in EXPERIMENTS:
        raise KeyError(f"reward_backprop.py has no experiment {name!r}; known: {sorted(EXPERIMENTS)}")
    return EXPERIMENTS[name]()
