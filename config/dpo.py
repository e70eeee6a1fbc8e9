"""Preference fine-tuning from reward-ranked pairs (seed 003): D3PO and Diffusion-DPO.
Pick one with `--config dpo.py:NAME`. Pairs = 2 samples per prompt from one initial noise."""
import ml_collections

from flowrl.config import sibling

grpo = sibling(__file__, "grpo")


def _pairs(c):
    """Two samples per prompt group, from the same initial noise (what both DPO losses compare)."""
    c.sample.group_size = 2
    c.sample.same_latent = True
    return c


def moons():
    """D3PO on the two-moons flow, unlearning the lower moon: 512 samples = 256 pairs per epoch,
    winner = higher P(upper moon); the ratio is taken to the frozen base (trust region eps)."""
    c = _pairs(grpo.moons())
    c.algorithm = ml_collections.ConfigDict({"name": "d3po", "beta": 0.1, "eps": 0.1,
                                             "ratio_to": "reference", "tie_margin": 0.0})
    c.num_epochs = 20
    c.train.lr = 3e-4
    return c


def moons_dpo():
    """Diffusion-DPO on the two-moons flow (flow-matching errors, beta ~ 100 for flows). Pairs whose
    rewards differ by <= 0.5 (both on one moon: near-random labels) are ties: without this margin the
    loser term (raise the loser's error, unbounded) drives samples off the data manifold."""
    c = _pairs(grpo.moons())
    c.algorithm = ml_collections.ConfigDict({"name": "diffusion_dpo", "beta": 100.0, "guidance": 1.0,
                                             "tie_margin": 0.5, "num_sigmas": 1, "pairs_from": "rollouts",
                                             "preference_file": "", "preference_allow_outside": False})
    c.num_epochs = 60
    c.train.lr = 1e-3
    return c


def human():
    """Diffusion-DPO on pairs that PEOPLE labelled: a JSONL file, one pair per line,
    {"prompt": ..., "image_a": path, "image_b": path, "preferred": "a" | "b"} (paths relative to the
    file; images for image models, .npy points/latents otherwise). Required:
    --set algorithm.preference_file=PATH.jsonl. The model is the moons flow here (pairs of .npy
    points); for SD3 start from grpo.py:pickscore's model settings. Each epoch trains on 256 pairs
    (512 rows) and samples nothing; the reward (P(upper moon)) only scores the evaluations."""
    c = moons_dpo()
    c.algorithm.pairs_from = "file"
    c.algorithm.tie_margin = 0.0            # labels are never ties
    c.num_epochs = 30
    return c


def _awm_on_labels(algorithm, **awm):
    """The labelling options of a human_online algorithm section + AWM's loss options -> awm_human."""
    from flowrl.algorithms.human_online import ONLINE_OPTIONS
    return ml_collections.ConfigDict({"name": "awm_human", **{k: algorithm[k] for k in ONLINE_OPTIONS},
                                      "adv_clip_max": 1.0, "advantage_max": 1.0, "std_per_group": True,
                                      "ghuber_power": 0.25, "kl_beta": 0.0, **awm})


def human_online():
    """Online human feedback (D3PO's setting): each epoch the policy samples 32 pairs, publishes them
    to the labelling page the trainer serves on http://127.0.0.1:8765/ (RUN_DIR/human/), waits for
    people's labels (all 32 answered or min_labels a/b labels, at most timeout_s) and trains
    Diffusion-DPO on what they chose; --resume keeps every label and the epoch's pairs. The model is
    the moons flow (pairs drawn as dots); the reward only scores the evaluations."""
    c = moons_dpo()
    c.algorithm = ml_collections.ConfigDict({
        "name": "diffusion_dpo_human", "beta": 100.0, "guidance": 1.0, "num_sigmas": 1, "prompts": "",
        "pairs_per_epoch": 0, "min_labels": 0, "timeout_s": 600.0, "poll_s": 0.5, "port": 8765,
        "overlap": 0.0, "num_steps": 20, "sample_guidance": 1.0, "online_dir": "", "seed": 0,
        "tie_margin": 0.0, "replay": False})
    c.sample.batch_size = 64                 # 32 pairs per epoch: a few minutes of a person's time
    c.sample.num_batches_per_epoch = 1
    c.train.batch_size = 64
    c.num_epochs = 10
    c.checkpoint.every = 1                   # labels are precious: never redo an epoch's training
    return c


def human_online_awm():
    """human_online (moons) with Advantage Weighted Matching on the labels (algorithm awm_human):
    each labelled pair is a group of two, the chosen sample +1 and the other -1 in the flow-matching
    loss (the sigmas of the pairs' 20-step schedule, all of them per sample)."""
    c = human_online()
    c.algorithm = _awm_on_labels(c.algorithm, weighting="uniform", timesteps_per_sample=0)
    return c


