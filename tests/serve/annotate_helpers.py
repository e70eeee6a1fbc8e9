"""Shared by the annotation tests: a pair folder of moons points, a real server process on 127.0.0.1."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def moons_pair_folder(folder: Path, n: int, seed: int = 0) -> Path:
    """n pairs of 2-D points (drawn as dots, .pt samples beside) in `folder`."""
    from flowrl.serve.pair_maker import publish_pairs
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((2 * n, 2), generator=g)
    publish_pairs(folder, x, x, ["two moons"] * n, [f"p{i:03d}" for i in range(n)])
    return folder


def start_server(folder: Path, *args: str, port: int = 0):
    """`python -m flowrl annotate serve FOLDER` as a process -> (process, base URL) once it answers."""
    port = port or free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-m", "flowrl", "annotate", "serve", str(folder), "--port",
                             str(port), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stdout.read().decode()}")
        try:
            httpx.get(url + "/api/stats", timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not answer within 30 s")


def stop(proc) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
