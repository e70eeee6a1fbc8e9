"""Flow-GRPO experiments. Pick one with `--config grpo.py:NAME`."""
import ml_collections

from flowrl.config import sibling

base = sibling(__file__, "base")


def moons():
    """Two moons, unlearn the lower moon: reward = P(upper moon) (seed 000, 0.507 -> 0.899 with PPO).
    One process: 4 batches of 128 = 512 samples per epoch, one group (an unconditional model)."""
    c = base.get_config()
    c.model = ml_collections.ConfigDict({
        "name": "toy2d", "dataset": "moons", "hidden": 256, "depth": 3, "base_iters": 4000,
        "base_batch": 256, "base_lr": 3e-3, "base_seed": 0, "shift": 1.0})
    c.num_epochs = 30
    c.sample.num_steps = 10
    c.sample.eval_num_steps = 20
    c.sample.noise_level = 0.7
    c.sample.batch_size = 128
    c.sample.num_batches_per_epoch = 4
    c.sample.group_size = 512        # = 128 x 4 x 1 process: the whole epoch is one group
    c.sample.timestep_fraction = 1.0
    c.train.batch_size = 128
    c.train.gradient_accumulation_steps = 1
    c.train.lr = 1e-3
    c.train.adam_weight_decay = 0.0
    c.algorithm.clip_range = 0.2
    c.algorithm.beta = 0.2
    c.reward.weights = ml_collections.ConfigDict({"moons_unlearning": 1.0})
    c.eval.every = 5
    c.eval.num_samples = 1000
    c.eval.batch_size = 1000
    c.checkpoint.every = 10
    return c


def moons_fidelity():
    """Two moons, sharpen the shape: fidelity reward (seed 000, 0.875 -> 0.923 with PPO)."""
    c = moons()
    c.reward.weights = ml_collections.ConfigDict({"moons_fidelity": 1.0})
    return c


EXPERIMENTS = {"moons": moons, "moons_fidelity": moons_fidelity}


def get_config(name="moons"):
    if name not in EXPERIMENTS:
        raise KeyError(f"grpo.py has no experiment {name!r}; known: {sorted(EXPERIMENTS)}")
    return EXPERIMENTS[name]()
