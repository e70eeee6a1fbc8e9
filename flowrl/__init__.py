"""flowrl: reward fine-tuning of flow-matching models through one trainer (flowrl.trainer).

Kept cheap: `import flowrl` loads nothing heavy; `flowrl.make` (flowrl.envs) is imported on first use.
"""

__all__ = ["make"]


def __getattr__(name):
    if name == "make":
        from flowrl.envs import make
        return make
    raise AttributeError(f"module 'flowrl' has no attribute {name!r}")
