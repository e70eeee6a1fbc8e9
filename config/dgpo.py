"""DGPO experiments (Direct Group Preference Optimization, Luo-Yihong/DGPO). Pick one with
`--config dgpo.py:NAME`.

Deterministic (ODE) rollouts; each prompt group is split by its advantages into a preferred and a
dispreferred part and trained with a group-level DPO loss on the flow-matching errors of its own
final samples, relative to the frozen base (noise shared within a group).
"""
import ml_collections

from flowrl.config import sibling

grpo = sibling(__file__, "grpo")


def _algorithm(**over):
    a = {"name": "dgpo", "beta_dpo": 100.0, "kl_beta": 0.0, "adv_clip_max": 5.0, "std_per_group": True,
         "timestep_fraction": 0.5, "timesteps_per_sample": 0, "seed": 0}
    a.update(over)
    return ml_collections.ConfigDict(a)


def moons():
    """Two moons unlearning; grpo.py:moons' model and evaluation, 512 samples per epoch in 8 groups
    of 64 (a group is the unit of preference; one minibatch holds whole groups)."""
    c = grpo.moons()
    c.algorithm = _algorithm()
    c.sample.group_size = 64
    c.train.lr = 1e-3
    return c


def tiny_geneval():
    """The tiny text-to-image world (grpo.py:tiny_geneval's model, prompts, batches and evaluation)
    with DGPO on LoRA: ODE rollouts with CFG 4.5, 16 groups of 8 per epoch (4 minibatches of 4
    whole groups), 3 shared sigmas per group from the first half of the schedule, beta_dpo 100."""
    c = grpo.tiny_geneval()
    c.algorithm = _algorithm(timesteps_per_sample=3)
    c.sample.sde_window_size = 0
    # Measured (1 thread, base 0.500), neither learns in a few epochs: lr 1e-3 0.492 / 0.503 at epochs
    # 4 / 8 (Vendi 29 / 28); lr 3e-3 0.518 / 0.499 at epochs 3 / 6 with Vendi falling to 21. The group
    # weights sigmoid(S_g) stay at ~0.5, i.e. the loss is ~1/2 A e on high-noise sigmas only.
    c.train.lr = 1e-3
    c.num_epochs = 30
    return c


EXPERIMENTS = {"moons": moons, "tiny_geneval": tiny_geneval}


def get_config(name="moons"):
    if name not in EXPERIMENTS:
        raise KeyError(f"dgpo.py has no experiment {name!r}; known: {sorted(EXPERIMENTS)}")
    return EXPERIMENTS[name]()
