"""Online human feedback (D3PO's setting) through the algorithm's `collect` hook: each epoch the
policy samples pairs, publishes them to the annotation pool (RUN_DIR/human/, served by
`flowrl annotate serve` or by the trainer itself on algorithm.port), waits for people's labels and
trains Diffusion-DPO on what they chose (flowrl/algorithms/dpo.py: dpo_pair_loss via file_batch).

Per epoch e (files in the pool folder, so kill / --resume loses nothing):
  1. publish: pairs_per_epoch pairs (ids e<E>_p<K>, "epoch": e) unless epoch e's pairs are there
     already (a resumed epoch shows the same pairs, with the labels people gave before the kill);
  2. wait until min_labels of them have an a/b label, or every one is answered, or timeout_s;
  3. freeze: epoch_<e>.labels.jsonl (written atomically by the main process) lists the labels this
     epoch trains on; every process reads it, a resumed epoch trains on the same labels.
With replay=True, or with no a/b label this epoch, it trains on every label so far (or, with none, on nothing:
zero weights). Labels: RUN_DIR/human/labels.jsonl, which `dpo.py:human` also reads as it is.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict, List

import torch

from flowrl.algorithms.awm import AWM
from flowrl.algorithms.dpo import DiffusionDPO
from flowrl.algorithms.preferences import PreferencePair, epoch_pairs, file_batch
from flowrl.config import ConfigError
from flowrl.registry import ALGORITHMS
from flowrl.serve.label_store import atomic_rewrite, read_jsonl


def decided(rows: List[dict], pair_ids) -> List[dict]:
    """The a/b labels (ties and skips left out) of the given pairs, in file order."""
    ids = set(pair_ids)
    return [r for r in rows if r.get("pair_id") in ids and r.get("preferred") in ("a", "b")]


def to_pairs(rows: List[dict], folder: Path) -> List[PreferencePair]:
    """Label rows -> PreferencePair (winner, loser = the exact samples behind the pictures)."""
    out = []
    for n, r in enumerate(rows):
        files = {s: (folder / r.get(f"sample_{s}", r[f"image_{s}"])).resolve() for s in "ab"}
        other = "b" if r["preferred"] == "a" else "a"
        out.append(PreferencePair(r["prompt"], files[r["preferred"]], files[other], n))
    return out


class OnlineLabels:
    """The labelling round of an online algorithm (one per run): publish this epoch's pairs, serve the
    page, wait for labels, freeze them, hand the trainer the labelled pairs as a Batch (rows 2p =
    winner with reward 1, 2p+1 = loser with reward 0, group = the pair). Options as documented on
    HumanOnlineDPO; the loss is the algorithm's."""

    def __init__(self, prompts: str = "", pairs_per_epoch: int = 0, min_labels: int = 0,
                 timeout_s: float = 600.0, poll_s: float = 0.5, port: int = 8765, overlap: float = 0.0,
                 num_steps: int = 20, sample_guidance: float = 1.0, online_dir: str = "", seed: int = 0,
                 replay: bool = False, name: str = "diffusion_dpo_human"):
        if pairs_per_epoch < 0 or min_labels < 0 or timeout_s < 0 or poll_s <= 0 or num_steps < 1:
            raise ConfigError(f"algorithm {name}: need pairs_per_epoch >= 0 (got {pairs_per_epoch}), "
                              f"min_labels >= 0 (got {min_labels}), timeout_s >= 0 (got {timeout_s}), "
                              f"poll_s > 0 (got {poll_s}), num_steps >= 1 (got {num_steps}); "
                              f"set them with --set algorithm.NAME=VALUE")
        self.prompt_spec, self.pairs_per_epoch, self.min_labels = prompts, pairs_per_epoch, min_labels
        self.timeout_s, self.poll_s, self.port, self.overlap = timeout_s, poll_s, port, overlap
        self.num_steps, self.sample_guidance, self.seed = num_steps, sample_guidance, seed
        self.replay = replay
        self.online_dir = Path(online_dir) if online_dir else None
        self.server = None
        self.last: Dict[str, float] = {}

    def bind_run_dir(self, run_dir: Path) -> None:
        self.online_dir = self.online_dir or Path(run_dir) / "human"

    # ------------------------------------------------------------ one epoch
    def collect(self, policy, epoch: int, rank: int, world_size: int, num_samples: int):
        folder = self.online_dir
        frozen = folder / f"epoch_{epoch}.labels.jsonl"
        t0 = time.time()
        if rank == 0 and not frozen.exists():
            ids = self._publish(policy, folder, epoch, self.pairs_per_epoch or num_samples // 2 * world_size)
            self._serve(folder)
            rows = self._wait(folder, ids)
            if self.replay or not rows:              # every a/b label so far (none now: earlier ones)
                every = read_jsonl(folder / "labels.jsonl")
                rows = decided(every, {r.get("pair_id") for r in every})
            atomic_rewrite(frozen, rows)
        while not frozen.exists():                   # other processes: the main one freezes
            time.sleep(self.poll_s)
        rows = read_jsonl(frozen)
        self.last = {"human_labels": float(len(rows)), "human_wait_s": time.time() - t0}
        per_rank = num_samples // 2
        first = (epoch * world_size + rank) * per_rank
        if not rows:
            return self._empty_batch(policy, per_rank, first)
        index = epoch_pairs(len(rows), per_rank, epoch, rank, world_size, seed=self.seed)
        return file_batch(policy, to_pairs(rows, folder), index, first)

    def _publish(self, policy, folder: Path, epoch: int, n: int) -> List[str]:
        """This epoch's pair ids; samples and writes them unless an earlier try of the epoch did."""
        from flowrl.data.prompts import load_prompts
        from flowrl.data.sampler import mix_seed
        from flowrl.serve.pair_maker import publish_pairs, sample_pairs
        have = [r["id"] for r in read_jsonl(folder / "pairs.jsonl") if r.get("epoch") == epoch]
        if have:
            return have
        pset = load_prompts(self.prompt_spec)
        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, 29))
        pick = torch.randint(len(pset), (n,), generator=g).tolist()
        was_training = policy.net.training
        policy.net.eval()
        ids = []
        for start in range(0, n, 64):
            chunk = pick[start:start + 64]
            prompts = [pset.prompts[i] for i in chunk]
            lat, dec = sample_pairs(policy, prompts, self.num_steps, self.sample_guidance, g)
            chunk_ids = [f"e{epoch:04d}_p{start + k:04d}" for k in range(len(chunk))]
            extra = [{"epoch": epoch, **({"metadata": pset.metadata[i]} if pset.metadata[i] else {})}
                     for i in chunk]
            publish_pairs(folder, lat, dec, prompts, chunk_ids, extra)
            ids += chunk_ids
        policy.net.train(was_training)
        return ids

    def _serve(self, folder: Path) -> None:
        if self.server is None and self.port:
            from flowrl.serve.annotate_app import BackgroundServer
            from flowrl.serve.label_store import LabelStore
            try:
                self.server = BackgroundServer(LabelStore(folder, overlap=self.overlap), self.port)
            except OSError as e:
                raise ConfigError(str(e)) from None
            print(f"[flowrl] label the pairs at {self.server.url}/", flush=True)

    def _wait(self, folder: Path, ids: List[str]) -> List[dict]:
        """Poll labels.jsonl until min_labels a/b labels of `ids`, all answered, or timeout_s."""
        need = min(self.min_labels or len(ids), len(ids))
        deadline = time.time() + self.timeout_s
        while True:
            rows = read_jsonl(folder / "labels.jsonl")
            mine = [r for r in rows if r.get("pair_id") in set(ids)]
            good = decided(mine, ids)
            if len(good) >= need or len({r["pair_id"] for r in mine}) >= len(ids) or time.time() >= deadline:
                return good
            time.sleep(self.poll_s)

    @staticmethod
    def _empty_batch(policy, per_rank: int, first: int):
        """A batch of equal 'rewards' (ties, weight 0): the epoch trains on nothing."""
        from flowrl.batch import Batch
        x = torch.zeros((2 * per_rank, *policy.sample_shape))
        cond = policy.encode([""] * (2 * per_rank))
        return Batch({"latents": torch.stack([x, x], 1), "rewards": torch.zeros(2 * per_rank),
                      "prompt_ids": torch.zeros(2 * per_rank, dtype=torch.long),
                      "group_ids": (first + torch.arange(per_rank)).repeat_interleave(2),
                      **{f"cond.{k}": v for k, v in cond.items()}},
                     {"prompts": [""] * (2 * per_rank), "metadata": [{}] * (2 * per_rank)})


