"""Real processes in production mode: every command that pseudonymises refuses to start
without an explicit, non-placeholder HMAC key, with one line saying what to set; with a
good key (and a previous one, mid-rotation) ingest starts."""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from asvat.cli import build_parser

pytestmark = pytest.mark.e2e

MISSING = "ASVAT_ENV=production needs an explicit HMAC key: set ASVAT_HMAC_KEY_FILE"
PLACEHOLDER = "ASVAT_ENV=production refuses a placeholder HMAC key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def production_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASVAT_")}
    env.update(
        ASVAT_ENV="production",
        ASVAT_DATA_DIR=str(data_dir),
        ASVAT_KAFKA_BOOTSTRAP="127.0.0.1:9",  # nothing there: the key check comes first
        ASVAT_INGEST_PORT=str(free_port()),
        ASVAT_API_PORT=str(free_port()),
        ASVAT_WORKER_PORT=str(free_port()),
        ASVAT_EMBEDDED_BROKER_PORT=str(free_port()),
        ASVAT_DATABASE_URL=f"sqlite:///{data_dir / 'asvat.db'}",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def commands(tmp_path: Path) -> dict[str, list[str]]:
    """Each command that pseudonymises, if this build has it."""
    events = tmp_path / "events.ndjson"
    events.write_text('{"event_id": "x"}\n')
    wanted = {
        "ingest": ["ingest"],
        "up": ["up"],
        "replay": ["replay", "--input", str(events), "--output", str(tmp_path / "out.jsonl")],
        "ingest-file": ["ingest-file", str(events), "--format", "ndjson", "--no-progress"],
        "backtest": [
            "backtest",
            "--policy",
            "asvat/policy/default.yaml",
            "--policy",
            "asvat/policy/default.yaml",
            "--input",
            str(events),
            "--output",
            str(tmp_path / "backtest"),
        ],
    }
    [subcommands] = [
        a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    ]
    available = set(subcommands.choices)
    assert {"ingest", "up", "replay"} <= available
    return {name: argv for name, argv in wanted.items() if name in available}


@pytest.mark.parametrize(
    ("key", "expected"),
    [(None, MISSING), ("change-me-please-0123456789abcdefghij", PLACEHOLDER)],
    ids=["missing", "placeholder"],
)
def test_every_pseudonymising_command_refuses_to_start(
    tmp_path: Path, key: str | None, expected: str
) -> None:
    extra = {"ASVAT_HMAC_KEY": key} if key else {}
    data_dir = tmp_path / "data"
    ran = []
    for name, argv in commands(tmp_path).items():
        result = subprocess.run(
            [sys.executable, "-m", "asvat", *argv],
            env=production_env(data_dir, **extra),
            capture_output=True,
            text=True,
            timeout=120,
            cwd=Path(__file__).resolve().parents[2],
        )
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode != 0, f"asvat {name} started without a usable key"
        assert len(lines) == 1, f"asvat {name}: expected one line, got:\n{result.stderr}"
        assert expected in lines[0], f"asvat {name}: {lines[0]}"
        if key:
            assert key not in result.stderr  # the secret itself is never printed
        ran.append(name)
    assert not (data_dir / "secrets").exists(), "nothing may be generated in production"
    assert {"ingest", "up", "replay"} <= set(ran)


def test_ingest_starts_in_production_with_a_key_file_and_a_previous_key(tmp_path: Path) -> None:
    key_file = tmp_path / "hmac-k2.key"
    key_file.write_text(secrets.token_hex(32) + "\n")
    old_file = tmp_path / "hmac-k1.key"
    old_file.write_text(secrets.token_hex(32) + "\n")
    env = production_env(
        tmp_path / "data",
        ASVAT_HMAC_KEY_FILE=str(key_file),
        ASVAT_HMAC_KEY_ID="k2",
        ASVAT_HMAC_PREVIOUS_KEY_FILES=f"k1={old_file}",
    )
    log = (tmp_path / "ingest.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "asvat", "ingest"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        url = f"http://127.0.0.1:{env['ASVAT_INGEST_PORT']}/healthz"
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp_path / "ingest.log").read_text()
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "ingest did not answer /healthz in 60 s"
                time.sleep(0.3)
    finally:
        process.terminate()
        process.wait(30)
        log.close()
