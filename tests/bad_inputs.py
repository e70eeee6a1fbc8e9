"""The table of bad inputs a user can give flowrl, shared by tests/test_user_errors.py and
scripts/reliability.py: each case writes its files into a fresh folder and returns the CLI argv, the
exit code it must end with (2: one clear line, or 0: tolerated with a warning) and a regex the
message must match (the file / line / key at fault, or the fix).

`invoke(argv)` runs the CLI in-process (typer's CliRunner, stderr apart) and `verdict(case, result)`
says whether the outcome is the promised one.
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

# A tiny two-moons run: a 16-unit flow (30 base iterations), 64 eval samples, no classifier.
TINY = ["model.hidden=16", "model.depth=1", "model.base_iters=30", "model.base_batch=64",
        "eval.num_samples=64", "eval.batch_size=32", "sample.eval_num_steps=4", "sample.num_steps=4",
        "sample.batch_size=32", "sample.num_batches_per_epoch=1", "sample.group_size=32",
        "train.batch_size=32", "reward.weights={'moons_fidelity': 1.0}", "logging.progress=False",
        "num_epochs=2", "checkpoint.every=1", "eval.every=0"]


def tiny_args(*extra: str) -> List[str]:
    return [a for o in TINY + list(extra) for a in ("--set", o)]


def train(*args: str, config: str = "grpo.py:moons") -> List[str]:
    return ["train", "--config", config, *tiny_args(), *args]


@dataclass
class Case:
    id: str
    make: Callable[[Path, Callable[[], Path]], List[str]]  # (folder, tiny finished run dir) -> argv
    pattern: str                                           # regex the message must match
    code: int = 2                                          # expected exit code


def _write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)
    return path


def _pairs(d: Path, rows, files=None) -> Path:
    """A preference file d/prefs/pairs.jsonl (rows: dicts or raw strings) and its .npy points."""
    import numpy as np
    for name, value in (files or {"a.npy": np.zeros(2, np.float32), "b.npy": np.ones(2, np.float32)}).items():
        _write(d / "prefs" / name, b"")
        np.save(d / "prefs" / name, value)
    text = "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n"
    return _write(d / "prefs" / "pairs.jsonl", text)


def _pref(d: Path, rows, files=None) -> List[str]:
    return train("--set", f"algorithm.preference_file={_pairs(d, rows, files)}", "--output-dir", str(d / "r"),
                 config="dpo.py:human")


ROW = {"prompt": "", "image_a": "a.npy", "image_b": "b.npy", "preferred": "a"}


def _png_pairs(d: Path) -> List[str]:
    from PIL import Image
    for name, size in (("a.png", (8, 8)), ("b.png", (16, 8))):
        _write(d / "prefs" / name, b"")
        Image.new("RGB", size).save(d / "prefs" / name)
    return _pref(d, [{**ROW, "image_a": "a.png", "image_b": "b.png"}])


def _nan_points(d: Path) -> List[str]:
    import numpy as np
    return _pref(d, [ROW], {"a.npy": np.array([np.nan, 0], np.float32), "b.npy": np.ones(2, np.float32)})


def _npz(d: Path, **arrays) -> List[str]:
    import numpy as np
    np.savez(d / "s.npz", **arrays)
    return ["eval-diversity", "--samples", str(d / "s.npz")]


def _truncated_npz(d: Path) -> List[str]:
    import numpy as np
    argv = _npz(d, x=np.random.default_rng(0).random((200, 2)))
    data = (d / "s.npz").read_bytes()
    (d / "s.npz").write_bytes(data[:len(data) // 2])
    return argv


def _nan_npz(d: Path, key: str) -> List[str]:
    import numpy as np
    x, r = np.random.default_rng(0).random((20, 2)), np.zeros(20)
    (x if key == "x" else r)[3] = np.nan
    return _npz(d, x=x, reward=r)


def _copy_run(d: Path, run: Callable[[], Path]) -> Path:
    dst = d / "run"
    shutil.copytree(run(), dst)
    return dst


def _metrics(d: Path, run, edit: Callable[[List[str]], str], command: str) -> List[str]:
    r = _copy_run(d, run)
    lines = (r / "metrics.jsonl").read_text().splitlines()
    (r / "metrics.jsonl").write_text(edit(lines))
    if command == "resume":
        return train("--output-dir", str(r), "--resume", "--set", "num_epochs=3")
    return ["visualize", "checkpoints", str(r)]


def _cut_last(lines: List[str]) -> str:      # a disk-full append: the last row cut mid-way
    return "\n".join(lines[:-1]) + "\n" + lines[-1][:len(lines[-1]) // 2]


def _bad_middle(lines: List[str]) -> str:
    return "\n".join([lines[0], lines[1][:10]] + lines[2:]) + "\n"


def _resume_corrupt_checkpoint(d: Path, run) -> List[str]:
    r = _copy_run(d, run)
    (r / "checkpoints" / "step_2" / "state.json").unlink()
    return train("--output-dir", str(r), "--resume")


CASES: List[Case] = [
    # config files and values
    Case("config syntax error", lambda d, run: train(config=f"{_write(d / 'c.py', 'def get_config(:')}:x"),
         r"c\.py:1: syntax error"),
    Case("config without get_config", lambda d, run: train(config=f"{_write(d / 'c.py', 'X = 1')}:x"),
         r"c\.py has no get_config"),
    Case("config not UTF-8", lambda d, run: train(config=str(_write(d / "c.py", b"# caf\xe9")) + ":x"),
         r"c\.py:1: .*not UTF-8"),
    Case("config file missing", lambda d, run: train(config="nope.py:moons"), r"'nope\.py' not found"),
    Case("unknown experiment", lambda d, run: train(config="grpo.py:moonz"), r"no experiment 'moonz'"),
    Case("unknown model.name", lambda d, run: train("--set", "model.name=toy3d"), r"model\.name.*toy3d.*toy2d"),
    Case("unknown algorithm.name", lambda d, run: train("--set", "algorithm.name=gpro"), r"algorithm\.name.*grpo"),
    Case("unknown reward", lambda d, run: train("--set", "reward.weights={'moons': 1.0}"), r"reward\.weights\.moons"),
    Case("reward option out of range", lambda d, run: train("--set", "reward.weights={'placebo': 1.0}",
         "--set", "reward.options={'placebo': {'seed': 1.5}}"), r"reward 'placebo'.*Fix reward\.options\.placebo\.seed"),
    Case("unknown reward option", lambda d, run: train("--set", "reward.weights={'placebo': 1.0}",
         "--set", "reward.options={'placebo': {'sed': 1}}"), r"reward 'placebo'.*sed.*Fix the options"),
    Case("unknown sample.kind", lambda d, run: train("--set", "sample.kind=ode"), r"sample\.kind='ode'.*sde"),
    Case("train.lr=0", lambda d, run: train("--set", "train.lr=0"), r"train\.lr=0\.0 \(from --set train\.lr=0\)"),
    Case("train.lr<0", lambda d, run: train("--set", "train.lr=-1e-3"), r"train\.lr.*> 0"),
    Case("train.lr=nan", lambda d, run: train("--set", "train.lr=nan"), r"train\.lr.*finite"),
    Case("sample.num_steps=0", lambda d, run: train("--set", "sample.num_steps=0"), r"sample\.num_steps=0.*>= 1"),
    Case("num_epochs=-1", lambda d, run: train("--set", "num_epochs=-1"), r"num_epochs=-1.*>= 1"),
    Case("mixed_precision typo", lambda d, run: train("--set", "mixed_precision=bf32"), r"mixed_precision.*bf16"),
    Case("misspelt key", lambda d, run: train("--set", "train.lrr=1"), r'Did you mean "lr"'),
    Case("wrong value type", lambda d, run: train("--set", "train.lr=abc"), r"train\.lr=abc"),
    Case("override without =", lambda d, run: train("--set", "train.lr"), r"key=value"),
    Case("indivisible batches", lambda d, run: train("--set", "sample.group_size=5"), r"sample\.group_size"),
    # run dirs
    Case("--output-dir is a file", lambda d, run: train("--output-dir", str(_write(d / "f", "x"))), r"is a file"),
    Case("--output-dir under a file", lambda d, run: train("--output-dir", str(_write(d / "f", "x") / "r")),
         r"parent .*f is a file"),
    Case("--resume without --output-dir", lambda d, run: train("--resume"), r"--resume needs --output-dir"),
    Case("--resume of an empty dir", lambda d, run: train("--resume", "--output-dir", str(d)), r"holds no run"),
    Case("--resume, checkpoint file missing", _resume_corrupt_checkpoint, r"step_2.*state\.json"),
    # prompt files
    Case("prompt file not UTF-8", lambda d, run: train("--set", f"prompts.dataset={_write(d / 'p.txt', b'ok' + bytes([10, 255]))}",
                                                       "--output-dir", str(d / "r")), r"p\.txt:2: .*not UTF-8"),
    Case("prompt file all empty", lambda d, run: train("--set", f"prompts.dataset={_write(d / 'p.txt', chr(10) * 3)}",
                                                       "--output-dir", str(d / "r")), r"p\.txt holds no prompts"),
    Case("prompt JSONL bad line", lambda d, run: train("--set", f"prompts.dataset={_write(d / 'p.jsonl', '{}' + chr(10) + '{x' + chr(10))}",
                                                       "--output-dir", str(d / "r")), r"p\.jsonl:2: not valid JSON"),
    Case("prompt file missing", lambda d, run: train("--set", "prompts.dataset=/nonexistent/p.txt"), r"p\.txt' not found"),
    # preference files
    Case("preference: bad JSON line", lambda d, run: _pref(d, [ROW, '{"prompt": ']), r"pairs\.jsonl:2: not valid JSON"),
    Case("preference: missing keys", lambda d, run: _pref(d, [{"prompt": "", "image_a": "a.npy"}]),
         r"pairs\.jsonl:1: .*missing \['image_b', 'preferred'\]"),
    Case("preference: unknown preferred", lambda d, run: _pref(d, [{**ROW, "preferred": "left"}]),
         r"pairs\.jsonl:1: preferred must be"),
    Case("preference: images of 2 sizes", lambda d, run: _png_pairs(d), r"pairs\.jsonl:1: .*one size"),
    Case("preference: NaN values", lambda d, run: _nan_points(d), r"a\.npy: 1 NaN"),
    Case("preference: ../ path", lambda d, run: _pref(d, [{**ROW, "image_b": "../../etc/passwd"}]),
         r"pairs\.jsonl:1: image_b '\.\./\.\./etc/passwd' points outside"),
    Case("preference: absolute path", lambda d, run: _pref(d, [{**ROW, "image_a": "/etc/passwd"}]), r"outside"),
    Case("preference: missing image", lambda d, run: _pref(d, [{**ROW, "image_a": "gone.npy"}]), r"pairs\.jsonl:1: image_a"),
    Case("preference: empty file", lambda d, run: _pref(d, []), r"holds no pairs"),
    # eval-diversity samples files
    Case("samples: truncated .npz", lambda d, run: _truncated_npz(d), r"s\.npz is not a readable \.npz"),
    Case("samples: NaN in x", lambda d, run: _nan_npz(d, "x"), r"s\.npz: 'x' holds 2 NaN"),
    Case("samples: NaN in reward", lambda d, run: _nan_npz(d, "reward"), r"s\.npz: 'reward' holds 1 NaN"),
    Case("samples: no key x", lambda d, run: _npz(d, y=[1.0, 2.0]), r"no key 'x'"),
    Case("samples: file missing", lambda d, run: ["eval-diversity", "--samples", str(d / "no.npz")], r"does not exist"),
    Case("samples and run dir both", lambda d, run: ["eval-diversity", str(d), "--samples", str(d)], r"not both"),
    # run logs
    Case("metrics.jsonl cut last line: --resume", lambda d, run: _metrics(d, run, _cut_last, "resume"),
         r"ignoring a cut-off last line", code=0),
    Case("metrics.jsonl cut last line: visualize", lambda d, run: _metrics(d, run, _cut_last, "visualize"),
         r"ignoring a cut-off last line", code=0),
    Case("metrics.jsonl bad middle line: visualize", lambda d, run: _metrics(d, run, _bad_middle, "visualize"),
         r"metrics\.jsonl:2: not valid JSON"),
    Case("metrics.jsonl bad middle line: --resume", lambda d, run: _metrics(d, run, _bad_middle, "resume"),
         r"metrics\.jsonl:2: not valid JSON"),
    Case("visualize a non-run dir", lambda d, run: ["visualize", "checkpoints", str(d)], r"not a run dir"),
    Case("init tiny-sd3 into a file", lambda d, run: ["init", "tiny-sd3", str(_write(d / "f", "x"))], r"already exists"),
    # online labels
    Case("online labels: poll_s 0", lambda d, run: train("--set", "algorithm.poll_s=0", "--output-dir", str(d / "r"),
                                                          config="dpo.py:human_online_awm"),
         r"poll_s > 0 \(got 0\.0\).*--set algorithm\.NAME=VALUE"),
]


def invoke(argv: List[str]):
    """Run the CLI in-process; the result has exit_code, stdout, stderr (apart) and exception."""
    from typer.testing import CliRunner

    from flowrl.cli import app
    return CliRunner().invoke(app, argv)


def verdict(case: Case, result) -> Tuple[bool, str]:
    """(as promised?, why not). Exit 2: stderr is ONE line `error: ...` matching the pattern, no
    traceback. Exit 0: the pattern is in the output (the warning)."""
    err = [line for line in result.stderr.splitlines() if line.strip()]
    text = result.stdout + result.stderr
    if result.exit_code != case.code:
        why = repr(result.exception) if result.exception and not isinstance(result.exception, SystemExit) else text[-300:]
        return False, f"exit {result.exit_code}, expected {case.code}: {why}"
    if "Traceback" in text:
        return False, "a traceback was printed"
    if case.code == 2:
        if len(err) != 1 or not err[0].startswith("error: "):
            return False, f"stderr is not one 'error:' line: {err[:3]}"
        text = err[0]
    if not re.search(case.pattern, text):
        return False, f"message does not match {case.pattern!r}: {text[-300:]}"
    return True, ""


def run_case(case: Case, folder: Path, tiny_run: Callable[[], Path]) -> Tuple[bool, str, Optional[str]]:
    """(ok, why not, the error line) for one case in a fresh `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    result = invoke(case.make(folder, tiny_run))
    ok, why = verdict(case, result)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    return ok, why, lines[-1] if lines else None


def make_tiny_run(root: Path) -> Path:
    """Train the tiny moons run once (2 epochs, a checkpoint each) into root/tiny; return its dir."""
    run = root / "tiny"
    if not (run / "summary.json").exists():
        shutil.rmtree(run, ignore_errors=True)
        result = invoke(train("--output-dir", str(run)))
        if result.exit_code != 0:
            raise RuntimeError(f"the tiny run failed: {result.output[-2000:]} {result.exception!r}")
    return run
