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
    c.cpu_threads = 1                # a tiny MLP: one thread is as fast, and far faster on a busy CPU
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
    c.algorithm.kl = "exact"         # tuned with the exact Gaussian KL (not a Flow-GRPO recipe)
    c.reward.weights = ml_collections.ConfigDict({"moons_unlearning": 1.0})
    c.eval.every = 5
    c.eval.diversity_alarm_fraction = 0.35   # unlearning one of two moons halves diversity by design
    c.eval.num_samples = 1000
    c.eval.batch_size = 1000
    c.checkpoint.every = 10
    return c


def moons_fidelity():
    """Two moons, sharpen the shape: fidelity reward (seed 000, 0.875 -> 0.923 with PPO)."""
    c = moons()
    c.reward.weights = ml_collections.ConfigDict({"moons_fidelity": 1.0})
    c.eval.diversity_alarm_fraction = 0.5
    return c


# ------------------------------------------------------------------------------------ SD3 + LoRA
# Flow-GRPO's LoRA targets for SD3 (joint attention, image and text streams), r 32 / alpha 64.
SD3_LORA_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
                    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out")


def tiny_sd3():
    """Smoke test of the SD3 path on a CPU: the tiny RANDOM SD3 pipeline (model.path "" builds it in
    the flowrl cache on first use, ~5 s), 64 px images, JPEG compressibility, CFG 4.5 in sampling and
    training. One process: 2 batches of 8 = 16 samples = 4 prompts x 4 per epoch, 6 SDE steps (all
    trained), 2 optimizer steps per epoch, evaluation (8 images, 8 ODE steps) every 2 epochs; 4 epochs
    take ~15 s on 2 cores. The model is random: do not expect the reward to rise."""
    c = base.get_config()
    c.model = ml_collections.ConfigDict({
        "name": "sd3", "finetune": "lora", "path": "", "lora_rank": 8, "lora_alpha": 16,
        "lora_targets": list(SD3_LORA_TARGETS),
        "resolution": 64, "max_sequence_length": 32, "gradient_checkpointing": False})
    c.cpu_threads = 1                # tiny models: one thread is as fast, and far faster on a busy CPU
    c.prompts.dataset, c.prompts.test_dataset = "animals/train", "animals/test"
    c.num_epochs = 4
    c.sample.num_steps = 6
    c.sample.eval_num_steps = 8
    c.sample.guidance_scale = 4.5
    c.sample.batch_size = 8
    c.sample.num_batches_per_epoch = 2
    c.sample.group_size = 4
    c.sample.timestep_fraction = 1.0
    c.train.batch_size = 8
    c.train.gradient_accumulation_steps = 1
    c.train.lr = 1e-3
    c.algorithm.clip_range = 1e-4
    c.algorithm.beta = 0.01
    c.reward.weights = ml_collections.ConfigDict({"jpeg_compressibility": 1.0})
    c.eval.every = 2
    c.eval.num_samples = 8
    c.eval.batch_size = 8
    c.checkpoint.every = 0              # the end is always saved
    return c


def tiny_sd3_ocr():
    """tiny_sd3 with Flow-GRPO's OCR reward on the shipped OCR prompts (needs rapidocr-onnxruntime);
    a random model renders no text, so rewards stay ~0: this checks the plumbing only."""
    c = tiny_sd3()
    c.prompts.dataset, c.prompts.test_dataset = "ocr/train", "ocr/test"
    c.reward.weights = ml_collections.ConfigDict({"ocr": 1.0})
    return c


def tiny_sd3_remote():
    """tiny_sd3 with JPEG compressibility computed by a reward server, scored while the next batch
    samples (reward.overlap). Start the server first, then train:
        flowrl serve-reward jpeg_compressibility --port 8765
        flowrl train --config grpo.py:tiny_sd3_remote
    Samples go as float32 safetensors, so the run equals `tiny_sd3` metric for metric. If the server
    stays down past the retries the run stops (exit 2) before its next checkpoint; `--resume` goes on."""
    return served(tiny_sd3())


