"""Rewards: a registry of factories with one signature, and their weighted sum.

A reward function scores one rank's own samples:

    fn(samples, prompts, metadata) -> scores
      samples:  (B, 2) float for 2-D flows; (B, 3, H, W) float in [0, 1] for images
      prompts:  list of B strings ("" for unconditional models)
      metadata: list of B dicts (e.g. {"text": ...} for OCR prompts)
      scores:   (B,) float tensor, finite, on any device

Factories are registered with `@REWARDS.register(name, domain=...)` and have the signature
`factory(device: torch.device, **options) -> fn`. Heavy imports happen inside the factory.
"""
from flowrl.rewards.combine import WeightedReward, build_reward, check_scores  # noqa: F401
