"""Name -> factory registries. Every entry of one registry has the same signature.

    POLICIES:   factory(**options) -> Policy                 (options = config.model minus `name`)
    ALGORITHMS: factory(**options) -> Algorithm              (options = config.algorithm minus `name`)
    REWARDS:    factory(device, **options) -> RewardFn       (options = config.reward.options[name])

Factories are registered at import time of their module; `_ensure_loaded` imports the modules that
hold the built-in entries, lazily, so `flowrl --help` stays fast.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Callable, Dict, Iterable


class Registry:
    def __init__(self, kind: str, modules: Iterable[str] = ()):
        self.kind = kind
        self._entries: Dict[str, Callable] = {}
        self._meta: Dict[str, dict] = {}
        self._modules = tuple(modules)
        self._loaded = False

    def register(self, name: str, **meta) -> Callable[[Callable], Callable]:
        def deco(fn: Callable) -> Callable:
            if name in self._entries and self._entries[name] is not fn:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = fn
            self._meta[name] = meta
            return fn
        return deco

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self._loaded = True
            for mod in self._modules:
                importlib.import_module(mod)

    def names(self) -> list:
        self._ensure_loaded()
        return sorted(self._entries)

    def meta(self, name: str) -> dict:
        self.get(name)
        return self._meta[name]

    def get(self, name: str) -> Callable:
        self._ensure_loaded()
        if name not in self._entries:
            close = difflib.get_close_matches(name, list(self._entries), n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise KeyError(f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def build(self, name: str, *args, **options):
        factory = self.get(name)
        try:
            return factory(*args, **options)
        except TypeError as e:  # unknown option: say which entry and what it takes
            if "unexpected keyword" in str(e) or "got an unexpected" in str(e):
                raise TypeError(f"{self.kind} {name!r}: {e}. Fix the options under this {self.kind}'s "
                                f"config section.") from e
            raise


# Modules holding the built-in entries; a new base model / method / reward family adds one line here.
POLICIES = Registry("policy", ["flowrl.policies.toy2d", "flowrl.policies.sd3",
                               "flowrl.policies.gmm1d", "flowrl.policies.image_flow",
                               "flowrl.policies.flux"])
ALGORITHMS = Registry("algorithm", ["flowrl.algorithms.grpo", "flowrl.algorithms.ddpo",
                                    "flowrl.algorithms.orw", "flowrl.algorithms.nft",
                                    "flowrl.algorithms.value_matching",
                                    "flowrl.algorithms.dpo", "flowrl.algorithms.reward_backprop",
                                    "flowrl.algorithms.human_online",
                                    "flowrl.algorithms.awm", "flowrl.algorithms.dgpo"])
REWARDS = Registry("reward", ["flowrl.rewards.toy", "flowrl.rewards.jpeg", "flowrl.rewards.ocr",
                              "flowrl.rewards.clip", "flowrl.rewards.scene",
                              "flowrl.rewards.toy1d", "flowrl.rewards.digits",
                              "flowrl.rewards.remote", "flowrl.rewards.placebo"])