def served(c, concurrency: int = 1, timeout: float = 60.0, backoff: float = 0.5):
    """Config `c` with its reward replaced by the `remote` reward (a `flowrl serve-reward` on 8765)."""
    c.reward.weights = ml_collections.ConfigDict({"remote": 1.0})
    c.reward.options = ml_collections.ConfigDict({"remote": {
        "url": "http://127.0.0.1:8765", "protocol": "flowrl", "encoding": "safetensors", "batch_size": 64,
        "concurrency": concurrency, "timeout": timeout, "retries": 3, "backoff": backoff, "required": True}})
    return c


def placebo(c):
    """Config `c` trained on the `placebo` reward (a hash of each sample's own bytes: no information),
    its real rewards kept as logged metrics (with their options): the control that shows what the
    method does to those metrics by itself (README "A placebo control")."""
    real = tuple(c.reward.weights.keys()) + tuple(m for m in c.reward.metrics if m not in c.reward.weights)
    c.reward.weights = ml_collections.ConfigDict({"placebo": 1.0})
    c.reward.options = ml_collections.ConfigDict({**c.reward.options.to_dict(), "placebo": {"seed": 0}})
    c.reward.metrics = real
    return c


def tiny_geneval_placebo():
    """tiny_geneval (Flow-GRPO) trained on the placebo reward; scene_geneval, the strict accuracy and
    the clutter are logged beside it."""
    return placebo(tiny_geneval())


