"""What survives what: hostile and unlucky use of `flowrl train`, each scenario PASS or FAIL.

    python scripts/reliability.py [--kills 5] [--seed 0] [--only kills,bad_inputs,...] [--json out.json]

Scenarios (all on tiny CPU runs, in a temporary folder; a private model cache):
  kills        kill -9 at random moments of a tiny moons run, --kills times, then --resume to the end:
               does it finish, is any checkpoint half-written, are the metrics and the final weights
               bit-exact to an uninterrupted run
  resume_2proc the same moons run on 2 processes (accelerate launch, CPU, gloo), kill -9 after
               checkpoint 2, --resume: bit-exact?
  resume_sd3   grpo.py:tiny_sd3 (LoRA), kill -9 after checkpoint 2, --resume: bit-exact?
  bad_inputs   every case of tests/bad_inputs.py (the table the tests use): how many end in one clear
               `error:` line with exit code 2 (or, where promised, a warning and success)
  nan          --set train.lr=1e30: no checkpoint may hold non-finite weights, and the run must stop
               with a message naming the epoch and what went non-finite (or skip the bad steps and
               finish on finite weights)
  two_writers  two `flowrl train` on one --output-dir at once: one must be refused naming the
               holder's PID, and the log must hold one run's rows
  disk_full    --output-dir on a 192 KiB tmpfs (root; else RLIMIT_FSIZE): one `error:` line, exit 2, no
               half checkpoint, and --resume finishes once there is room
  read_only    --output-dir on a read-only file system: one `error:` line, exit 2
Prints a table; exit status 0 only if every scenario passed. Default run: a few minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]
from bad_inputs import CASES, TINY, run_case  # noqa: E402  (the same table as tests/test_user_errors.py)

MOONS = TINY + ["num_epochs=8", "checkpoint.keep_last=0"]
KILLS = MOONS + ["num_epochs=40"]            # long enough that most kills land after start-up
SD3 = ["num_epochs=4", "checkpoint.every=1", "checkpoint.keep_last=0", "eval.every=0", "logging.progress=False",
       "sample.batch_size=4", "sample.num_batches_per_epoch=2", "sample.group_size=4", "train.batch_size=4",
       "eval.num_samples=4", "eval.batch_size=4", "model.resolution=32", "model.max_sequence_length=16"]


class Ctx:
    def __init__(self, root: Path, seed: int):
        self.root, self.rng = root, random.Random(seed)
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "FLOWRL_CACHE": str(root / "cache"),
                    "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
        os.environ["FLOWRL_CACHE"] = self.env["FLOWRL_CACHE"]   # the in-process bad-input cases too

    def cmd(self, run_dir: Path, overrides: List[str], resume=False, config="grpo.py:moons", procs=1) -> List[str]:
        head = [sys.executable, "-m", "flowrl"] if procs == 1 else [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(procs),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "flowrl"]
        argv = head + ["train", "--config", config, "--output-dir", str(run_dir)] + (["--resume"] if resume else [])
        return argv + [a for o in overrides for a in ("--set", o)]

    def start(self, argv: List[str], **kw) -> subprocess.Popen:
        env = {**self.env, **({"ACCELERATE_USE_CPU": "1"} if "accelerate.commands.launch" in argv else {})}
        return subprocess.Popen(argv, cwd=self.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True, **kw)

    def run(self, argv: List[str], timeout=600, **kw) -> subprocess.CompletedProcess:
        p = self.start(argv, **kw)
        out, err = p.communicate(timeout=timeout)
        return subprocess.CompletedProcess(argv, p.returncode, out, err)


def kill_group(p: subprocess.Popen) -> str:
    """kill -9 the process and its children; returns its stderr."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return p.communicate()[1] or ""


# ------------------------------------------------------------------------------ run dir checks
def metrics(run_dir: Path) -> List[Dict]:
    from flowrl.runs import comparable_rows   # timings (wall, CPU) left out
    return comparable_rows([json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()])


