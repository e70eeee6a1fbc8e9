"""flowrl: reward fine-tuning of flow-matching models through one trainer (flowrl.trainer).

Kept cheap: `import flowrl` loads nothing heavy; `flowrl.make` (flowrl.envs) is imported on first use.

No phoning home: onnxruntime (under the OCR reward) sends telemetry from Linux too since 1.29;
ORT_DISABLE_TELEMETRY=1, set here before anything can import it, is its full opt-out (no uploader,
no device id file), inherited by `accelerate launch` workers. Set it to 0 yourself to opt back in.
"""
import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__all__ = ["make"]


def __getattr__(name):
    if name == "make":
        from flowrl.envs import make
        return make
    raise AttributeError(f"module 'flowrl' has no attribute {name!r}")