ONLINE_OPTIONS = ("prompts", "pairs_per_epoch", "min_labels", "timeout_s", "poll_s", "port", "overlap",
                  "num_steps", "sample_guidance", "online_dir", "seed", "replay")


def _split(name: str, options: dict):
    """algorithm options -> (OnlineLabels for the labelling ones, the loss's own options)."""
    online = {k: options.pop(k) for k in ONLINE_OPTIONS if k in options}
    return OnlineLabels(name=name, **online), options


@ALGORITHMS.register("diffusion_dpo_human")
class HumanOnlineDPO(DiffusionDPO):
    """Diffusion-DPO on labels people give while it trains. Options (config.algorithm) besides
    diffusion_dpo's beta / guidance / num_sigmas / tie_margin: prompts (prompt set the pairs are
    sampled for), pairs_per_epoch (0: sample.batch_size x num_batches_per_epoch / 2 x processes),
    min_labels (a/b labels to wait for; 0: pairs_per_epoch), timeout_s (longest wait per epoch),
    poll_s, port (serve the page from the trainer on 127.0.0.1:port; 0: run `flowrl annotate serve
    RUN_DIR/human`), overlap (fraction of pairs for two annotators), num_steps / sample_guidance (ODE
    sampling of the pairs), online_dir ("" = RUN_DIR/human), seed, replay (train on every a/b label
    so far, not only this epoch's: more data per step, the labels of earlier policies included)."""

    name = "diffusion_dpo_human"

    def __init__(self, **options):
        self.online, own = _split(self.name, dict(options))
        super().__init__(**own)
        self.pairs = "online"                  # not rollout pairs: prepare() skips the same-noise check

    def bind_run_dir(self, run_dir: Path) -> None:
        self.online.bind_run_dir(run_dir)

    def collect(self, policy, epoch: int, rank: int, world_size: int, num_samples: int):
        return self.online.collect(policy, epoch, rank, world_size, num_samples)

    def prepare(self, policy, batch, gathered, rank_slice):
        return {**super().prepare(policy, batch, gathered, rank_slice), **self.online.last}


@ALGORITHMS.register("awm_human")
class HumanOnlineAWM(AWM):
    """Advantage Weighted Matching on labels people give while it trains: each labelled pair is a
    group of two, the chosen image advantage +advantage_max, the other -advantage_max (AWM's group
    advantage of rewards 1 / 0), so the loss pulls the policy's flow-matching fit towards what people
    chose and away from what they rejected. Options: the labelling ones of diffusion_dpo_human
    (prompts, pairs_per_epoch, min_labels, timeout_s, ... replay) and awm's (weighting, kl_beta,
    timesteps_per_sample, ...); the sigmas are drawn from the pairs' num_steps-step schedule."""

    name = "awm_human"

    def __init__(self, **options):
        self.online, own = _split(self.name, dict(options))
        super().__init__(**own)
        self.schedule_steps = self.online.num_steps

    def bind_run_dir(self, run_dir: Path) -> None:
        self.online.bind_run_dir(run_dir)

    def collect(self, policy, epoch: int, rank: int, world_size: int, num_samples: int):
        return self.online.collect(policy, epoch, rank, world_size, num_samples)

    def prepare(self, policy, batch, gathered, rank_slice):
        return {**super().prepare(policy, batch, gathered, rank_slice), **self.online.last}