def checkpoint_problems(run_dir: Path) -> List[str]:
    """step_N folders that are incomplete, unreadable or hold non-finite weights."""
    import torch
    from safetensors.torch import load_file

    from flowrl.checkpoint import STATE_FILES, list_checkpoints
    bad = []
    for _, path in list_checkpoints(run_dir):
        missing = [f for f in STATE_FILES if not (path / f).exists()]
        try:
            weights = load_file(path / "trainable.safetensors")
            json.loads((path / "state.json").read_text())
            finite = all(bool(torch.isfinite(v).all()) for v in weights.values())
        except Exception as e:  # noqa: BLE001 - any unreadable file is a half checkpoint
            bad.append(f"{path.name}: unreadable ({type(e).__name__})")
            continue
        if missing or not finite:
            bad.append(f"{path.name}: " + (f"missing {missing}" if missing else "non-finite weights"))
    return bad


def same_result(a: Path, b: Path) -> Optional[str]:
    """None if the two runs' training metrics and final trainable weights are bitwise equal."""
    from safetensors.torch import load_file

    from flowrl.checkpoint import list_checkpoints
    ra, rb = metrics(a), metrics(b)
    if ra != rb:
        diff = next((i for i, (x, y) in enumerate(zip(ra, rb)) if x != y), min(len(ra), len(rb)))
        return f"metrics differ from row {diff} ({len(ra)} vs {len(rb)} rows)"
    wa = load_file(list_checkpoints(a)[-1][1] / "trainable.safetensors")
    wb = load_file(list_checkpoints(b)[-1][1] / "trainable.safetensors")
    if wa.keys() != wb.keys() or any(not wa[k].equal(wb[k]) for k in wa):
        return "final weights differ"
    return None


# ------------------------------------------------------------------------------ scenarios
def reference(ctx: Ctx, name: str, overrides, config="grpo.py:moons", procs=1) -> Path:
    run_dir = ctx.root / f"ref-{name}"
    if not (run_dir / "summary.json").exists():
        out = ctx.run(ctx.cmd(run_dir, overrides, config=config, procs=procs))
        if out.returncode:
            raise RuntimeError(f"reference run {name} failed: {out.stderr[-1500:]}")
    return run_dir


def scenario_kills(ctx: Ctx, kills: int) -> Dict:
    """kill -9 at uniform random moments of a launch (start-up, sampling, training, a checkpoint
    write), relaunching with --resume, until `kills` kills have landed; a run that reaches its end
    is checked and a new one started. Every run is finally resumed to its end and compared."""
    ref = reference(ctx, "moons-long", KILLS)
    t0 = time.time()
    ctx.run(ctx.cmd(ctx.root / "timing", KILLS))
    span = time.time() - t0
    runs, landed, survived, dead_ends, notes = [ctx.root / "killed-0"], 0, 0, 0, []
    for _ in range(4 * kills):
        if landed == kills:
            break
        if (runs[-1] / "summary.json").exists():
            runs.append(ctx.root / f"killed-{len(runs)}")
        resume = (runs[-1] / "config.yaml").exists()
        p = ctx.start(ctx.cmd(runs[-1], KILLS, resume=resume))
        time.sleep(ctx.rng.uniform(0.2, 0.9 * span))
        running = p.poll() is None
        err = kill_group(p)
        landed += running
        survived += running and not checkpoint_problems(runs[-1])
        if not running and p.returncode:
            dead_ends += 1
            notes.append((err.strip().splitlines() or [""])[-1][:150])
    finished, exact, last = 0, 0, ""
    for run_dir in runs:
        if not (run_dir / "summary.json").exists():
            out = ctx.run(ctx.cmd(run_dir, KILLS, resume=(run_dir / "config.yaml").exists()))
            last = (out.stderr.strip().splitlines() or [""])[-1][:150] if out.returncode else last
        done = (run_dir / "summary.json").exists() and not checkpoint_problems(run_dir)
        finished += done
        exact += done and same_result(ref, run_dir) is None
    ok = finished == exact == len(runs) and dead_ends == 0 and survived == landed == kills
    detail = (f"{survived}/{landed} kills -9 left only whole checkpoints; runs resumed to the end: "
              f"{finished}/{len(runs)}{' (' + last + ')' if last else ''}; bit-exact to an unbroken run: "
              f"{exact}/{len(runs)}" + (f"; {dead_ends} relaunch(es) failed: {notes[0]}" if dead_ends else ""))
    return {"ok": ok, "detail": detail, "kills": landed, "survived": survived, "bit_exact": exact == len(runs)}


