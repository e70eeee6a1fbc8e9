"""A reward that takes its time, for `flowrl serve-reward --import tests/serve/slow_reward.py`: while
one call sleeps, concurrent requests queue up, so the server's merging is deterministic in tests."""
import time

from flowrl.registry import REWARDS


@REWARDS.register("slow_mean", domain="image", differentiable=False)
def slow_mean(device=None, seconds: float = 0.5):
    """(B, C, H, W) -> (B,) each image's mean pixel, after sleeping `seconds` per call."""
    def fn(images, prompts, metadata):
        time.sleep(seconds)
        return images.float().mean(dim=(1, 2, 3))
    return fn
