"""End to end on real parts: ``asvat up`` starts the embedded Tansu broker, the faust
worker, ingest and the API as processes; incidents go in over HTTP and escalations come out
of the API. Nothing is mocked."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer

from bench.pipeline_processes import free_port, wait_for

pytestmark = pytest.mark.e2e

RAW_PHONES = ("07412 345678", "+44 7412 345678", "447412345678")
RAW_NAME = "Zebedee Quixotic-Fairweather"
RAW_POSTCODE = "NE1 4ST"


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


#: Tokens for the module's system: set by the ``system`` fixture.
TOKENS: dict[str, str] = {}


def http(
    method: str, url: str, body: Any = None, content_type: str = "application/json"
) -> tuple[int, Any]:
    """A request with the token its service needs (ingest: role ingest; API: admin)."""
    data = None
    if body is not None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    headers = {"Content-Type": content_type}
    token = TOKENS.get("ingest" if urllib.parse.urlsplit(url).path == "/v1/incidents" else "api")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


@dataclass
class System:
    process: subprocess.Popen[bytes]
    data_dir: Path
    ports: dict[str, int]
    output: Path

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    @property
    def ingest(self) -> str:
        return f"http://127.0.0.1:{self.ports['ingest']}"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.ports['broker']}"


def system_env(data_dir: Path, ports: dict[str, int]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASVAT_")}
    env.update(
        ASVAT_DATA_DIR=str(data_dir),
        ASVAT_EMBEDDED_BROKER_PORT=str(ports["broker"]),
        ASVAT_API_PORT=str(ports["api"]),
        ASVAT_INGEST_PORT=str(ports["ingest"]),
        ASVAT_WORKER_PORT=str(ports["worker"]),
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    data_dir = tmp_path_factory.mktemp("asvat-data")
    ports = {name: free_port() for name in ("broker", "api", "ingest", "worker")}
    output = data_dir.parent / "up-output.txt"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "asvat", "up"],
            env=system_env(data_dir, ports),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    up = System(process, data_dir, ports, output)
    deadline = time.monotonic() + 120
    while "Press Ctrl-C to stop" not in output.read_text():
        assert process.poll() is None, f"asvat up exited early:\n{output.read_text()}"
        assert time.monotonic() < deadline, f"asvat up not ready in 120 s:\n{output.read_text()}"
        time.sleep(0.5)
    banner = output.read_text()
    admin = re.search(r"Token \(admin[^\n]*\n\s+(asvat_\S+)", banner)
    assert admin, f"no admin token in the banner:\n{banner}"
    TOKENS["api"] = admin.group(1)
    TOKENS["ingest"] = make_token(data_dir, ports, "ingest")
    status, _ = http("GET", f"{up.api}/v1/escalations")
    assert status == 200, "the banner's token should read the API"
    yield up
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


def make_token(data_dir: Path, ports: dict[str, int], role: str) -> str:
    """``asvat token create`` against the system's database; the token is the last line."""
    result = subprocess.run(
        [sys.executable, "-m", "asvat", "token", "create", "--role", role, "--name", "e2e"],
        env=system_env(data_dir, ports),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def incident(n: int, phone: str, day: int) -> dict[str, Any]:
    return {
        "event_id": f"E2E-{n}-0",
        "incident_id": f"E2E-{n}",
        "sequence": 0,
        "event_type": "opened",
        "occurred_at": f"2026-10-{day:02d}T21:15:00+01:00",
        "reported_at": f"2026-10-{day:02d}T21:40:00+01:00",
        "source": "101",
        "opening_code": "ASBP",
        "closing_code": None,
        "caller": {"phone": phone, "name": RAW_NAME, "postcode": RAW_POSTCODE},
        "location": {"lat": 54.9783 + n * 0.01, "lon": -1.6178},
        "vulnerability": ["isolation"],
        "description": "Youths kicking the door again",
    }


def test_three_reports_with_three_phone_spellings_raise_one_victim_escalation(
    system: System,
) -> None:
    events = [
        incident(n, phone, day)
        for n, (phone, day) in enumerate(zip(RAW_PHONES, (2, 9, 16), strict=True))
    ]
    for event in events:
        status, body = http("POST", f"{system.ingest}/v1/incidents", event)
        assert status == 202, body
        assert body["accepted"] == 1

    def victim_escalation() -> dict[str, Any] | None:
        status, body = http("GET", f"{system.api}/v1/escalations?subject_type=victim")
        assert status == 200
        found = [e for e in body["items"] if e["incident_id"] == "E2E-2"]
        return found[0] if found else None

    escalation = wait_for(victim_escalation, 60, "the victim's escalation in the API")
    # Personal ASB, isolation, three reports in 28 days: victim-28d and case-review met.
    assert escalation["level"] == "high"
    rules = {r["rule_id"]: r for r in escalation["reasons"] if r["factor"] == "rule"}
    assert rules["victim-28d"]["incident_ids"] == ["E2E-0", "E2E-1", "E2E-2"]
    assert {"asb_category", "vulnerability"} <= {r["factor"] for r in escalation["reasons"]}
    status, assessment = http("GET", f"{system.api}/v1/incidents/E2E-2/assessment")
    assert status == 200
    assert assessment["incident_id"] == "E2E-2"
    assert "victim-28d" in assessment["rules_met"]
    assert assessment["risk_level"] == "high" and assessment["case_review_threshold_met"]
    status, first = http("GET", f"{system.api}/v1/incidents/E2E-0/assessment")
    assert status == 200 and first["rules_met"] == []


def test_a_bad_record_in_a_batch_rejects_the_whole_batch(system: System) -> None:
    good = incident(10, "0191 498 0123", 3)
    bad = dict(incident(11, "0191 498 0123", 4), occurred_at="2026-10-04T21:15:00")
    status, body = http("POST", f"{system.ingest}/v1/incidents", [good, bad])
    assert status == 422
    assert [(e["index"], e["field"]) for e in body["errors"]] == [(1, "occurred_at")]
    time.sleep(1.0)
    status, _ = http("GET", f"{system.api}/v1/incidents/E2E-10/assessment")
    assert status == 404  # nothing of the batch was published


def test_unknown_code_is_refused_at_ingest_naming_the_field(system: System) -> None:
    record = dict(incident(20, "07412 345678", 5), opening_code="ZZZ9")
    status, body = http("POST", f"{system.ingest}/v1/incidents", record)
    assert status == 422
    assert [e["field"] for e in body["errors"]] == ["opening_code"]
    assert "ZZZ9" in body["errors"][0]["reason"] and "ASBP" in body["errors"][0]["reason"]


def test_an_event_beyond_max_lateness_goes_to_the_late_topic_with_its_reason(
    system: System,
) -> None:
    # The escalation test's incidents occurred in October 2026; the default max_lateness is
    # 400 days, so an incident of August 2025 is late once those have been applied.
    wait_for(
        lambda: http("GET", f"{system.api}/v1/incidents/E2E-2/assessment")[0] == 200,
        60,
        "the October incidents to be applied",
    )
    late = dict(
        incident(30, "07412 345678", 1),
        occurred_at="2025-08-01T10:00:00Z",
        reported_at="2025-08-01T10:30:00Z",
    )
    status, _ = http("POST", f"{system.ingest}/v1/incidents", late)
    assert status == 202  # valid input: lateness is the worker's judgement, not ingest's

    def late_message() -> dict[str, Any] | None:
        consumer = KafkaConsumer(
            "asvat.incidents.late.v1",
            bootstrap_servers=system.bootstrap,
            auto_offset_reset="earliest",
            consumer_timeout_ms=2000,
        )
        found = [json.loads(m.value) for m in consumer if b"E2E-30" in m.value]
        consumer.close()
        return found[0] if found else None

    message = wait_for(late_message, 60, "the late event on asvat.incidents.late.v1")
    assert message["kind"] == "late"
    assert "max_lateness" in message["reason"]
    assert message["event"]["incident_id"] == "E2E-30"
    assert "caller" not in message["event"]
    from asvat.contracts import validate_against

    assert validate_against("late-incident.v1", message) == []
    assert http("GET", f"{system.api}/v1/incidents/E2E-30/assessment")[0] == 404


# That no raw identifier reaches a topic, a database row, a file or a log is tested, for
# every source (HTTP, the Kafka source topic, ingest-file) and the dead-letter topic, in
# tests/e2e/test_personal_data.py.


def test_port_in_use_gives_one_line_naming_it(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("broker", "api", "ingest", "worker")}
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", ports["api"]))
        blocker.listen()
        result = subprocess.run(
            [sys.executable, "-m", "asvat", "up"],
            env=system_env(tmp_path, ports),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, result.stderr
    assert str(ports["api"]) in errors[0]
    assert port_free(ports["broker"]), "nothing may be left running"


def test_live_assessments_equal_the_offline_replay(system: System, tmp_path: Path) -> None:
    """Real data through the live pipeline (4 partitions, so arrival order differs from
    posting order) ends with exactly the assessments `asvat replay` computes offline."""
    from datetime import UTC, datetime

    from asvat.demo import feed, northumbria_incidents

    events = northumbria_incidents(seed=11, limit=400, shift_to=datetime.now(tz=UTC))
    accepted = feed(
        system.ingest,
        events,
        rate_per_s=2000,
        batch=100,
        log=lambda _: None,
        token=TOKENS["ingest"],
    )
    assert accepted == len(events)
    source = tmp_path / "events.jsonl"
    source.write_text("".join(json.dumps(e) + "\n" for e in events))
    output = tmp_path / "replay.jsonl"
    env = system_env(system.data_dir, system.ports)  # same data dir: the same HMAC key
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "asvat",
            "replay",
            "--input",
            str(source),
            "--output",
            str(output),
            "--no-progress",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    expected = {a["incident_id"]: a for a in map(json.loads, output.read_text().splitlines())}
    assert len(expected) > 300

    mismatches: list[str] = []

    def live_matches() -> bool:
        mismatches.clear()
        for incident_id, offline in expected.items():
            status, live = http("GET", f"{system.api}/v1/incidents/{incident_id}/assessment")
            if status != 200 or live["assessment_id"] != offline["assessment_id"]:
                mismatches.append(f"{incident_id}: live {status} {live}\n  offline {offline}")
        return not mismatches

    try:
        wait_for(live_matches, 90, "every live assessment to equal the replay's")
    except AssertionError:
        raise AssertionError(
            f"{len(mismatches)} incidents differ, e.g.\n" + "\n".join(mismatches[:3])
        ) from None
    for incident_id, offline in list(expected.items())[:50]:
        _, live = http("GET", f"{system.api}/v1/incidents/{incident_id}/assessment")
        assert {k: v for k, v in live.items() if k not in ("schema", "assessed_at")} == offline


def test_sigterm_stops_everything_and_frees_every_port(system: System) -> None:
    """Runs last in this module (pytest keeps file order): it stops the shared system."""
    child_pids = _descendants(system.process.pid)
    assert child_pids, "asvat up should have child processes"
    system.process.send_signal(signal.SIGTERM)
    assert system.process.wait(60) == 0
    for pid in child_pids:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid), f"orphan process {pid}"
    for name, port in system.ports.items():
        assert wait_for(lambda p=port: port_free(p), 10, f"{name} port {port} to be free")


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for status in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = status.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                child = int(status.parent.name)
                found.append(child)
                frontier.append(child)
    return found


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
