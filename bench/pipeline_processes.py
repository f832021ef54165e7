"""The ASVAT pipeline as real processes: the embedded Tansu broker, ingest, the API and
workers, each its own process (``python -m asvat …``), started and stopped one by one.

Shared by ``tests/e2e/test_faults.py`` (which kills pieces of it) and ``bench/pipeline.py``
(which measures it). Nothing here is mocked: every piece is the command an operator runs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asvat.embedded.broker import EmbeddedBroker


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@dataclass
class Pipeline:
    data_dir: Path
    ports: dict[str, int]
    broker: EmbeddedBroker
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ingest_token: str = ""
    api_token: str = ""
    posted: dict[str, dict[str, Any]] = field(default_factory=dict)  # event_id -> event
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASVAT_")}
        env.update(
            ASVAT_DATA_DIR=str(self.data_dir),
            ASVAT_KAFKA_BOOTSTRAP=self.broker.bootstrap,
            ASVAT_API_PORT=str(self.ports["api"]),
            ASVAT_INGEST_PORT=str(self.ports["ingest"]),
            ASVAT_TOPIC_PARTITIONS="4",
            ASVAT_WORKER_STALL_SECONDS="30",
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    def start(self, name: str) -> None:
        """Start ``ingest``, ``api`` or ``worker-<x>`` (port ``ports[name]``) as its own
        process."""
        command = name.split("-")[0]
        env = self.env
        if command == "worker":
            env["ASVAT_WORKER_PORT"] = str(self.ports[name])
        log = (self.data_dir / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "asvat", command],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def pid(self, name: str) -> int:
        return self.processes[name].pid

    def kill(self, name: str) -> None:
        process = self.processes.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)

    def stop(self, name: str, timeout: float = 30) -> None:
        """SIGTERM ``name`` (SIGKILL after ``timeout`` seconds)."""
        process = self.processes.pop(name)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def ready(self, name: str) -> bool:
        port = self.ports[name]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def readyz(self, name: str) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.ports[name]}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as error:
            return dict(json.loads(error.read()))

    def wait_ready(self, *names: str, timeout: float = 120) -> None:
        for name in names:
            wait_for(lambda n=name: self.ready(n), timeout, f"{name} ready")

    def cli(self, *args: str, timeout: float = 120) -> str:
        """``asvat ARGS…`` with this pipeline's settings; its stdout (fails loudly)."""
        result = subprocess.run(
            [sys.executable, "-m", "asvat", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(f"asvat {' '.join(args)} failed: {result.stderr}")
        return result.stdout

    def stop_all(self) -> None:
        for name in list(self.processes):
            self.stop(name)
        self.broker.stop()

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.data_dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
