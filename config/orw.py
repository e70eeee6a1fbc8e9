"""ORW-CFM-W2 experiments (seed 001). Pick one with `--config orw.py:NAME`."""
import ml_collections

from flowrl.config import sibling

grpo = sibling(__file__, "grpo")


def moons():
    """Two moons unlearning with reward-weighted flow matching + W2 to the base (alpha, tau)."""
    c = grpo.moons()
    c.algorithm = ml_collections.ConfigDict({
        "name": "orw_cfm_w2", "w2_coefficient": 0.1, "temperature": 10.0,
        "normalize_weights": True, "ot_pairing": True})
    c.num_epochs = 60
    c.train.lr = 1e-3
    c.train.num_inner_epochs = 2
    return c


def moons_fidelity():
    c = moons()
    c.reward.weights = ml_collections.ConfigDict({"moons_fidelity": 1.0})
    c.algorithm.temperature = 20.0
    return c


EXPERIMENTS = {"moons": moons, "moons_fidelity": moons_fidelity}


def get_config(name="moons"):
    if name not in EXPERIMENTS:
        raise KeyError(f"orw.py has no experiment {name!r}; known: {sorted(EXPERIMENTS)}")
    return EXPERIMENTS[name]()


def digits():
    """8x8 digits (grpo.py:digits: same model, prompts, reward and batches) with ORW-CFM-W2: ODE
    samples, weights exp(tau r) normalised to mean 1, W2 to the base with alpha."""
    c = grpo.digits()
    c.algorithm = ml_collections.ConfigDict({
        "name": "orw_cfm_w2", "w2_coefficient": 0.1, "temperature": 10.0,
        "normalize_weights": True, "ot_pairing": True})
    c.train.num_inner_epochs = 2
    return c


EXPERIMENTS["digits"] = digits
