"""flowrl: reward fine-tuning of flow-matching models through one trainer (flowrl.trainer).

Kept cheap: `import flowrl` loads nothing heavy; `flowrl.make` (flowrl.envs) is imported on first use.

No phoning home: onnxruntime (under the OCR reward) sends telemetry from Linux too since 1.29;
ORT_DISABLE_TELEMETRY=1, set here before anything can import it, is its full opt-out (no uploader,
no device id file), inherited by `accelerate launch` workers. Set it to 0 yourself to opt back in.
"""
import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

# OpenMP threads that spin-wait between parallel regions steal the cores a competing process needs
# (a shared CPU is the normal case for the tiny models): sleep instead, unless the user chose.
# Read by libgomp when torch loads, so it acts when flowrl is imported before torch (the CLI).
# scripts/bench_threads.py measures it quiet and contended.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = ["make"]


def __getattr__(name):
    if name == "make":
        from flowrl.envs import make
        return make
    raise AttributeError(f"module 'flowrl' has no attribute {name!r}")