def kill_after_checkpoint(ctx: Ctx, name: str, overrides, config: str, procs: int, step: int = 2) -> Dict:
    """Reference run; then the same run killed -9 once checkpoints/step_<step> exists, resumed."""
    ref = reference(ctx, name, overrides, config, procs)
    run_dir = ctx.root / f"killed-{name}"
    p = ctx.start(ctx.cmd(run_dir, overrides, config=config, procs=procs))
    deadline = time.time() + 600
    while not (run_dir / "checkpoints" / f"step_{step}").exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    was_running = p.poll() is None
    kill_group(p)
    out = ctx.run(ctx.cmd(run_dir, overrides, resume=True, config=config, procs=procs))
    if out.returncode:
        return {"ok": False, "detail": f"--resume failed: {out.stderr.strip().splitlines()[-1][:200]}"}
    exact = same_result(ref, run_dir)
    return {"ok": exact is None and was_running,
            "detail": ("bit-exact: metrics and final weights" if exact is None else exact)
            + ("" if was_running else " (the run ended before the kill)")}


def scenario_bad_inputs(ctx: Ctx) -> Dict:
    from bad_inputs import make_tiny_run
    ok, failed = 0, []
    for i, case in enumerate(CASES):
        good, why, _ = run_case(case, ctx.root / "bad" / str(i), lambda: make_tiny_run(ctx.root / "bad"))
        ok += good
        if not good:
            failed.append(f"{case.id}: {why[:120]}")
    detail = f"{ok}/{len(CASES)} end as promised (one `error:` line, exit 2; or a warning)"
    return {"ok": ok == len(CASES), "detail": detail + ("; failed: " + " | ".join(failed) if failed else ""),
            "tried": len(CASES), "clear": ok}


def scenario_nan(ctx: Ctx) -> Dict:
    run_dir = ctx.root / "nan"
    out = ctx.run(ctx.cmd(run_dir, MOONS + ["train.lr=1e30", "checkpoint.keep_last=3"]))
    problems = checkpoint_problems(run_dir)
    err = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ""
    traceback = "Traceback" in out.stderr or "\u256d" in out.stderr   # plain or rich (a box)
    said = err.lower()
    stopped = out.returncode != 0 and not traceback and "epoch" in said and ("finite" in said or "nan" in said)
    ok = not problems and (stopped or out.returncode == 0)
    what = (f"stopped (exit {out.returncode}{', with a traceback' if traceback else ''}"
            f"{'' if 'epoch' in said else ', the message names no epoch'}): {err[:150]}" if out.returncode
            else "finished")
    return {"ok": ok, "detail": f"{what}; checkpoints with non-finite weights: {problems or 'none'}"}


