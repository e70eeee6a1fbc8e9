"""Rewards for 8x8 digit images (the `digits` policy): a small CNN trained on sklearn digits.

    digit_classifier: P(the digit the prompt asks for), in [0, 1]; prompt "7" -> P(class 7).
                      Option `target` (0..9) asks for that digit whatever the prompt says.
    digit_confidence: the largest digit probability (a clearly drawn digit, any class), in [0, 1].

Samples are (B, 3, H, W) floats in [0, 1] (grey replicated, as DigitsPolicy.decode gives); the
channels are averaged, resized to 8x8 if needed and mapped to [-1, 1] (the flow's pixel scale).

The classifier has an 11th class, JUNK ("not a digit"), trained on uniform noise, pixel-scrambled
digits, heavily noised digits and blends of two digits; the digits get 1-pixel shifts and mild
noise. Without it a plain classifier is fooled by noise: RL then raised its reward while the samples
turned into high-contrast noise. It trains on the same 75 % split as the flow (flowrl.policies.
image_flow.digits_split; 98.4 % accuracy on the other 25 %) in ~12 s and is cached as safetensors.
Both rewards are differentiable: the graph from images to scores is kept.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from torch import nn

from flowrl.cache import cached_state_dict
from flowrl.registry import REWARDS

CLASSIFIER_VERSION = 2   # bump when the classifier or its training changes (part of the cache key)
JUNK = 10   # the classifier's 11th class: "not a digit" (noise, scrambled or blended digits)


class DigitClassifier(nn.Module):
    """Small CNN: (B, 1, 8, 8) pixels in [-1, 1] -> (B, 11) logits (digits 0..9, then JUNK)."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.SiLU(), nn.Flatten(),
            nn.Dropout(0.2), nn.Linear(2 * width * 16, 128), nn.SiLU(), nn.Linear(128, JUNK + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def shift_images(x: torch.Tensor, g: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Translate each (1, 8, 8) image by a random integer offset in [-max_shift, max_shift]^2 (zero
    = -1 fill). x (B, 1, 8, 8) -> same shape."""
    p, n = max_shift, x.shape[0]
    padded = nn.functional.pad(x[:, 0], (p, p, p, p), value=-1.0)
    rows, cols = torch.arange(8) + torch.randint(0, 2 * p + 1, (2, n, 1), generator=g)
    return padded[torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]].unsqueeze(1)


def junk_images(x: torch.Tensor, y: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """n "not a digit" images (n, 1, 8, 8) in [-1, 1] built from digits x (N, 1, 8, 8), labels y:
    uniform noise, pixel-scrambled digits, digits under heavy noise, blends of two different digits."""
    i, j = torch.randint(len(y), (2, n), generator=g)
    kind = torch.randint(4, (n,), generator=g).view(n, 1, 1, 1)
    uniform = torch.rand((n, 1, 8, 8), generator=g) * 2 - 1
    perm = torch.argsort(torch.rand((n, 64), generator=g), dim=1)
    scrambled = x[i].flatten(1).gather(1, perm).view(n, 1, 8, 8)
    scale = 0.6 + 0.6 * torch.rand((n, 1, 1, 1), generator=g)
    noisy = x[i] + scale * torch.randn((n, 1, 8, 8), generator=g)
    blend = torch.where((y[i] != y[j]).view(n, 1, 1, 1), (x[i] + x[j]) / 2, uniform)
    out = torch.where(kind == 2, noisy, blend)
    out = torch.where(kind == 1, scrambled, out)
    return torch.where(kind == 0, uniform, out).clamp(-1, 1)


def train_digit_classifier(seed: int = 0, iters: int = 2000, noise: float = 0.3) -> Dict[str, torch.Tensor]:
    """Adam on the digits train split: minibatches of 128 digits (random 1-pixel shifts, pixel noise
    N(0, s^2), s ~ U(0, noise)) + 64 junk images (class JUNK). Returns the eval-mode state dict."""
    from flowrl.policies.image_flow import digits_split
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y, _, _ = digits_split(0)
    net = DigitClassifier()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    for _ in range(iters):
        idx = torch.randint(len(y), (128,), generator=g)
        real = shift_images(x[idx], g)
        real = real + noise * torch.rand((128, 1, 1, 1), generator=g) * torch.randn(real.shape, generator=g)
        xb = torch.cat([real.clamp(-1, 1), junk_images(x, y, 64, g)])
        yb = torch.cat([y[idx], torch.full((64,), JUNK, dtype=torch.long)])
        loss = nn.functional.cross_entropy(net(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval().state_dict()


def load_digit_classifier(device, seed: int = 0, cache_dir: str = "") -> nn.Module:
    """The cached classifier, frozen, in eval mode, on `device`."""
    state = cached_state_dict(f"digits-classifier-v{CLASSIFIER_VERSION}-s{seed}",
                              lambda: train_digit_classifier(seed), root=cache_dir or None)
    net = DigitClassifier()
    net.load_state_dict(state)
    return net.to(device).requires_grad_(False).eval()


def images_to_pixels(samples: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) float in [0, 1] -> (B, 1, 8, 8) in [-1, 1]: channel mean, area-resize to 8x8."""
    if samples.ndim != 4:
        raise ValueError(f"digit rewards take images (B, C, H, W) in [0, 1]; got {tuple(samples.shape)}")
    x = samples.float().mean(dim=1, keepdim=True)
    if x.shape[-2:] != (8, 8):
        x = nn.functional.adaptive_avg_pool2d(x, (8, 8))
    return x * 2 - 1


def prompt_targets(prompts: Sequence[str], target: Optional[int] = None) -> torch.Tensor:
    """The digit each sample should show: `target` (0..9) for all, else (None or -1) the prompt's
    digit. -> (B,) long."""
    if target is not None and int(target) >= 0:
        return torch.full((len(prompts),), int(target), dtype=torch.long)
    bad = [p for p in prompts if not (len(str(p).strip()) == 1 and str(p).strip().isdigit())]
    if bad:
        raise ValueError(f"digit_classifier: prompt {bad[0]!r} is not a digit '0'..'9'; use the digits "
                         f"prompts (prompts.dataset='digits/train') or set "
                         f"reward.options.digit_classifier.target=<0..9>")
    return torch.tensor([int(str(p).strip()) for p in prompts], dtype=torch.long)


@REWARDS.register("digit_classifier", domain="image", differentiable=True)
def digit_classifier(device, target: Optional[int] = -1, temperature: float = 1.0, seed: int = 0,
                     cache_dir: str = ""):
    """reward = softmax(logits / temperature)[digit asked for] in [0, 1] (softmax over the 10 digits
    and JUNK). Options: target (0..9 for that digit whatever the prompt; -1 or None = the prompt's
    digit), temperature (> 0; > 1 softens the probabilities), seed / cache_dir of the classifier."""
    if target is not None and not -1 <= int(target) <= 9:
        raise ValueError(f"reward.options.digit_classifier.target={target}: use a digit 0..9, or -1 "
                         f"for the prompt's digit")
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
    """reward = max over the 10 digits of softmax(logits / temperature) in [0, 1] (JUNK takes the
    rest): a clearly drawn digit, any class. Options as digit_classifier."""
    if temperature <= 0:
        raise ValueError(f"reward.options.digit_confidence.temperature={temperature}: must be > 0")
    net = load_digit_classifier(device, seed, cache_dir)

    def fn(samples, prompts, metadata):
        probs = torch.softmax(net(images_to_pixels(samples.to(device))) / temperature, dim=1)
        return probs[:, :JUNK].amax(dim=1)
    return fn
