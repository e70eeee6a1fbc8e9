"""DDPO / PPO experiments (seed 000: PPO on two moons). Pick one with `--config ddpo.py:NAME`."""
import ml_collections

from flowrl.config import sibling

grpo = sibling(__file__, "grpo")


def moons():
    """Two moons unlearning with DDPO: per-prompt stat tracking (one prompt here), no KL."""
    c = grpo.moons()
    c.algorithm = ml_collections.ConfigDict({
        "name": "ddpo", "clip_range": 0.2, "adv_clip_max": 5.0, "per_prompt_stat_tracking": True,
        "buffer_size": 1024, "min_count": 512, "beta": 0.2})
    return c


def moons_fidelity():
    c = moons()
    c.reward.weights = ml_collections.ConfigDict({"moons_fidelity": 1.0})
    return c


EXPERIMENTS = {"moons": moons, "moons_fidelity": moons_fidelity}


def tiny_geneval():
    """The tiny text-to-image world (grpo.py:tiny_geneval: model, prompts, sampling, evaluation) with
    DDPO: per-prompt stat tracking (each train prompt's last 32 rewards, batch statistics until 8
    are in), the clipped ratio on the SDE window, a small KL to the base. Measured (CPU, 1 thread,
    30 epochs): held-out reward 0.485 -> 0.669, strict accuracy 0.097 -> 0.301 (Vendi 26 -> 50)."""
    c = grpo.tiny_geneval()
    c.algorithm = ml_collections.ConfigDict({
        "name": "ddpo", "clip_range": 1e-2, "adv_clip_max": 5.0, "per_prompt_stat_tracking": True,
        "buffer_size": 32, "min_count": 8, "beta": 0.004})
    c.num_epochs = 30
    c.train.lr = 3e-3                 # measured at 3e-3 (grpo.py:tiny_geneval uses 1e-3)
    return c


EXPERIMENTS["tiny_geneval"] = tiny_geneval


def get_config(name="moons"):
    if name not in EXPERIMENTS:
        raise KeyError(f"ddpo.py has no experiment {name!r}; known: {sorted(EXPERIMENTS)}")
    return EXPERIMENTS[name]()


def digits():
    """8x8 digits (grpo.py:digits: same model, prompts, reward, batches and lr) with DDPO: per-prompt
    stat tracking over the last 64 rewards of each digit (16 per epoch), clipped ratio, and a small KL
    to the base: with beta 0 at lr 1e-3 the reward collapses to 0 within 15 epochs (lr 3e-4 without
    KL works too: 0.81 -> 0.97 in 30 epochs). Measured: eval reward 0.808 -> 0.993 in 30 epochs."""
    c = grpo.digits()
    c.algorithm = ml_collections.ConfigDict({
        "name": "ddpo", "clip_range": 0.2, "adv_clip_max": 5.0, "per_prompt_stat_tracking": True,
        "buffer_size": 64, "min_count": 16, "beta": 0.01})
    return c


EXPERIMENTS["digits"] = digits
