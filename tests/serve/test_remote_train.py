"""Training with the `remote` reward against real server processes: the metrics equal a run with the
local reward (faults on the way are retried away; rewards overlapped with sampling vs synchronous);
a server killed mid-run stops the run with one line and exit 2, the last checkpoint intact, and
`--resume` finishes it once the server is back; two ranks share one server."""
import json
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from flowrl.checkpoint import latest_checkpoint
from flowrl.cli import app
from flowrl.config import load_config
from flowrl.trainer import Trainer

from servers import REPO, ServerProcess

TINY = ["num_epochs=3", "model.resolution=32", "model.max_sequence_length=16", "sample.num_steps=3",
        "sample.eval_num_steps=3", "sample.batch_size=4", "sample.num_batches_per_epoch=2",
        "sample.group_size=4", "train.batch_size=4", "eval.num_samples=4", "eval.batch_size=4",
        "eval.every=0", "checkpoint.every=1", "logging.progress=False", "cpu_threads=1"]
FAST_RETRY = ["reward.options.remote.retries=2", "reward.options.remote.backoff=0.01"]


def metrics(run_dir, rename=("reward.remote_mean", "reward.jpeg_compressibility_mean")):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{rename[1] if k == rename[0] else k: v for k, v in r.items() if not k.startswith(("time_", "cpu_"))}
            for r in rows]


def remote_args(url, run_dir, *extra):
    args = ["train", "--config", "grpo.py:tiny_sd3_remote", "--output-dir", str(run_dir)]
    for o in TINY + FAST_RETRY + [f"reward.options.remote.url={url}", *extra]:
        args += ["--set", o]
    return args


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The reference: the local JPEG reward, scored synchronously."""
    n = torch.get_num_threads()
    run_dir = tmp_path_factory.mktemp("local") / "run"
    Trainer(load_config("grpo.py:tiny_sd3", TINY + ["reward.overlap=False"]), run_dir).train()
    torch.set_num_threads(n)
    return metrics(run_dir)


def test_remote_overlapped_training_equals_local_synchronous_training(jpeg_server, local_run, tmp_path):
    jpeg_server.faults("ok", "500", "ok", "malformed", "nan", "ok", "count")   # each recovered by a retry
    result = CliRunner().invoke(app, remote_args(jpeg_server.url, tmp_path / "run"))
    assert result.exit_code == 0, result.output
    assert metrics(tmp_path / "run") == local_run


def test_killed_server_stops_the_run_cleanly_and_resume_finishes(local_run, tmp_path):
    server = ServerProcess().start()
    try:
        server.faults("ok", "ok", "ok", "die")   # base eval, epoch 1 (2 batches), then dies in epoch 2
        result = CliRunner().invoke(app, remote_args(server.url, tmp_path / "run"))
        assert result.exit_code == 2
        lines = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and server.url in lines[0] and "3 attempts" in lines[0], result.output
        assert "Traceback" not in result.output
        assert latest_checkpoint(tmp_path / "run").name == "step_1"
    finally:
        server.stop()
    server = ServerProcess(port=server.port).start()   # back, on the same port
    try:
        result = CliRunner().invoke(app, remote_args(server.url, tmp_path / "run") + ["--resume"])
        assert result.exit_code == 0, result.output
    finally:
        server.stop()
    assert metrics(tmp_path / "run") == local_run


def test_two_ranks_share_one_server(jpeg_server, local_run, tmp_path):
    before = jpeg_server.health()["samples_scored"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "accelerate_configs" / "multi_cpu.yaml"), "--num_processes", "2", "-m", "flowrl",
           *remote_args(jpeg_server.url, tmp_path / "run", "num_epochs=1")]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "FLOWRL_DUMP_DIR": str(tmp_path / "dump")}
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    rows = metrics(tmp_path / "run")
    assert rows[0]["eval_reward"] == local_run[0]["eval_reward"]   # fixed eval noise per global index
    assert rows[1]["reward_samples_per_rank"] == [8, 8]
    # 2 ranks x 8 samples + 4 eval samples before and after training, each scored once by the server
    assert jpeg_server.health()["samples_scored"] - before == 2 * 8 + 4 + 4
    from safetensors.torch import load_file
    ranks = [load_file(tmp_path / "dump" / f"epoch1_rank{r}.safetensors") for r in range(2)]
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])
