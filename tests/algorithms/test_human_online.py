"""dpo.py:human_online: a scripted annotator (polls the page's API, prefers the higher reward) labels
the pairs a real `flowrl train` process publishes each epoch; the moons reward rises, and a SIGKILL
mid-epoch followed by --resume keeps every label and the epoch's pairs."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from flowrl.serve.label_store import read_jsonl
from flowrl.serve.scripted_annotator import ScriptedAnnotator, choose, moons_scorer

ROOT = Path(__file__).resolve().parents[2]


def test_choose_prefers_the_higher_reward_with_a_tie_margin():
    assert (choose(0.9, 0.1), choose(0.1, 0.9), choose(0.5, 0.7, 0.3), choose(0.5, 0.5)) == ("a", "b", "tie", "tie")


def _train(run, port, resume=False):
    sets = ["model.base_iters=300", "num_epochs=5", "sample.batch_size=32", "train.batch_size=32",
            "eval.num_samples=200", "eval.batch_size=200", "sample.eval_num_steps=10", "logging.progress=False",
            f"algorithm.port={port}", "algorithm.timeout_s=120", "algorithm.poll_s=0.1", "algorithm.num_steps=10"]
    cmd = [sys.executable, "-m", "flowrl", "train", "--config", "dpo.py:human_online", "--output-dir", str(run)]
    cmd += [a for s in sets for a in ("--set", s)] + (["--resume"] if resume else [])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _until(cond, seconds, proc):
    end = time.time() + seconds
    while not cond():
        assert time.time() < end and proc.poll() is None, proc.stdout.read().decode()[-3000:] if proc.poll() is not None else "timeout"
        time.sleep(0.1)


def test_online_labels_raise_the_moons_reward_and_survive_sigkill_and_resume(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = tmp_path / "run"
    url, human = f"http://127.0.0.1:{port}", tmp_path / "run" / "human"
    first = _train(run, port)
    bot = ScriptedAnnotator(url, human, moons_scorer, tie_margin=0.5, poll_s=0.05, max_labels=16 + 6)
    bot.start()
    _until(lambda: bot.labelled >= 22, 240, first)            # epoch 0 done, epoch 1 part-labelled
    first.send_signal(signal.SIGKILL)
    first.wait()
    bot.stop()
    labels_before = (human / "labels.jsonl").read_text()
    pairs_e1 = [r["id"] for r in read_jsonl(human / "pairs.jsonl") if r["epoch"] == 1]
    assert len(labels_before.splitlines()) == 22 and len(pairs_e1) == 16

    second = _train(run, port, resume=True)
    bot2 = ScriptedAnnotator(url, human, moons_scorer, tie_margin=0.5, poll_s=0.05)
    bot2.start()
    try:
        out, _ = second.communicate(timeout=300)
    finally:
        bot2.stop()
    assert second.returncode == 0, out.decode()[-3000:]
    assert (human / "labels.jsonl").read_text().startswith(labels_before)     # every label kept
    pairs = read_jsonl(human / "pairs.jsonl")
    assert [r["id"] for r in pairs if r["epoch"] == 1] == pairs_e1 and len(pairs) == 5 * 16
    frozen = {r["pair_id"] for r in read_jsonl(human / "epoch_1.labels.jsonl")}
    early = {r["pair_id"] for r in map(json.loads, labels_before.splitlines()[16:]) if r["preferred"] in "ab"}
    assert early <= frozen                                    # the pre-kill labels trained epoch 1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["reward_after"] > summary["reward_before"] + 0.2, summary


def test_a_busy_port_fails_naming_the_option(tmp_path):
    import socket

    import pytest

    from flowrl.algorithms.human_online import HumanOnlineDPO
    from flowrl.config import ConfigError
    (tmp_path / "pairs.jsonl").write_text("")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        algo = HumanOnlineDPO(port=s.getsockname()[1])
        with pytest.raises(ConfigError, match="algorithm.port"):
            algo.online._serve(tmp_path)
