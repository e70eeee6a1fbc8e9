"""The base config: every field flowrl reads, with its unit and whether it is per process or global.

Named experiments (config/grpo.py, ...) start from `get_config()` here and change what they need.
The loaded config is locked, so `--set train.lrr=1e-4` fails with "did you mean train.lr".
"""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0                      # seeds noise, prompt order and minibatch shuffles (per epoch, per rank)
    c.num_epochs = 100              # epochs = sample -> reward -> update cycles; checkpoints count these
    c.mixed_precision = "no"        # "no" | "fp16" | "bf16": frozen weights' dtype; log-probs stay fp32
    c.cpu_threads = 0               # torch intra-op threads per process (0 = torch's default); on a
                                    # small shared CPU, 1 can be many times faster for tiny models

    # Base model: `name` picks the policy in flowrl.registry.POLICIES; the other keys are its options.
    # The image policies (sd3, flux) take model.finetune = "lora" (default: a LoRA adapter, lora_* options)
    # or "full" (every transformer weight trains; the KL reference is a frozen copy of the base
    # transformer in the weight dtype; checkpoints hold the whole transformer; the export is a
    # diffusers transformer/ folder; ~18 B per transformer parameter per process before FSDP sharding).
    c.model = ml_collections.ConfigDict({"name": "toy2d"})

    # Prompts: a file (.txt one per line, .jsonl with "prompt" and optional metadata) or "" for an
    # unconditional model (one empty prompt). test_dataset is used for evaluation ("" = dataset).
    c.prompts = ml_collections.ConfigDict({"dataset": "", "test_dataset": ""})

    c.sample = ml_collections.ConfigDict()
    c.sample.num_steps = 10          # sampler steps per rollout (training)
    c.sample.eval_num_steps = 40     # ODE steps for evaluation
    c.sample.guidance_scale = 1.0    # classifier-free guidance while sampling (1.0 = off)
    c.sample.noise_level = 0.7       # `a` in the SDE std a*sqrt(sigma/(1-sigma)) (or CPS sin(a*pi/2))
    c.sample.kind = "sde"            # "sde" | "cps"
    c.sample.cps_log_prob = "flow_grpo"  # CPS log-prob form: "flow_grpo" (-mean (x'-mean)^2, Flow-GRPO's)
                                     # | "exact" (the Gaussian density); "sde" is always exact
    c.sample.batch_size = 16         # samples per forward pass, PER PROCESS
    c.sample.num_batches_per_epoch = 2  # sampling batches per epoch, per process
    c.sample.group_size = 8          # samples per prompt (GRPO group); GLOBAL: spread over processes
    c.sample.timestep_fraction = 1.0  # fraction of the steps trained (the first ones)
    c.sample.sde_window_size = 0     # > 0: only this many consecutive steps are SDE + trained (Fast/Mix)
    c.sample.sde_window_start = -1   # first step of the window; -1 = random each epoch
    c.sample.same_latent = False     # one initial noise per prompt group

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 16          # samples per training forward pass, PER PROCESS
    c.train.gradient_accumulation_steps = 1  # minibatches per optimizer step (x trained steps)
    c.train.num_inner_epochs = 1     # passes over each epoch's samples
    c.train.lr = 3e-4
    c.train.lr_schedule = "constant"  # "constant" | "linear" | "cosine": lr x factor(epoch) (flowrl.lr_schedule)
    c.train.lr_decay_epochs = 0      # the factor falls from 1 to lr_final over this many epochs (0 = num_epochs)
    c.train.lr_final = 0.0           # ... and stays at lr_final (a fraction of lr) after
    c.train.adam_beta1 = 0.9
    c.train.adam_beta2 = 0.999
    c.train.adam_weight_decay = 1e-4
    c.train.adam_epsilon = 1e-8
    c.train.max_grad_norm = 1.0      # gradient-norm clip per optimizer step
    c.train.nonfinite = "stop"       # a NaN/inf loss or grad norm never reaches the optimizer (flowrl.guards):
                                     # "stop": skip the step, stop after max_nonfinite_steps in a row;
                                     # "skip": skip and count it (metrics `skipped_steps`), never stop
    c.train.max_nonfinite_steps = 3  # consecutive non-finite optimizer steps before "stop" raises
    c.train.max_seconds = 0.0        # > 0: stop (final eval + save) once fine-tuning seconds (sampling +
                                     # training, evaluation excluded) reach this; counted from this start
    c.train.budget_clock = "wall"    # "cpu": count this process's CPU seconds (robust on a shared CPU)
    c.train.cfg = True               # re-evaluate velocities with CFG in training (if guidance > 1)
    c.train.cfg_detach_uncond = False  # ... with no gradient through the unconditional half (Flow-GRPO's
                                     # train_sd3.py did so in July 2025, its later code does not); every
                                     # loss that trains the CFG velocity follows it (GRPO family, AWM,
                                     # DGPO, ORW with algorithm.cfg, reward backprop)
    c.train.ema = False              # keep an EMA of the trainable weights (used for evaluation)
    c.train.ema_decay = 0.9
    c.train.ema_every = 8            # optimizer steps between EMA updates

    # Algorithm: `name` picks flowrl.registry.ALGORITHMS; the other keys are its options.
    # kl: "flow_grpo" (Flow-GRPO's KL, its beta values carry over) | "exact" (flowrl.sampling.sde)
    c.algorithm = ml_collections.ConfigDict({"name": "grpo", "clip_range": 1e-4, "beta": 0.01,
                                             "adv_clip_max": 5.0, "std_per_group": False,
                                             "ratio_norm": False, "kl": "flow_grpo"})

    # Reward = sum_k weights[k] * reward_k; options[k] are passed to reward k's factory.
    c.reward = ml_collections.ConfigDict()
    c.reward.weights = ml_collections.ConfigDict({"moons_unlearning": 1.0})
    c.reward.options = ml_collections.ConfigDict()
    c.reward.metrics = ()            # rewards computed and logged with weight 0 (e.g. ("scene_accuracy",))
    c.reward.overlap = True          # score sampling batch b in a worker thread while b+1 samples
                                     # (flowrl.rewards.overlap; results identical to False)

    c.eval = ml_collections.ConfigDict()
    c.eval.every = 10                # epochs between evaluations (0: only before and after training)
    c.eval.num_samples = 512         # GLOBAL number of evaluation samples (fixed noise, ODE)
    c.eval.batch_size = 512          # per process, per forward pass
    c.eval.seed = 1234               # fixed evaluation noise (same for every checkpoint)
    c.eval.diversity = True          # cheap Vendi diversity of each evaluation (flowrl.metrics.monitor)
    c.eval.diversity_alarm_fraction = 0.5  # warn when diversity < this x the base model's while reward
                                           # rose (mode collapse / reward hacking); 0 = never warn

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 10          # epochs between checkpoints (the end is always saved)
    c.checkpoint.keep_last = 3       # older checkpoints are deleted (0 = keep all)

    c.logging = ml_collections.ConfigDict()
    c.logging.wandb = False          # log through accelerate's wandb tracker (WANDB_MODE=offline works)
    c.logging.project = "flowrl"
    c.logging.progress = True        # progress bar with reward and KL
    return c
