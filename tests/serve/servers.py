"""Real reward-server processes on 127.0.0.1 (a free port chosen at run time), bounded in time."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python tests/serve/fault_server.py PORT REWARD` (or any command given) as a child process."""

    def __init__(self, reward: str = "jpeg_compressibility", port: int = 0, cmd=None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = cmd or [sys.executable, str(REPO / "tests" / "serve" / "fault_server.py"), str(self.port), reward]
        self.proc = None

    def start(self, timeout: float = 90.0) -> "ServerProcess":
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stdout.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server on {self.url} did not come up in {timeout} s")

    def faults(self, *faults: str) -> None:
        httpx.post(f"{self.url}/_faults", json=list(faults), timeout=5.0).raise_for_status()

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=5.0).json()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
