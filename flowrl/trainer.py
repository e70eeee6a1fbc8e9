"""THE training loop: rollout -> reward (per rank) -> gather -> algorithm.prepare -> update -> eval/ckpt.

Nothing here knows which base model, algorithm or reward runs: they come from the registries.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, Optional

import torch

from flowrl.batch import Batch
from flowrl.checkpoint import (begin_checkpoint, finish_checkpoint, load_checkpoint, pick_checkpoint,
                               write_optimizer)
from flowrl.config import plan_batches
from flowrl.data.prompts import load_prompts
from flowrl.data.sampler import epoch_assignment, group_shuffle, mix_seed
from flowrl.evaluator import Evaluator
from flowrl.guards import StepGuard, check_state_finite, where
from flowrl.lr_schedule import apply_lr_schedule
from flowrl.protocols import Runtime
from flowrl.registry import ALGORITHMS, POLICIES
from flowrl.rewards import build_reward
from flowrl.rewards.overlap import OverlappedRewards
from flowrl.rundir import MetricsLog, RunLock, atomic_write_text, check_run_dir, has_checkpoint, write_run_config
from flowrl.sampling.rollout import RolloutSettings
from flowrl.sampling.schedule import step_masks


def options(section) -> dict:
    """A config section as the keyword options of its registry entry (everything but `name`)."""
    return {k: v for k, v in section.to_dict().items() if k != "name"}


class Trainer:
    def __init__(self, config, run_dir: Path, resume: bool = False, accelerator=None,
                 resume_from: Optional[str] = None):
        """resume_from: "step_N" (or N) resumes from that checkpoint instead of the newest one."""
        self.c, self.run_dir = config, Path(run_dir)
        self.lock, self.resume_from = None, resume_from
        try:
            self._start(config, resume or resume_from is not None, accelerator)
        except BaseException as e:
            self._abandon(isinstance(e, Exception))
            raise

    def _start(self, config, resume: bool, accelerator) -> None:
        from flowrl.distributed import build_accelerator, init_tracking
        self.algorithm = ALGORITHMS.build(config.algorithm.name, **options(config.algorithm))
        s = config.sample
        _, train_mask = step_masks(s.num_steps, s.timestep_fraction, s.sde_window_size, 0)
        terms = self.algorithm.num_loss_terms(int(train_mask.sum()))
        self.acc = accelerator or build_accelerator(config, terms * config.train.gradient_accumulation_steps)
        self.plan = plan_batches(config, self.acc.num_processes,   # raises before any model loads
                                 group_local=self.algorithm.group_local)
        self.is_main = self.acc.is_main_process
        restart = False
        if self.is_main:
            self.lock = RunLock(self.run_dir)   # one writer per run dir, held until finish()
            restart = check_run_dir(self.run_dir, config, resume)
        self.resumed = resume and (self.resume_from is not None or has_checkpoint(self.run_dir))
        restart = restart and not self.resumed
        if restart:
            self.print(f"{self.run_dir} holds a run that stopped before its first checkpoint: starting "
                       f"over in place")
        if config.cpu_threads > 0:
            torch.set_num_threads(config.cpu_threads)
        self.print(f"{self.acc.distributed_type} x {self.acc.num_processes} on {self.acc.device}; "
                   f"batch plan: {self.plan.describe()}")
        self._build_components()
        if self.is_main:
            write_run_config(self.run_dir, config, restart)
            self.lock.wrote = True
        self.acc.wait_for_everyone()
        init_tracking(self.acc, config, self.run_dir)
        self.log = MetricsLog(self.run_dir, self.is_main)
        from flowrl.metrics.monitor import DiversityAlarm
        self.alarm, self.eval_extra = DiversityAlarm(config.eval.diversity_alarm_fraction), {}
        self.evaluator = Evaluator(config, self.acc, self.policy, self.reward, self.test_prompts,
                                   self.algorithm, self.run_dir, self.alarm, self.print)
        self.start_epoch, self.opt_steps, self.reward_before = 0, 0, None
        if self.resumed:
            self._resume()

    def _abandon(self, failed: bool) -> None:
        """Release the run dir; a new run that `failed` (an error, not Ctrl-C) removes its files first."""
        if self.lock is not None:
            self.lock.release(discard=failed and not getattr(self, "resumed", False))

    def print(self, msg: str) -> None:
        if self.is_main:
            print(f"[flowrl] {msg}", flush=True)

    def _build_components(self) -> None:
        from flowrl.cache import cache_dir
        c, acc = self.c, self.acc
        dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[c.mixed_precision]
        runtime = Runtime(acc.device, dtype, cache_dir(), c.seed)
        with acc.main_process_first():   # the main process trains/caches base models first
            self.reward = build_reward(c.reward.weights.to_dict(), c.reward.options.to_dict(), acc.device,
                                       tuple(c.reward.metrics))   # first: a remote reward's health check
            self.policy = POLICIES.build(c.model.name, runtime, **options(c.model))
        self.algorithm.setup(self.policy, self.reward)
        self.algorithm.bind_run_dir(self.run_dir)
        self.prompts = load_prompts(c.prompts.dataset)
        self.test_prompts = load_prompts(c.prompts.test_dataset or c.prompts.dataset)
        if hasattr(self.policy, "cache_prompts"):   # text encoders: encode the sets once, maybe free them
            self.policy.cache_prompts(self.prompts.prompts + self.test_prompts.prompts)
        self._build_optimizer()

    def _build_optimizer(self) -> None:
        """AdamW over the policy's trainable weights and the algorithm's own modules (value nets);
        every trained module is wrapped by accelerate (DDP / DeepSpeed)."""
        c, acc = self.c, self.acc
        extra = self.algorithm.modules()
        policy_params = [p for p in self.policy.net.parameters() if p.requires_grad]
        extra_params = [p for m in extra.values() for p in m.parameters() if p.requires_grad]
        if not policy_params + extra_params:
            raise ValueError(f"policy {c.model.name!r} with algorithm {c.algorithm.name!r} has no "
                             f"trainable parameters")
        self.params = policy_params + extra_params
        opt = torch.optim.AdamW(self.params, lr=c.train.lr, betas=(c.train.adam_beta1, c.train.adam_beta2),
                                weight_decay=c.train.adam_weight_decay, eps=c.train.adam_epsilon)
        modules = ([self.policy.net] if policy_params else []) + list(extra.values())
        *wrapped, self.optimizer = acc.prepare(*modules, opt)
        if policy_params:
            self.policy.model = wrapped[0]
            # FSDP replaces the parameters by sharded ones: take them from the modules again
            policy_params = [p for p in self.policy.net.parameters() if p.requires_grad]
            self.params = policy_params + [p for m in extra.values() for p in m.parameters() if p.requires_grad]
        self.algorithm.bind_modules(dict(zip(extra, wrapped[len(wrapped) - len(extra):])))
        self.trained_modules = wrapped
        self.guard = StepGuard(acc, self.optimizer, self.params, c.train.max_grad_norm,
                               c.train.get("nonfinite", "stop"), c.train.get("max_nonfinite_steps", 3))
        self.ema = None
        if c.train.ema and policy_params:
            from flowrl.ema import EMA
            self.ema = EMA(policy_params, c.train.ema_decay, c.train.ema_every)
        self.print(f"policy {c.model.name}: {sum(p.numel() for p in policy_params):,} trainable parameters"
                   + (f"; algorithm modules: {sum(p.numel() for p in extra_params):,}" if extra else ""))
        if hasattr(self.policy, "memory_tokens"):
            from flowrl.memory import model_memory_line
            self.print(model_memory_line(self.policy, c.train.batch_size, c.train.cfg and c.sample.guidance_scale > 1,
                                         bool(c.model.get("gradient_checkpointing")), bool(c.train.ema)))

    def _resume(self) -> None:
        ckpt = pick_checkpoint(self.run_dir, self.resume_from)
        if ckpt is None:
            raise FileNotFoundError(f"--resume: {self.run_dir / 'checkpoints'} has no checkpoint yet; "
                                    f"start the run again without --resume (and another --output-dir)")
        shard = self.acc.process_index if self.sharded_optimizer else None
        state = load_checkpoint(ckpt, self.policy, self.optimizer, self.ema, shard=shard,
                                num_shards=self.acc.num_processes)
        if not state.get("files"):
            self.print(f"{ckpt} predates checkpoint checksums: its files are not verified")
        self.algorithm.load_state_dict(state["algorithm"])
        self.start_epoch, self.opt_steps = state["epoch"], state["optimizer_steps"]
        self.reward_before = state.get("reward_before")
        for k, v in (state.get("diversity_alarm") or {}).items():   # the base model's reference
            setattr(self.alarm, k, v)
        self.log.truncate_after(self.start_epoch)
        self.print(f"resumed from {ckpt} (epoch {self.start_epoch})")

    # ------------------------------------------------------------------ sampling
    def step_settings(self, epoch: int) -> RolloutSettings:
        s = self.c.sample
        start = s.sde_window_start
        if s.sde_window_size > 0 and start < 0:   # random window, the same on every rank
            g = torch.Generator().manual_seed(mix_seed(self.c.seed, epoch, 11))
            start = int(torch.randint(s.num_steps - s.sde_window_size + 1, (1,), generator=g))
        sde, train = step_masks(s.num_steps, s.timestep_fraction, s.sde_window_size, max(start, 0))
        if self.algorithm.sampling == "ode":     # methods that need samples, not log-probs
            sde, train = torch.zeros_like(sde), torch.zeros_like(train)
        guidance = s.guidance_scale if self.c.train.cfg else 1.0
        return RolloutSettings(self.policy.sigmas(s.num_steps), sde, train, s.noise_level, s.kind, guidance,
                               s.guidance_scale, s.cps_log_prob, self.c.train.cfg_detach_uncond)

    def initial_noise(self, n: int, group_ids: torch.Tensor, epoch: int, b: int) -> torch.Tensor:
        shape = self.policy.sample_shape
        if self.c.sample.same_latent:
            return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(
                mix_seed(self.c.seed, int(gid), 3))) for gid in group_ids])
        g = torch.Generator().manual_seed(mix_seed(self.c.seed, epoch, self.acc.process_index, b, 5))
        return torch.randn((n, *shape), generator=g)

    @torch.no_grad()
    def collect(self, epoch: int, st) -> Batch:
        """This rank's rollouts and rewards for one epoch. Rewards are computed here, locally. An
        algorithm with its own data (algorithm.collect returns a Batch) replaces the rollouts."""
        c, acc = self.c, self.acc
        own = self.algorithm.collect(self.policy, epoch, acc.process_index, acc.num_processes,
                                     c.sample.batch_size * c.sample.num_batches_per_epoch)
        if own is not None:
            return own
        prompt_idx, group_ids = epoch_assignment(len(self.prompts), self.plan.groups_per_epoch,
                                                 c.sample.group_size, acc.num_processes,
                                                 acc.process_index, c.seed, epoch,
                                                 local=self.algorithm.group_local)
        rollouts, B = [], c.sample.batch_size
        scorer = OverlappedRewards(self.reward, overlap=c.reward.overlap)   # batch b scored during b+1
        for b in range(c.sample.num_batches_per_epoch):
            pidx, gids = prompt_idx[b * B:(b + 1) * B], group_ids[b * B:(b + 1) * B]
            prompts = [self.prompts.prompts[i] for i in pidx.tolist()]
            meta = [self.prompts.metadata[i] for i in pidx.tolist()]
            with self.timed("encode"):
                cond = self.policy.encode(prompts)
            noise = self.initial_noise(len(pidx), gids, epoch, b).to(acc.device)
            gen = torch.Generator().manual_seed(mix_seed(c.seed, epoch, acc.process_index, b, 9))
            with self.timed("sample"):
                traj = self.algorithm.rollout(self.policy, noise, cond, st, gen)
            with self.timed("decode"):
                images = self.policy.decode(traj.final)
            with self.timed("reward"):   # overlapped: only the time spent waiting
                scorer.submit(images, prompts, meta)
            rollouts.append((pidx, gids, prompts, meta, cond, traj))
        with self.timed("reward"):
            scored = scorer.results()
        batches = []
        for (pidx, gids, prompts, meta, cond, traj), (total, parts) in zip(rollouts, scored):
            tensors = {"latents": traj.latents, "log_probs": traj.log_probs, "rewards": total,
                       "prompt_ids": pidx, "group_ids": gids,
                       **{f"reward.{k}": v for k, v in parts.items()},
                       **{f"cond.{k}": v for k, v in cond.items()}}
            batches.append(Batch(tensors, {"prompts": prompts, "metadata": meta}))
        return Batch.cat(batches)

    @contextlib.contextmanager
    def timed(self, name: str):
        """Accumulate wall time of a phase into self.timers (synchronising the GPU, if any)."""
        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
        sync()
        t = time.perf_counter()
        try:
            yield
        finally:
            sync()
            self.timers[name] += time.perf_counter() - t

    def gather(self, batch: Batch) -> Batch:
        keys = ["rewards", "prompt_ids", "group_ids"] + [k for k in batch.tensors if k.startswith("reward.")]
        return Batch({k: self.acc.gather(batch[k].to(self.acc.device)).cpu() for k in keys})

    # ------------------------------------------------------------------ training
    def optimize(self, batch: Batch, st, epoch: int) -> Dict[str, float]:
        c, acc = self.c, self.acc
        sums, count = defaultdict(float), 0
        self.policy.net.train()
        for inner in range(c.train.num_inner_epochs):
            g = torch.Generator().manual_seed(mix_seed(c.seed, epoch, acc.process_index, inner, 13))
            perm = (group_shuffle(batch["group_ids"], g) if self.algorithm.group_local
                    else torch.randperm(len(batch), generator=g))
            for mb in batch.select(perm).split(c.train.batch_size):
                mb = mb.to(acc.device)
                for loss, metrics in self.algorithm.loss_terms(self.policy, mb, st):
                    with acc.accumulate(*self.trained_modules):   # NaN/inf never reach the optimizer
                        norm = self.guard.backward_and_step(loss, epoch + 1, self.opt_steps + 1)
                    if norm is not None:
                        sums["grad_norm"] += norm
                        self.opt_steps += 1
                        if self.ema is not None:
                            self.ema.step(self.opt_steps)
                    for k, v in metrics.items():
                        sums[k] += v
                    count += 1
        steps = max(1, self.plan.optimizer_steps_per_epoch)
        out = {k: v / (steps if k == "grad_norm" else max(count, 1)) for k, v in sums.items()}
        out.update(optimizer_steps=self.opt_steps, skipped_steps=self.guard.pop_skipped())
        return out

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, tag: str) -> float:
        """Mean reward of the fixed eval set (ODE, EMA weights if any); saves the samples and sets
        self.eval_extra (diversity, reward components) for the metrics row."""
        reward, self.eval_extra = self.evaluator(tag, self.ema)
        return reward

    @property
    def sharded_optimizer(self) -> bool:
        """DeepSpeed ZeRO and FSDP partition the optimizer state: every rank saves/loads its own shard."""
        return self.acc.distributed_type in ("DEEPSPEED", "FSDP")

    def save(self, epoch: int) -> None:
        acc = self.acc   # never a checkpoint with NaN/inf (every rank checks: all raise together)
        check_state_finite(self.policy.trainable_state_dict(), self.optimizer.state_dict(), epoch)
        acc.wait_for_everyone()
        tmp = begin_checkpoint(self.run_dir, epoch) if self.is_main else None
        acc.wait_for_everyone()
        tmp = self.run_dir / "checkpoints" / f".step_{epoch}.tmp"
        if self.sharded_optimizer:
            write_optimizer(tmp, self.optimizer, shard=acc.process_index)
        elif self.is_main:
            write_optimizer(tmp, self.optimizer)
        acc.wait_for_everyone()
        from flowrl.fsdp import gathered
        with gathered(self.policy.net, self.ema):   # FSDP: every rank gathers, the main one writes
            if self.is_main:
                extra = {"optimizer_steps": self.opt_steps, "reward_before": self.reward_before,
                         "num_processes": acc.num_processes,
                         "diversity_alarm": {k: getattr(self.alarm, k) for k in
                                             ("base_diversity", "base_reward", "bandwidth")}}
                finish_checkpoint(tmp, epoch, self.policy, self.ema, extra, self.c.checkpoint.keep_last,
                                  algorithm_state=self.algorithm.state_dict())
        acc.wait_for_everyone()

    # ------------------------------------------------------------------ the loop
    def train(self) -> Dict:
        try:
            return self._train()
        except BaseException as e:
            self._abandon(isinstance(e, Exception))
            raise

    def _train(self) -> Dict:
        c, t0 = self.c, time.time()
        if self.reward_before is None:
            self.reward_before = self.evaluate("base")
            self.log.write({"epoch": 0, "eval_reward": self.reward_before, **self.eval_extra})
            self.print(f"base model: eval reward {self.reward_before:.4f}")
        bar = _progress(self.start_epoch, c.num_epochs, self.is_main and c.logging.progress)
        spent = 0.0
        for epoch in range(self.start_epoch, c.num_epochs):
            row = self.epoch(epoch)
            clock = "cpu" if c.train.budget_clock == "cpu" else "time"
            done, spent = epoch + 1, spent + row[f"{clock}_collect"] + row[f"{clock}_train"]
            last = done == c.num_epochs or self._budget_spent(spent)
            if c.eval.every and done % c.eval.every == 0 and not last:
                row["eval_reward"] = self.evaluate(f"step_{done}")
                row.update(self.eval_extra)
            if last:
                row["eval_reward"] = self.evaluate("final")
                row.update(self.eval_extra)
            self.log.write(row)
            self.acc.log({k: v for k, v in row.items() if k != "epoch"}, step=done)
            if (c.checkpoint.every and done % c.checkpoint.every == 0) or last:
                self.save(done)
            bar.update(1)
            bar.set_postfix(reward=f"{row['reward_mean']:.3f}", kl=f"{row.get('kl', 0.0):.2e}")
            if last:
                break
        bar.close()
        return self.finish(t0)

    def _budget_spent(self, spent: float) -> bool:
        """train.max_seconds > 0: has any rank's fine-tuning time reached it? (all ranks agree)"""
        if self.c.train.max_seconds <= 0:
            return False
        return float(self.acc.gather(torch.tensor([spent], device=self.acc.device)).max()) >= \
            self.c.train.max_seconds

    def epoch(self, epoch: int) -> Dict:
        self.timers = defaultdict(float)
        t0, c0 = time.time(), time.process_time()
        st = self.step_settings(epoch)
        self.policy.net.eval()
        with where(f"epoch {epoch + 1}"):
            batch = self.collect(epoch, st)
        t1, c1 = time.time(), time.process_time()
        gathered = self.gather(batch)
        r = gathered["rewards"]
        row = {"epoch": epoch + 1, "reward_mean": float(r.mean()), "reward_std": float(r.std())}
        row.update({f"{k}_mean": float(v.mean()) for k, v in gathered.tensors.items() if k.startswith("reward.")})
        rank_slice = slice(self.acc.process_index * len(batch), (self.acc.process_index + 1) * len(batch))
        row.update(self.algorithm.prepare(self.policy, batch, gathered, rank_slice))
        counts = self.acc.gather(torch.tensor([len(batch)], device=self.acc.device)).cpu()
        row["reward_samples_per_rank"] = counts.tolist()   # each rank scores only its own samples
        row["lr"] = apply_lr_schedule(self.optimizer, self.c.train, epoch, self.c.num_epochs)
        row.update(self.optimize(batch, st, epoch))
        row.update({f"time_{k}": v for k, v in self.timers.items()})
        row.update(time_collect=t1 - t0, time_train=time.time() - t1,   # wall; cpu_*: this process's
                   cpu_collect=c1 - c0, cpu_train=time.process_time() - c1)   # CPU (all threads)
        if os.environ.get("FLOWRL_DUMP_DIR"):   # debugging aid (and the distributed tests)
            from flowrl.distributed import dump_epoch
            dump_epoch(Path(os.environ["FLOWRL_DUMP_DIR"]), epoch, self.acc.process_index, batch, self.params)
        return row

    def finish(self, t0: float) -> Dict:
        rows = self.log.read() if self.is_main else []
        summary = {"reward_before": self.reward_before,
                   "reward_after": next((r["eval_reward"] for r in reversed(rows) if "eval_reward" in r), None),
                   "steps": self.c.num_epochs, "optimizer_steps": self.opt_steps,
                   "wall_seconds": time.time() - t0, "num_processes": self.acc.num_processes,
                   "config": self.c.to_dict()}
        if self.is_main:
            atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2))
            self.print(f"reward {summary['reward_before']:.4f} -> {summary['reward_after']:.4f} "
                       f"in {summary['wall_seconds']:.1f} s; run dir {self.run_dir}")
        self.acc.end_training()
        if self.lock is not None:
            self.lock.release()
        return summary


def _progress(start: int, total: int, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=start, disable=not enabled, desc="epochs", dynamic_ncols=True)
