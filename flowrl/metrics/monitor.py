"""Cheap diversity during training, and an alarm for reward hacking by mode collapse.

    cheap_features(samples)    points (N, D) as they are; images (N, 3, H, W) -> 8x8 thumbnails (N, 192)
    cheap_diversity(samples)   Vendi (Gaussian kernel) of at most 512 samples: ~10-50 ms
    DiversityAlarm(fraction)   warns when diversity < fraction x the base model's while reward rose

The Gaussian Vendi score with a per-call median bandwidth is scale-invariant: a distribution that
shrinks uniformly keeps its score. So pass the BASE model's bandwidth to later calls
(`DiversityAlarm.bandwidth` holds it after the first check) to compare evaluations on one scale.
"""
from __future__ import annotations

from typing import Dict, Optional, Union

import torch

from flowrl.metrics.diversity import median_bandwidth, vendi_from_features

MAX_SAMPLES = 512   # cheap_diversity looks at the first this many samples
THUMBNAIL = 8       # images are average-pooled to THUMBNAIL x THUMBNAIL pixels


def cheap_features(samples: torch.Tensor, size: int = THUMBNAIL) -> torch.Tensor:
    """(N,) / (N, D) points -> (N, D) float32; (N, 3, H, W) images -> (N, 3 * size^2) thumbnails."""
    x = samples.detach()
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim == 4 and x.shape[1] == 3:
        x = torch.nn.functional.adaptive_avg_pool2d(x.float(), (size, size))
    elif x.ndim != 2:
        raise ValueError(f"samples must be (N, D) points or (N, 3, H, W) images; got {tuple(x.shape)}")
    return x.reshape(x.shape[0], -1).float().cpu()


def cheap_diversity(samples: torch.Tensor, bandwidth: Optional[float] = None,
                    max_samples: int = MAX_SAMPLES) -> Dict[str, float]:
    """Gaussian-kernel Vendi score of the first `max_samples` samples (points or images).

    samples: (N, D), (N,) or (N, 3, H, W) (thumbnailed by cheap_features) or features from it.
    bandwidth: kernel width; None -> median rule on these samples (pass the base model's to compare).
    Returns {"vendi": in [1, n], "bandwidth": s used, "num_samples": n}. Pure, no side effects.
    """
    x = cheap_features(samples)[:max_samples].double()
    if x.shape[0] < 2:
        raise ValueError(f"cheap_diversity needs at least 2 samples, got {x.shape[0]}")
    s = float(bandwidth) if bandwidth is not None else median_bandwidth(x)
    vendi = float(vendi_from_features(x, kernel="gaussian", bandwidth=s))
    return {"vendi": vendi, "bandwidth": s, "num_samples": int(x.shape[0])}


def _value(diversity: Union[float, Dict[str, float]]) -> float:
    return float(diversity["vendi"] if isinstance(diversity, dict) else diversity)


class DiversityAlarm:
    """Flags mode collapse: diversity below `fraction` x the base model's while reward rose.

    The first `check` is the reference (the base model): it never warns, and when `diversity` is
    cheap_diversity's dict its bandwidth is kept in `.bandwidth` for later measurements.
    fraction: in (0, 1]; 0 disables the alarm.
    """

    def __init__(self, fraction: float = 0.5):
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"eval.diversity_alarm_fraction must be in [0, 1], got {fraction}")
        self.fraction = float(fraction)
        self.base_diversity: Optional[float] = None
        self.base_reward: Optional[float] = None
        self.bandwidth: Optional[float] = None

    def check(self, step, diversity: Union[float, Dict[str, float]], reward: float) -> Optional[str]:
        """Record one evaluation; returns a warning line, or None when all is well.

        step: the epoch (or a tag) for the message; diversity: a float or cheap_diversity's dict;
        reward: mean eval reward.
        """
        value, reward = _value(diversity), float(reward)
        if self.base_diversity is None:
            self.base_diversity, self.base_reward = value, reward
            if isinstance(diversity, dict) and diversity.get("bandwidth") is not None:
                self.bandwidth = float(diversity["bandwidth"])
            return None
        limit = self.fraction * self.base_diversity
        if self.fraction > 0 and value < limit and reward > self.base_reward:
            return (f"diversity alarm at step {step}: Vendi {value:.2f} < {self.fraction:g} x base "
                    f"{self.base_diversity:.2f} while eval reward rose {self.base_reward:.4f} -> "
                    f"{reward:.4f}: likely mode collapse / reward hacking (raise algorithm.beta, "
                    f"lower train.lr, or stop at an earlier checkpoint)")
        return None
