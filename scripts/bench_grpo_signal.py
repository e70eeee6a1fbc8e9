"""Diagnostic: how much of GRPO's within-group reward spread can its gradient credit to the SDE window?

    python scripts/bench_grpo_signal.py [--config grpo.py:tiny_geneval] [--prompts 8] [--noises 4]
                                        [--draws 4] [--set K=V ...]

Flow-GRPO's gradient is A * grad log p(SDE transitions in the window); the initial noise x_0 is not a
trained variable. With different x_0 per sample (sample.same_latent=False), the part of a group's
reward spread that x_0 causes is noise in that estimator (the group mean removes its average, not
its spread). For `--prompts` training prompts, `--noises` initial noises each and `--draws` SDE
draws per noise (the config's sampler and window, base model), this splits the within-prompt reward
variance into E_x0[Var_window(r | x_0)] (what the window's noise causes: creditable) and
Var_x0(E_window[r | x_0]) (what x_0 causes), and prints the creditable fraction, plus the fraction
of groups of `sample.group_size` with zero reward spread under either grouping.
"""
import argparse

import torch

from flowrl.config import load_config
from flowrl.data.prompts import load_prompts
from flowrl.bench import variance_split
from flowrl.protocols import Runtime
from flowrl.registry import POLICIES
from flowrl.rewards import build_reward
from flowrl.sampling.rollout import RolloutSettings, rollout
from flowrl.sampling.schedule import step_masks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="grpo.py:tiny_geneval")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--noises", type=int, default=4)
    ap.add_argument("--draws", type=int, default=4)
    ap.add_argument("--set", nargs="*", default=[])
    a = ap.parse_args()
    from flowrl.cache import cache_dir
    from flowrl.trainer import options
    c = load_config(a.config, a.set)
    torch.set_num_threads(max(1, c.cpu_threads))
    policy = POLICIES.build(c.model.name, Runtime(torch.device("cpu"), torch.float32, cache_dir(), c.seed),
                            **options(c.model))
    reward = build_reward(c.reward.weights.to_dict(), c.reward.options.to_dict(), torch.device("cpu"), ())
    s = c.sample
    sde, _ = step_masks(s.num_steps, s.timestep_fraction, s.sde_window_size, max(s.sde_window_start, 0))
    st = RolloutSettings(policy.sigmas(s.num_steps), sde, sde, s.noise_level, s.kind, s.guidance_scale,
                         s.guidance_scale)
    ps = load_prompts(c.prompts.dataset)
    pick = torch.randperm(len(ps), generator=torch.Generator().manual_seed(7))[:a.prompts].tolist()
    P, K, M = a.prompts, a.noises, a.draws
    rewards = torch.empty(P, K, M)
    g = torch.Generator().manual_seed(11)
    for i, p in enumerate(pick):
        prompts, meta = [ps.prompts[p]] * (K * M), [ps.metadata[p]] * (K * M)
        x0 = torch.randn((K, *policy.sample_shape), generator=g).repeat_interleave(M, dim=0)
        cond = policy.encode(prompts)
        with torch.no_grad():
            traj = rollout(lambda x, sig: policy.velocity(x, sig, cond, guidance=st.sample_guidance), x0,
                           st.sigmas, st.sde_mask, st.noise_level, st.kind, generator=g)
            total, _ = reward(policy.decode(traj.final), prompts, meta)
        rewards[i] = total.view(K, M)
    out = variance_split(rewards)
    print(f"{a.config} {' '.join(a.set)}: {P} prompts x {K} initial noises x {M} window draws")
    print(f"within-prompt reward variance {out['total']:.4f} = window part {out['window']:.4f} "
          f"+ initial-noise part {out['initial']:.4f}: creditable fraction {out['window_fraction']:.2f}")
    print(f"zero-spread fraction of same-x0 groups (size {M}) {out['zero_same_x0']:.2f}, "
          f"of mixed-x0 groups (size {K * M}) {out['zero_mixed']:.2f}")


if __name__ == "__main__":
    main()