def scenario_two_writers(ctx: Ctx) -> Dict:
    run_dir = ctx.root / "two"
    procs = [ctx.start(ctx.cmd(run_dir, MOONS)) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    rows = len(metrics(run_dir)) if (run_dir / "metrics.jsonl").exists() else 0
    expected = int([o for o in MOONS if o.startswith("num_epochs=")][-1].split("=")[1]) + 1
    refused = [e.strip().splitlines()[-1] for (_, e), p in zip(outs, procs) if p.returncode and e.strip()]
    holder = [p.pid for p in procs if p.returncode == 0]
    names_holder = bool(refused and holder and str(holder[0]) in refused[0])
    ok = codes[0] == 0 and codes[1] != 0 and rows == expected and names_holder
    return {"ok": ok, "detail": f"exit codes {codes}; metrics.jsonl rows {rows} (one run: {expected})"
                                + (f"; refused with: {refused[0][:150]}" if refused else "")
                                + ("" if names_holder or not refused else " (does not name the holder's PID)")}


def _mount(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True)


def one_error_line(out: subprocess.CompletedProcess) -> bool:
    err = [l for l in out.stderr.splitlines() if l.strip() and not l.startswith("[flowrl] warning")]
    return out.returncode == 2 and len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in out.stderr


def scenario_disk_full(ctx: Ctx) -> Dict:
    mnt = ctx.root / "small"
    mounted = os.geteuid() == 0 and _mount(mnt, "size=192k")
    run_dir, overrides = mnt / "run", MOONS + ["model.hidden=64", "model.depth=2", "num_epochs=6"]
    limit = None if mounted else (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000)))
    try:
        out = ctx.run(ctx.cmd(run_dir, overrides), preexec_fn=limit)
        err = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ""
        problems = checkpoint_problems(run_dir) if (run_dir / "checkpoints").exists() else []
        clear = one_error_line(out)
        if mounted:
            subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], capture_output=True)
        again = ctx.run(ctx.cmd(run_dir, overrides, resume=True))
        resumed = again.returncode == 0
    finally:
        if mounted:
            _umount(mnt)
    how = "192 KiB tmpfs" if mounted else "RLIMIT_FSIZE 40 kB"
    return {"ok": clear and not problems and resumed,
            "detail": f"{how}: exit {out.returncode}, {'one clear line' if clear else 'NOT one clear line'}: "
                      f"{err[:140]}; half checkpoints: {problems or 'none'}; --resume with room: "
                      f"{'finished' if resumed else 'failed: ' + (again.stderr.strip().splitlines() or [''])[-1][:120]}"}


def scenario_read_only(ctx: Ctx) -> Dict:
    mnt = ctx.root / "ro"
    mounted = os.geteuid() == 0 and _mount(mnt, "ro,size=64k")
    if not mounted:
        mnt.mkdir(exist_ok=True)
        mnt.chmod(0o555)
    try:
        out = ctx.run(ctx.cmd(mnt / "run", MOONS))
    finally:
        _umount(mnt) if mounted else mnt.chmod(0o755)
    err = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ""
    clear = one_error_line(out)
    return {"ok": clear, "detail": f"exit {out.returncode}: {err[:160]}"}


SCENARIOS: Dict[str, Callable] = {
    "kills": lambda ctx, a: scenario_kills(ctx, a.kills),
    "resume_2proc": lambda ctx, a: kill_after_checkpoint(ctx, "moons2", MOONS, "grpo.py:moons", 2),
    "resume_sd3": lambda ctx, a: kill_after_checkpoint(ctx, "sd3", SD3, "grpo.py:tiny_sd3", 1),
    "bad_inputs": lambda ctx, a: scenario_bad_inputs(ctx),
    "nan": lambda ctx, a: scenario_nan(ctx),
    "two_writers": lambda ctx, a: scenario_two_writers(ctx),
    "disk_full": lambda ctx, a: scenario_disk_full(ctx),
    "read_only": lambda ctx, a: scenario_read_only(ctx),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="", help="comma-separated scenario names: " + ", ".join(SCENARIOS))
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    a = ap.parse_args()
    names = [n for n in a.only.split(",") if n] or list(SCENARIOS)
    root = Path(tempfile.mkdtemp(prefix="flowrl-reliability-"))
    results = {}
    try:
        for name in names:
            t0 = time.time()
            try:
                r = SCENARIOS[name](Ctx(root, a.seed), a)
            except Exception as e:  # noqa: BLE001 - a crashed scenario is a FAIL with its reason
                r = {"ok": False, "detail": f"scenario crashed: {type(e).__name__}: {str(e)[:300]}"}
            r["seconds"] = round(time.time() - t0, 1)
            results[name] = r
            print(f"{name:13s} {'PASS' if r['ok'] else 'FAIL'} {r['seconds']:6.1f}s  {r['detail']}", flush=True)
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\n{sum(r['ok'] for r in results.values())}/{len(results)} scenarios passed")
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