def human_online_tiny_geneval_dpo():
    """human_online on the tiny text-to-image world (grpo.py:tiny_geneval's model and prompts) with
    Diffusion-DPO: 32 pairs of 32 px scenes per epoch (ODE, 10 steps, CFG 4.5), the page shows them
    enlarged. Measured with a scripted annotator (scripts/bench_human_online.py, README): the labels
    are learnt but 12 epochs did not raise the held-out reward (0.492 -> 0.496)."""
    g = grpo.tiny_geneval()
    c = human_online()
    c.model, c.prompts, c.reward, c.eval = g.model, g.prompts, g.reward, g.eval
    c.cpu_threads, c.mixed_precision = g.cpu_threads, g.mixed_precision
    c.sample.eval_num_steps, c.sample.guidance_scale = g.sample.eval_num_steps, g.sample.guidance_scale
    c.algorithm.prompts = g.prompts.dataset
    c.algorithm.num_steps, c.algorithm.sample_guidance = 10, g.sample.guidance_scale
    c.algorithm.guidance = 1.0
    c.train.lr = 1e-3
    c.eval.every = 0
    return c


def human_online_tiny_geneval():
    """Online human feedback on the tiny text-to-image world with Advantage Weighted Matching on the
    labels (algorithm awm_human): each labelled pair is a group of two, the chosen image weighted +1
    and the other -1 in the flow-matching loss on the CFG velocity (awm.py:tiny_geneval's loss, 4
    sigmas per image, lr 3e-3, 4 optimizer steps per epoch), trained on this epoch's labels only; 32
    pairs per epoch sampled like the evaluation (ODE, 10 steps, CFG 4.5). Measured with a scripted
    annotator preferring the higher scene_geneval (scripts/bench_human_online.py, 1 thread, README):
    held-out reward 0.500 -> 0.641 +- 0.133 over seeds 0-2 (0.665 / 0.580 / 0.678), strict accuracy
    0.136 -> 0.276, Vendi 26 -> 50, in 12 epochs (~195 a/b labels, the rest ties). Replaying every
    label so far pushed the old losers away epoch after epoch (matching error 0.6 -> 4.1, 0.542 after
    10 epochs); Diffusion-DPO on the same labels did not move this model
    (human_online_tiny_geneval_dpo)."""
    c = human_online_tiny_geneval_dpo()
    c.algorithm = _awm_on_labels(c.algorithm, weighting="ghuber", timesteps_per_sample=4)
    c.algorithm.replay = False
    c.train.batch_size = 16          # 4 optimizer steps per epoch of 32 pairs
    c.train.lr = 3e-3
    c.num_epochs = 12
    return c


def tiny_sd3():
    """D3PO on the tiny RANDOM SD3 (LoRA, 64 px, JPEG compressibility): runs end to end on a CPU;
    16 samples = 8 pairs per epoch, 6 SDE steps (all trained). The reward need not rise."""
    c = _pairs(grpo.tiny_sd3())
    c.algorithm = ml_collections.ConfigDict({"name": "d3po", "beta": 0.1, "eps": 0.1,
                                             "ratio_to": "reference", "tie_margin": 0.0})
    return c


def digits():
    """D3PO on class-conditional 8x8 digits: 160 samples = 80 reward-ranked pairs per epoch."""
    c = _pairs(grpo.digits())
    c.algorithm = ml_collections.ConfigDict({"name": "d3po", "beta": 0.1, "eps": 0.1,
                                             "ratio_to": "reference", "tie_margin": 0.0})
    return c

EXPERIMENTS = {"moons": moons, "moons_dpo": moons_dpo, "human": human, "human_online": human_online,
               "human_online_awm": human_online_awm, "human_online_tiny_geneval": human_online_tiny_geneval,
               "human_online_tiny_geneval_dpo": human_online_tiny_geneval_dpo, "tiny_sd3": tiny_sd3,
               "digits": digits}


def tiny_geneval():
    """The tiny text-to-image world (grpo.py:tiny_geneval's model, prompts and evaluation) with D3PO:
    64 pairs per epoch (two samples of a prompt from one noise, the SDE window makes them differ),
    winner = higher scene_geneval; ties (equal rewards, frequent with a fraction-of-checks reward)
    carry no weight. Measured (CPU, 1 thread): held-out reward 0.485 -> 0.551, strict accuracy
    0.097 -> 0.193 in 10 epochs; trained on to 30 epochs at this lr it over-fits the pairs (0.528,
    Vendi 26 -> 19), so 10 epochs."""
    c = _pairs(grpo.tiny_geneval())
    c.algorithm = ml_collections.ConfigDict({"name": "d3po", "beta": 0.1, "eps": 0.1,
                                             "ratio_to": "reference", "tie_margin": 0.0})
    c.num_epochs = 10
    c.eval.every = 5
    c.train.lr = 3e-3                 # measured at 3e-3 (grpo.py:tiny_geneval uses 1e-3)
    return c


EXPERIMENTS["tiny_geneval"] = tiny_geneval


def get_config(name="moons"):
    if name not in EXPERIMENTS:
        raise KeyError(f"dpo.py has no experiment {name!r}; known: {sorted(EXPERIMENTS)}")
    return EXPERIMENTS[name]()
