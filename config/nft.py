"""DiffusionNFT experiments (NVlabs/DiffusionNFT). Pick one with `--config nft.py:NAME`.

Deterministic (ODE) rollouts: NFT is solver-agnostic and trains on the forward process of the final
samples; r = clip(A / adv_clip_max / 2 + 1/2, 0, 1) from group advantages.
"""
import ml_collections

from flowrl.config import sibling

grpo = sibling(__file__, "grpo")


def moons():
    """Two moons unlearning (reward P(upper moon)); grpo.py:moons' model, batches and evaluation."""
    c = grpo.moons()
    c.algorithm = ml_collections.ConfigDict({
        "name": "nft", "beta": 1.0, "adv_clip_max": 5.0, "std_per_group": False,
        "adaptive_weighting": True, "kl_beta": 0.0, "timesteps_per_sample": 0, "seed": 0,
        "old_batch_size": 512})
    c.num_epochs = 30
    c.train.lr = 1e-3
    return c


def moons_fidelity():
    """Fidelity reward (seed 000: 0.875 -> 0.923 with PPO). Without a KL the samples collapse onto
    the best circle (Vendi 5.0 -> 1.1); kl_beta 0.3 keeps the diversity (-> 4.7)."""
    c = moons()
    c.algorithm.kl_beta = 0.3
    c.reward.weights = ml_collections.ConfigDict({"moons_fidelity": 1.0})
    c.eval.diversity_alarm_fraction = 0.5
    return c


def digits():
    """Class-conditional 8x8 digits (grpo.py:digits' model, prompts, batches and evaluation)."""
    c = grpo.digits()
    c.algorithm = ml_collections.ConfigDict({
        "name": "nft", "beta": 1.0, "adv_clip_max": 5.0, "std_per_group": False,
        "adaptive_weighting": True, "kl_beta": 0.0, "timesteps_per_sample": 0, "seed": 0,
        "old_batch_size": 160})
    return c

EXPERIMENTS = {"moons": moons, "moons_fidelity": moons_fidelity, "digits": digits}


def tiny_geneval():
    """The tiny text-to-image world (grpo.py:tiny_geneval's model, prompts, batches and evaluation)
    with DiffusionNFT on LoRA: ODE rollouts with CFG (NFT trains CFG-free velocities on the forward
    process of the final latents), group advantages -> r in [0, 1]. Measured (CPU, 1 thread, 30
    epochs): held-out reward 0.485 -> 0.582, strict accuracy 0.097 -> 0.205 (Vendi 26 -> 31)."""
    c = grpo.tiny_geneval()
    c.algorithm = ml_collections.ConfigDict({
        "name": "nft", "beta": 1.0, "adv_clip_max": 5.0, "std_per_group": False,
        "adaptive_weighting": True, "kl_beta": 0.0, "timesteps_per_sample": 0, "seed": 0,
        "old_batch_size": 64})
    c.sample.sde_window_size = 0
    c.num_epochs = 30
    c.train.lr = 3e-3                 # measured at 3e-3 (grpo.py:tiny_geneval uses 1e-3)
    return c


EXPERIMENTS["tiny_geneval"] = tiny_geneval


def get_config(name="moons"):
    if name not in EXPERIMENTS:
        raise KeyError(f"nft.py has no experiment {name!r}; known: {sorted(EXPERIMENTS)}")
    return EXPERIMENTS[name]()
