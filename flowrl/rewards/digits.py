"""Rewards for 8x8 digit images (the `digits` policy): a small classifier trained on sklearn digits.

    digit_classifier: P(the digit the prompt asks for), in [0, 1]; prompt "7" -> P(class 7).
                      Option `target` (0..9) asks for that digit whatever the prompt says.
    digit_confidence: the classifier's max class probability (any digit, clearly drawn), in [0, 1].

Samples are (B, 3, H, W) floats in [0, 1] (grey replicated, as DigitsPolicy.decode gives); the
channels are averaged, resized to 8x8 if needed and mapped to [-1, 1] (the flow's pixel scale).
The classifier is an MLP trained on the same 75 % split as the flow (flowrl.policies.image_flow.
digits_split), with Gaussian pixel noise as augmentation so it stays smooth on generated images;
it is cached as safetensors. Both rewards are differentiable: the graph from images to scores is kept.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from torch import nn

from flowrl.cache import cached_state_dict
from flowrl.registry import REWARDS

CLASSIFIER_VERSION = 1   # bump when the classifier or its training changes (part of the cache key)


def _classifier(hidden: int = 256) -> nn.Module:
    """(B, 64) pixels in [-1, 1] -> (B, 10) logits."""
    return nn.Sequential(nn.Linear(64, hidden), nn.SiLU(), nn.Dropout(0.2), nn.Linear(hidden, hidden),
                         nn.SiLU(), nn.Dropout(0.2), nn.Linear(hidden, 10))


def train_digit_classifier(seed: int = 0, iters: int = 2000, noise: float = 0.2) -> Dict[str, torch.Tensor]:
    """Adam on the digits train split, minibatches of 128, pixel noise N(0, noise^2) added."""
    from flowrl.policies.image_flow import digits_split
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y, _, _ = digits_split(0)
    x = x.flatten(1)
    net = _classifier()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    for _ in range(iters):
        idx = torch.randint(len(y), (128,), generator=g)
        xb = x[idx] + noise * torch.randn(x[idx].shape, generator=g)
        loss = nn.functional.cross_entropy(net(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval().state_dict()


def load_digit_classifier(device, seed: int = 0, cache_dir: str = "") -> nn.Module:
    """The cached classifier, frozen, in eval mode, on `device`."""
    state = cached_state_dict(f"digits-classifier-v{CLASSIFIER_VERSION}-s{seed}",
                              lambda: train_digit_classifier(seed), root=cache_dir or None)
    net = _classifier()
    net.load_state_dict(state)
    return net.to(device).requires_grad_(False).eval()


def images_to_pixels(samples: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) float in [0, 1] -> (B, 64) in [-1, 1]: channel mean, area-resize to 8x8."""
    if samples.ndim != 4:
        raise ValueError(f"digit rewards take images (B, C, H, W) in [0, 1]; got {tuple(samples.shape)}")
    x = samples.float().mean(dim=1, keepdim=True)
    if x.shape[-2:] != (8, 8):
        x = nn.functional.adaptive_avg_pool2d(x, (8, 8))
    return (x * 2 - 1).flatten(1)


def prompt_targets(prompts: Sequence[str], target: Optional[int]) -> torch.Tensor:
    """The digit each sample should show: `target` for all, else the prompt's digit. -> (B,) long."""
    if target is not None:
        return torch.full((len(prompts),), int(target), dtype=torch.long)
    bad = [p for p in prompts if not (len(str(p).strip()) == 1 and str(p).strip().isdigit())]
    if bad:
        raise ValueError(f"digit_classifier: prompt {bad[0]!r} is not a digit '0'..'9'; use the digits "
                         f"prompts (prompts.dataset='digits/train') or set "
                         f"reward.options.digit_classifier.target=<0..9>")
    return torch.tensor([int(str(p).strip()) for p in prompts], dtype=torch.long)


@REWARDS.register("digit_classifier", domain="image", differentiable=True)
def digit_classifier(device, target: Optional[int] = None, temperature: float = 1.0, seed: int = 0,
                     cache_dir: str = ""):
    """reward = softmax(logits / temperature)[digit asked for] in [0, 1]. Options: target (0..9 or
    None = the prompt's digit), temperature (> 0; > 1 softens the probabilities), seed / cache_dir of
    the cached classifier."""
    if target is not None and not 0 <= int(target) <= 9:
        raise ValueError(f"reward.options.digit_classifier.target={target}: use a digit 0..9 (or None)")
    if temperature <= 0:
        raise ValueError(f"reward.options.digit_classifier.temperature={temperature}: must be > 0")
    net = load_digit_classifier(device, seed, cache_dir)

    def fn(samples, prompts, metadata):
        probs = torch.softmax(net(images_to_pixels(samples.to(device))) / temperature, dim=1)
        want = prompt_targets(prompts, target).to(probs.device)
        return probs.gather(1, want[:, None])[:, 0]
    return fn


@REWARDS.register("digit_confidence", domain="image", differentiable=True)
def digit_confidence(device, temperature: float = 1.0, seed: int = 0, cache_dir: str = ""):
    """reward = max_k softmax(logits / temperature)_k in [0.1, 1]: a clearly drawn digit, any class."""
    if temperature <= 0:
        raise ValueError(f"reward.options.digit_confidence.temperature={temperature}: must be > 0")
    net = load_digit_classifier(device, seed, cache_dir)

    def fn(samples, prompts, metadata):
        return torch.softmax(net(images_to_pixels(samples.to(device))) / temperature, dim=1).amax(dim=1)
    return fn