def pickscore():
    """Flow-GRPO on SD3.5-medium with PickScore (yifan123/flow_grpo config `pickscore_sd3`).
    Flow-GRPO's forms throughout: its KL (algorithm.kl="flow_grpo", so beta 0.01 is its beta), its
    CPS log-prob if sample.kind=cps, gradients through both CFG halves (README "Flow-GRPO parity").

    Needs the models in the LOCAL Hugging Face cache (flowrl never downloads): stabilityai/
    stable-diffusion-3.5-medium, yuvalkirstain/PickScore_v1 and laion/CLIP-ViT-H-14-laion2B-s32B-b79K
    (`hf download NAME`), or local folders via --set model.path=... / reward.options.pickscore.path=...
    The shipped prompt sets are small samples: point prompts.dataset / test_dataset at Flow-GRPO's
    dataset/pickscore/{train,test}.txt for the real run.

    Batch arithmetic (sample.batch_size is PER GPU, group_size GLOBAL), written for 8 GPUs:
      per epoch 8 GPUs x 9 x 16 batches = 1152 samples = 48 prompts x 24 images (as Flow-GRPO);
      train: 144 samples per GPU = 16 minibatches of 9; accumulation 8 -> 2 optimizer steps per epoch,
      each over 8 minibatches x the trained SDE steps.
      32 GPUs (Flow-GRPO's setup): --set sample.num_batches_per_epoch=4 --set train.gradient_accumulation_steps=2
      1 GPU as written: 144 samples = 6 groups of 24 per epoch, 2 optimizer steps.
    """
    c = base.get_config()
    c.mixed_precision = "fp16"          # Flow-GRPO's default; fp16 gives a smaller log-prob error than bf16
    c.model = ml_collections.ConfigDict({
        "name": "sd3", "finetune": "lora", "path": "stabilityai/stable-diffusion-3.5-medium", "lora_rank": 32,
        "lora_alpha": 64, "lora_targets": list(SD3_LORA_TARGETS), "resolution": 512,
        "max_sequence_length": 128, "gradient_checkpointing": False})
    c.prompts.dataset, c.prompts.test_dataset = "pickscore/train", "pickscore/test"
    c.num_epochs = 1000                 # Flow-GRPO runs until stopped; ~1000 epochs reach PickScore ~23.5/26
    c.sample.num_steps = 10
    c.sample.eval_num_steps = 40
    c.sample.guidance_scale = 4.5       # CFG in sampling AND in training (train.cfg)
    c.sample.noise_level = 0.7
    c.sample.kind = "sde"
    c.sample.batch_size = 9
    c.sample.num_batches_per_epoch = 16
    c.sample.group_size = 24
    # Flow-GRPO trains int(10 * 0.99) = 9 steps (the last, sigma -> 0, is skipped): see step_masks.
    c.sample.timestep_fraction = 0.99
    c.sample.same_latent = False
    c.train.batch_size = 9
    c.train.gradient_accumulation_steps = 8
    c.train.num_inner_epochs = 1
    c.train.lr = 3e-4
    c.train.adam_weight_decay = 1e-4
    c.train.max_grad_norm = 1.0
    c.train.cfg = True
    c.train.ema, c.train.ema_decay, c.train.ema_every = True, 0.9, 8
    c.train.cfg_detach_uncond = False   # Flow-GRPO's current train_sd3.py backpropagates through both
    c.sample.cps_log_prob = "flow_grpo"  # only used with --set sample.kind=cps (Flow-GRPO's CPS form)
    c.algorithm = ml_collections.ConfigDict({"name": "grpo", "clip_range": 1e-4, "beta": 0.01,
                                             "adv_clip_max": 5.0, "std_per_group": False,
                                             "ratio_norm": False,
                                             "kl": "flow_grpo"})     # Flow-GRPO's KL: its beta carries over
    c.reward.weights = ml_collections.ConfigDict({"pickscore": 1.0})
    c.reward.options = ml_collections.ConfigDict({"pickscore": {
        "path": "yuvalkirstain/PickScore_v1", "processor_path": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"}})
    c.eval.every = 60                   # Flow-GRPO: eval_freq = save_freq = 60 epochs
    c.eval.num_samples = 64             # GLOBAL; divisible by 1, 2, 4, 8, 16, 32 GPUs
    c.eval.batch_size = 16              # per GPU (Flow-GRPO's test_batch_size)
    c.checkpoint.every = 60
    c.checkpoint.keep_last = 5
    return c


def pickscore_fast():
    """Flow-GRPO-Fast (config `pickscore_sd3_fast`): ODE everywhere except a random 2-step SDE window,
    trained alone (2 trained steps instead of 9: ~4.5x fewer training passes); clip 1e-5, beta 0,
    noise 0.8 as Flow-GRPO-Fast. Batch arithmetic as `pickscore`."""
    c = pickscore()
    c.sample.sde_window_size = 2
    c.sample.sde_window_start = -1      # random each epoch (the same on every rank)
    c.sample.noise_level = 0.8
    c.algorithm.clip_range = 1e-5
    c.algorithm.beta = 0.0
    return c


def pickscore_nocfg():
    """`pickscore` without classifier-free guidance (guidance 1 in sampling, training and eval): half
    the transformer passes; the LoRA has to learn what CFG gave."""
    c = pickscore()
    c.sample.guidance_scale = 1.0
    c.train.cfg = False
    return c


def clipscore():
    """Flow-GRPO `clipscore_sd3`: CLIPScore (openai/clip-vit-large-patch14) on the pickscore prompts,
    beta 0.02, one initial noise per prompt group. Batch arithmetic as `pickscore`."""
    c = pickscore()
    c.algorithm.beta = 0.02
    c.sample.same_latent = True
    c.reward.weights = ml_collections.ConfigDict({"clipscore": 1.0})
    c.reward.options = ml_collections.ConfigDict({"clipscore": {"path": "openai/clip-vit-large-patch14"}})
    return c


def aesthetic():
    """LAION aesthetic score (CLIP ViT-L/14 + the improved-aesthetic-predictor MLP head) on the pickscore
    prompts. Set reward.options.aesthetic.head_path to the local sac+logos+ava1-l14-linearMSE.pth."""
    c = pickscore()
    c.reward.weights = ml_collections.ConfigDict({"aesthetic": 1.0})
    c.reward.options = ml_collections.ConfigDict({"aesthetic": {
        "path": "openai/clip-vit-large-patch14", "head_path": "sac+logos+ava1-l14-linearMSE.pth"}})
    return c


def ocr():
    """Flow-GRPO `general_ocr_sd3`: text rendering scored by OCR edit distance (RapidOCR), beta 0.04,
    on the OCR prompts (point prompts.dataset at Flow-GRPO's dataset/ocr for the real run). Batch
    arithmetic as `pickscore`."""
    c = pickscore()
    c.prompts.dataset, c.prompts.test_dataset = "ocr/train", "ocr/test"
    c.algorithm.beta = 0.04
    c.reward.weights = ml_collections.ConfigDict({"ocr": 1.0})
    c.reward.options = ml_collections.ConfigDict()
    return c


def jpeg():
    """JPEG compressibility (DDPO's task; Flow-GRPO's `compressibility` base) with the `pickscore`
    model, sampler and batch arithmetic."""
    c = pickscore()
    c.reward.weights = ml_collections.ConfigDict({"jpeg_compressibility": 1.0})
    c.reward.options = ml_collections.ConfigDict()
    return c


def tiny_geneval():
    """GenEval in miniature on a CPU: Flow-GRPO on the scenes text-to-image model (a real SD3 pipeline
    trained by flowrl on coloured shapes, 32 px) with the programmatic `scene_geneval` reward (fraction
    of the prompt's object / count / colour / position attributes read back from the pixels).

    The model (model.path="tiny-t2i") is built into the flowrl cache on first use (~10 min on 2
    cores, progress bar; or beforehand with `flowrl init tiny-t2i`).
    Train on scenes/train, evaluate on scenes/test (held-out combinations + the single objects).
    One process: 4 batches of 32 = 128 samples = 16 prompts x 8 per epoch, 10 steps with CFG 4.5,
    SDE (noise 0.7) on the FIRST 3 steps only, where layout, count and colour binding are decided, ODE
    after (Flow-GRPO-Fast's window, fixed at the start: a random window learned ~3x slower here);
    advantages normalised by each prompt group's own std (Flow-GRPO's per-prompt statistics; the
    global std learned half as fast here), clip 1e-2 (log-probs are means over the 512 latent dims:
    ratios move little), lr 1e-3 (3e-3 rises faster, then oscillates and loses diversity), small KL
    (the EXACT Gaussian KL, algorithm.kl="exact": tuned with it; not Flow-GRPO's KL form).
    Measured (scripts/bench_tiny_t2i.py, 1 thread, seeds 0-2, current build): held-out reward 0.500 ->
    0.578 +- 0.022, strict accuracy 0.136 -> 0.197 +- 0.050, in 40 epochs = 360-500 CPU s of fine-tuning
    (earlier build, one seed: 0.485 -> 0.610, strict accuracy 0.097 -> 0.250); the objects drawn
    beyond the prompt's double meanwhile, 0.42 -> 0.85 +- 0.41 (README "The gain is mostly clutter").
    Evaluation: 176 samples = the 44 test prompts x 4, 20 ODE steps, every 10 epochs, with the strict
    (GenEval) accuracy `scene_accuracy` logged beside the reward. `python -m flowrl.scenes.evaluate`
    scores a pipeline folder or a run's eval/<tag> folder, and draws before/after grids."""
    c = base.get_config()
    c.model = ml_collections.ConfigDict({
        "name": "sd3", "finetune": "lora", "path": "tiny-t2i", "lora_rank": 8, "lora_alpha": 16,
        "lora_targets": SD3_LORA_TARGETS, "resolution": 32, "max_sequence_length": 16,
        "gradient_checkpointing": False})
    c.prompts.dataset, c.prompts.test_dataset = "scenes/train", "scenes/test"
    c.num_epochs = 40
    c.cpu_threads = 1    # s/epoch quiet / beside a busy process (scripts/bench_threads.py): 1 thread
                         # 11.0 / 10.5; 2 threads 11.1 / 23.0 (spin), 15.5 / 14.2 (passive wait)
    c.sample.num_steps = 10
    c.sample.eval_num_steps = 20
    c.sample.guidance_scale = 4.5
    c.sample.noise_level = 0.7
    c.sample.batch_size = 32
    c.sample.num_batches_per_epoch = 4
    c.sample.group_size = 8
    c.sample.sde_window_size = 3
    c.sample.sde_window_start = 0
    c.train.batch_size = 32
    c.train.gradient_accumulation_steps = 1
    c.train.lr = 1e-3
    c.algorithm.clip_range = 1e-2
    c.algorithm.beta = 0.004
    c.algorithm.kl = "exact"         # tuned with the exact KL: x25..x17 Flow-GRPO's on steps 0-2
    c.algorithm.std_per_group = True
    c.reward.weights = ml_collections.ConfigDict({"scene_geneval": 1.0})
    # no_extra=True divides the reward by 1 + the objects drawn beyond the prompt's (GenEval has no such check)
    c.reward.options = ml_collections.ConfigDict({"scene_geneval": {"no_extra": False}})
    c.reward.metrics = ("scene_accuracy", "scene_extra_objects")   # strict accuracy; clutter per image
    c.eval.every = 10
    c.eval.num_samples = 176
    c.eval.batch_size = 176
    c.checkpoint.every = 20
    return c


def tiny_geneval_remote():
    """tiny_geneval with the GenEval-like `scene_geneval` reward served by a reward server (as GenEval's
    mmdetection lives in its own environment); the strict accuracy metric stays local:
        flowrl serve-reward scene_geneval --port 8765
        flowrl train --config grpo.py:tiny_geneval_remote"""
    return served(tiny_geneval(), concurrency=2, timeout=120.0, backoff=1.0)


def tiny_geneval_guard():
    """tiny_geneval with GRPO-Guard's ratio normalisation (algorithm.ratio_norm): the clip acts on
    the bias-free log-ratio mean((mu - mu_old) * eps), ~ s = 0.5-0.7 times Flow-GRPO's on the three
    trained high-noise steps, so the clip range is scaled down with it. Measured (1 thread, base
    0.500): 0.489 at epoch 4, 0.541 at epoch 8; the ratio stays within 1e-4 of 1 (clip fraction 0),
    so here it is Flow-GRPO with each step's gradient weighted by its transition std."""
    c = tiny_geneval()
    c.algorithm.ratio_norm = True
    c.algorithm.clip_range = 5e-3
    return c


def tiny_geneval_trust():
    """tiny_geneval with the step set by the clip instead of the learning rate: with lr 1e-3 the
    per-sample log-ratio moves ~1e-4 per epoch (|log rho| logged as log_ratio_abs), a hundred times
    inside the 1e-2 clip, so the clip never acts and only the (small) lr bounds the update. Here lr
    3e-3 (3x the movement) with the clip at 2e-4, where the ratios are: a trust region that stops a
    sample's push once its ratio has moved. Measured (README, 3 seeds, only 4 epochs on a loaded box):
    the clip acts (clipfrac ~0.4-0.6), KL grows 2-3x faster, held-out 0.500 -> 0.513 +- 0.010: not
    yet separable from the shipped config. Over 40 epochs (3 seeds): 0.548 +- 0.068, below the
    shipped config's 0.578 +- 0.022."""
    c = tiny_geneval()
    c.train.lr = 3e-3
    c.algorithm.clip_range = 2e-4
    return c


# ------------------------------------------------------------------ 8x8 digits (sklearn), on a CPU
def digits():
    """Class-conditional 8x8 digits (flowrl.policies.image_flow: a residual MLP flow that flowrl trains
    by CFM on sklearn digits and caches, ~25 s cold), reward = P(the digit the prompt asks for) under
    the cached CNN of flowrl.rewards.digits (~12 s cold), prompts "0".."9". CFG is off (guidance 1): the
    base scores ~0.81 without it and ~0.99 with guidance 2, so RL has to learn what guidance gives.
    One process: 2 batches of 80 = 160 samples = 10 digits x 16 per epoch, 10 SDE steps (all trained),
    2 optimizer steps per epoch; eval 200 ODE samples (20 per digit, 10 steps) every 5 epochs.
    Measured on 2 busy cores: eval reward 0.808 -> ~0.99 in 30 epochs, ~10 s of training (warm cache).
    Other targets: --set reward.options.digit_classifier.target=3 rewards a 3 whatever the prompt."""
    c = base.get_config()
    c.model = ml_collections.ConfigDict({
        "name": "digits", "hidden": 128, "depth": 2, "emb": 64, "base_iters": 2000, "base_batch": 128,
        "base_lr": 2e-3, "p_uncond": 0.1, "base_seed": 0, "shift": 1.0, "guidance": 1.0})
    c.cpu_threads = 1                # a tiny MLP: one thread is as fast, and far faster on a busy CPU
    c.prompts.dataset, c.prompts.test_dataset = "digits/train", "digits/test"
    c.num_epochs = 30
    c.sample.num_steps = 10
    c.sample.eval_num_steps = 10
    c.sample.guidance_scale = 1.0
    c.sample.noise_level = 0.7
    c.sample.batch_size = 80
    c.sample.num_batches_per_epoch = 2
    c.sample.group_size = 16         # 160 = 10 groups: every digit every epoch
    c.sample.timestep_fraction = 1.0
    c.train.batch_size = 80
    c.train.gradient_accumulation_steps = 1
    c.train.lr = 1e-3
    c.train.adam_weight_decay = 0.0
    c.algorithm.clip_range = 0.2     # log-probs are means over 64 pixels: ratios stay within ~1e-3
    c.algorithm.beta = 0.01          # without the KL, lr 1e-3 dips (0.81 -> 0.60 -> 0.93 in 20 epochs)
    c.algorithm.kl = "exact"         # tuned with the exact Gaussian KL (not a Flow-GRPO recipe)
    c.reward.weights = ml_collections.ConfigDict({"digit_classifier": 1.0})
    c.reward.options = ml_collections.ConfigDict({"digit_classifier": {"target": -1, "temperature": 1.0}})
    c.eval.every = 5
    c.eval.num_samples = 200
    c.eval.batch_size = 200
    c.checkpoint.every = 0              # the end is always saved
    return c


# ------------------------------------------------------------------------------------ FLUX.1 + LoRA
# Flow-GRPO's FLUX LoRA (scripts/train_flux.py): r 64 / alpha 128 on attention and MLPs of both streams.
FLUX_LORA_TARGETS = ("attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "attn.add_k_proj", "attn.add_q_proj",
                     "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                     "ff_context.net.2")


def flux_pickscore():
    """Flow-GRPO on FLUX.1-dev with PickScore (yifan123/flow_grpo config `pickscore_flux`): 512 px,
    6 SDE steps (noise 0.9), eval 28 ODE steps, group 24, beta 0, bf16 frozen weights, EMA.
    FLUX.1-dev is guidance-DISTILLED: the guidance 3.5 is an input of the transformer
    (model.guidance), there is no classifier-free guidance (sample.guidance_scale 1, train.cfg off):
    one transformer pass per step. Needs black-forest-labs/FLUX.1-dev in the LOCAL HF cache.

    Batch arithmetic, written for 8 GPUs: per epoch 8 GPUs x 3 x 48 batches = 1152 samples = 48
    prompts x 24 (as Flow-GRPO); train minibatches of 3, accumulation 24 -> 2 optimizer steps per
    epoch. 32 GPUs: --set sample.num_batches_per_epoch=12 --set train.gradient_accumulation_steps=6."""
    c = pickscore()
    c.mixed_precision = "bf16"
    c.model = ml_collections.ConfigDict({
        "name": "flux", "finetune": "lora", "path": "black-forest-labs/FLUX.1-dev", "lora_rank": 64, "lora_alpha": 128,
        "lora_targets": list(FLUX_LORA_TARGETS), "resolution": 512, "max_sequence_length": 512,
        "guidance": 3.5, "gradient_checkpointing": False, "offload_text_encoders": False})
    c.sample.num_steps = 6
    c.sample.eval_num_steps = 28
    c.sample.guidance_scale = 1.0       # no CFG: the distilled guidance is model.guidance
    c.sample.noise_level = 0.9
    c.sample.batch_size = 3
    c.sample.num_batches_per_epoch = 48
    c.train.batch_size = 3
    c.train.gradient_accumulation_steps = 24
    c.train.cfg = False
    c.algorithm.beta = 0.0
    c.eval.every = c.checkpoint.every = 30
    return c


def tiny_flux():
    """The FLUX path on a CPU: the tiny RANDOM FLUX pipeline (model.path "" builds it in the flowrl
    cache on first use, ~3 s; `flowrl init tiny-flux DIR`), 64 px, 6 SDE steps at noise 0.9, JPEG
    compressibility. One process: 2 batches of 8 = 16 samples = 4 prompts x 4 per epoch."""
    c = tiny_sd3()
    c.model = ml_collections.ConfigDict({
        "name": "flux", "finetune": "lora", "path": "", "lora_rank": 8, "lora_alpha": 16,
        "lora_targets": list(FLUX_LORA_TARGETS),
        "resolution": 64, "max_sequence_length": 32, "guidance": 3.5, "gradient_checkpointing": False,
        "offload_text_encoders": True})
    c.sample.guidance_scale = 1.0
    c.sample.noise_level = 0.9
    c.train.cfg = False
    return c


def tiny_sd35():
    """`tiny_sd3` on a tiny RANDOM SD3.5-medium-shaped transformer (model.path "tiny-sd35": dual
    attention in the first half of the blocks, RMS QK-norm, pos_embed_max_size 3x the default
    latent side, as stabilityai/stable-diffusion-3.5-medium), built in the flowrl cache on first use."""
    c = tiny_sd3()
    c.model.path = "tiny-sd35"
    return c


def tiny_sd3_full():
    """`tiny_sd3` with FULL fine-tuning (model.finetune "full"): every transformer weight trains, the
    KL reference is a frozen copy of the base, checkpoints export a diffusers `transformer/` folder
    (SD3Transformer2DModel.from_pretrained). The lora_* options are unused."""
    c = tiny_sd3()
    c.model.finetune = "full"
    return c


EXPERIMENTS = {"moons": moons, "moons_fidelity": moons_fidelity,
               "tiny_sd3": tiny_sd3, "tiny_sd3_ocr": tiny_sd3_ocr, "tiny_sd3_full": tiny_sd3_full,
               "pickscore": pickscore, "pickscore_fast": pickscore_fast, "pickscore_nocfg": pickscore_nocfg,
               "clipscore": clipscore, "aesthetic": aesthetic, "ocr": ocr, "jpeg": jpeg,
               "tiny_geneval": tiny_geneval, "tiny_sd3_remote": tiny_sd3_remote,
               "tiny_geneval_remote": tiny_geneval_remote, "flux_pickscore": flux_pickscore,
               "tiny_flux": tiny_flux, "tiny_sd35": tiny_sd35, "tiny_geneval_guard": tiny_geneval_guard,
               "tiny_geneval_trust": tiny_geneval_trust, "tiny_geneval_placebo": tiny_geneval_placebo}


def get_config(name="moons"):
    if name not in EXPERIMENTS:
        raise KeyError(f"grpo.py has no experiment {name!r}; known: {sorted(EXPERIMENTS)}")
    return EXPERIMENTS[name]()


EXPERIMENTS["digits"] = digits
