"""The trainer's periodic evaluation: fixed-noise ODE samples of the held-out prompts, scored on
each rank, gathered, saved under RUN_DIR/eval/<tag>, with a cheap diversity (Vendi) and the collapse
alarm, and the first images to wandb. The sampling and saving maths live in flowrl.evaluation."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Dict, Tuple

from flowrl.batch import Batch
from flowrl.evaluation import eval_indices, evaluate, save_eval
from flowrl.guards import where


class Evaluator:
    """evaluator(tag, ema) -> (mean eval reward over all ranks, extra metrics for the row)."""

    def __init__(self, config, acc, policy, reward, prompt_set, algorithm, run_dir: Path, alarm,
                 say: Callable[[str], None]):
        self.c, self.acc, self.policy, self.reward = config, acc, policy, reward
        self.prompts, self.algorithm, self.run_dir, self.alarm, self.say = (prompt_set, algorithm,
                                                                            Path(run_dir), alarm, say)

    def __call__(self, tag: str, ema=None) -> Tuple[float, Dict[str, float]]:
        c, acc = self.c, self.acc
        idx = eval_indices(c.eval.num_samples, acc.process_index, acc.num_processes)
        self.policy.net.eval()
        ctx = ema.applied() if (ema is not None and tag != "base") else contextlib.nullcontext()
        with ctx, where(f"evaluation {tag!r}"):
            local = evaluate(self.policy, self.reward, self.prompts, idx, c.sample.eval_num_steps,
                             c.sample.guidance_scale, c.eval.batch_size, c.eval.seed, acc.device,
                             sample_fn=self.algorithm.eval_sample)
        parts = [k for k in local.tensors if k.startswith("reward.")]
        keys = ["rewards", "index"] + parts + (["samples"] if local["samples"].ndim == 2 else [])
        gathered = {k: acc.gather(local[k].to(acc.device)).cpu() for k in keys}
        save_eval(self.run_dir, tag, local, gathered, self.prompts, acc.is_main_process)
        reward = float(gathered["rewards"].mean())
        extra = self._diversity(tag, local, reward)
        if len(parts) > 1:   # per component, e.g. eval_scene_accuracy next to eval_reward
            extra.update({f"eval_{k[7:]}": float(gathered[k].mean()) for k in parts})
        self._log_images(tag, local)
        return reward, extra

    def _log_images(self, tag: str, local: Batch, n: int = 16) -> None:
        """The main process's first eval images, with prompt and reward, to wandb (if on)."""
        if not (self.c.logging.wandb and self.acc.is_main_process and local["samples"].ndim == 4):
            return
        import wandb
        imgs = [wandb.Image(img.clamp(0, 1).permute(1, 2, 0).numpy(), caption=f"{p} ({r:.3f})")
                for img, p, r in zip(local["samples"][:n], local["prompts"][:n], local["rewards"].tolist())]
        self.acc.log({"eval_images": imgs, "eval_tag": tag})

    def _diversity(self, tag: str, local: Batch, reward: float) -> Dict[str, float]:
        """Cheap Vendi of the eval samples (on the base model's kernel scale) + the collapse alarm."""
        if not self.c.eval.diversity:
            return {}
        from flowrl.metrics.monitor import cheap_diversity, cheap_features
        feats = self.acc.gather(cheap_features(local["samples"]).to(self.acc.device)).cpu()
        div = cheap_diversity(feats, bandwidth=self.alarm.bandwidth)
        warning = self.alarm.check(tag, div, reward)
        if warning:
            self.say(warning)
        return {"eval_diversity": div["vendi"]}
