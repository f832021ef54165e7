"""Personal data end to end, on real parts: identifiers planted through every way in reach
no topic, no database row, no file in the data directory and no log.

``asvat up`` runs the embedded broker, worker, ingest (with its Kafka source on
``asvat.raw.v1``) and the API. Each source gets its own distinctive caller — a person
reference, a phone number, a name with accents and a hyphen, a date of birth, a postcode —
planted in ``caller`` *and* in the free text (``description``, ``location.address``), in a
valid record and in an invalid one:

* HTTP ``POST /v1/incidents`` (the invalid record: 422, nothing stored);
* the Kafka source topic ``asvat.raw.v1`` (the invalid one: the dead-letter topic);
* ``asvat ingest-file --format ndjson`` (the invalid one: the dead-letter topic).

Then every message of every topic but ``asvat.raw.v1`` (the raw input itself, written
by the force's own systems) is read, and every table of the API database and of ingest's
event log, every file under ``ASVAT_DATA_DIR`` (logs, worker state, databases) and
every line the processes printed are searched, case-insensitively, for every spelling of
every planted identifier. Replaces the narrower check that lived in test_up.py.
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_up import TOKENS, System, free_port, http, make_token, system_env, wait_for

pytestmark = pytest.mark.e2e

RAW_INPUT_TOPIC = "asvat.raw.v1"


@dataclass(frozen=True)
class Planted:
    """One source's caller, and every spelling of it that must not be found."""

    source: str
    person_id: str
    phone: str  # national spelling, e.g. "07412 555101"
    name: str
    date_of_birth: str
    postcode: str

    @property
    def needles(self) -> list[str]:
        digits = self.phone.replace(" ", "")
        day = self.date_of_birth.split("-")
        first, *rest = re.split(r"[\s-]+", self.name)
        return [
            self.person_id,
            self.phone,
            digits,
            digits[1:],  # 7412555101
            "+44" + digits[1:],
            "44" + digits[1:],
            digits[1:5] + " " + digits[5:],
            self.name,
            self.name.replace("-", " "),
            first,
            *rest,
            self.date_of_birth,
            f"{day[2]}/{day[1]}/{day[0]}",
            self.postcode,
            self.postcode.replace(" ", ""),
        ]

    def caller(self, *, with_person_id: bool) -> dict[str, str]:
        caller = {
            "phone": self.phone,
            "name": self.name,
            "date_of_birth": self.date_of_birth,
            "postcode": self.postcode,
        }
        if with_person_id:
            caller["person_id"] = self.person_id
        return caller

    def incident(
        self, n: int, *, valid: bool = True, with_person_id: bool = False
    ) -> dict[str, Any]:
        day = f"2026-11-{10 + n:02d}"
        day_parts = self.date_of_birth.split("-")
        reference = f"ref {self.person_id}, " if with_person_id else ""
        return {
            "event_id": f"PD-{self.source}-{n}",
            "incident_id": f"PD-{self.source}-{n}",
            "sequence": 0,
            "event_type": "opened",
            "occurred_at": f"{day}T21:15:00Z" if valid else f"{day}T23:59:00Z",
            "reported_at": f"{day}T21:40:00Z",  # invalid: reported before it occurred
            "source": "101",
            "opening_code": "ASBP",
            "closing_code": None,
            "caller": self.caller(with_person_id=with_person_id),
            "location": {
                "lat": 54.97 + n * 0.001,
                "lon": -1.61,
                "address": f"14 {self.name.split()[-1]} Court, {self.postcode}",
            },
            # Free text can be cleared only of what the caller object says (and of any
            # phone number): the reference is mentioned where the caller carries it.
            "description": (
                f"{self.name} ({reference}tel {self.phone}, born "
                f"{day_parts[2]}/{day_parts[1]}/{day_parts[0]}) says youths kick the door"
            ),
        }


PLANTED = {
    "http": Planted(
        "http",
        "NBP-HTTP-77123",
        "07412 555101",
        "Ysolde Marchbank-Quillfeather",
        "1969-03-14",
        "NE6 9QX",
    ),
    "raw": Planted(
        "raw",
        "NBP-RAW-77124",
        "07412 555102",
        "Perpétua Ravenscroft-Nyeholt",
        "1972-11-23",
        "NE7 8QW",
    ),
    "file": Planted(
        "file",
        "NBP-FILE-77125",
        "07412 555103",
        "Cuthbert Ollerenshaw-Vanecourt",
        "1958-07-05",
        "NE8 7QV",
    ),
}


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    data_dir = tmp_path_factory.mktemp("asvat-personal-data")
    ports = {name: free_port() for name in ("broker", "api", "ingest", "worker")}
    output = data_dir.parent / "personal-data-up-output.txt"
    env = system_env(data_dir, ports)
    env["ASVAT_INGEST_RAW_CONSUMER"] = "true"
    env["ASVAT_LOG_LEVEL"] = "DEBUG"  # the most a log can say
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "asvat", "up"], env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    up = System(process, data_dir, ports, output)
    deadline = time.monotonic() + 120
    while "Press Ctrl-C to stop" not in output.read_text():
        assert process.poll() is None, f"asvat up exited early:\n{output.read_text()}"
        assert time.monotonic() < deadline, f"asvat up not ready in 120 s:\n{output.read_text()}"
        time.sleep(0.5)
    admin = re.search(r"Token \(admin[^\n]*\n\s+(asvat_\S+)", output.read_text())
    assert admin, output.read_text()
    TOKENS["api"] = admin.group(1)
    TOKENS["ingest"] = make_token(data_dir, ports, "ingest")
    yield up
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


def all_topics(bootstrap: str) -> dict[str, bytes]:
    """Every record (key and value) of every topic, by topic."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, consumer_timeout_ms=4000)
    topics = sorted(consumer.topics())
    partitions = [
        TopicPartition(topic, p)
        for topic in topics
        for p in (consumer.partitions_for_topic(topic) or ())
    ]
    consumer.assign(partitions)
    consumer.seek_to_beginning()
    found: dict[str, list[bytes]] = {topic: [] for topic in topics}
    for message in consumer:
        found[message.topic].append(bytes(message.key or b"") + b"\t" + bytes(message.value or b""))
    consumer.close()
    return {topic: b"\n".join(chunks) for topic, chunks in found.items()}


def sqlite_rows(path: Path) -> bytes:
    connection = sqlite3.connect(path)
    try:
        rows: list[str] = []
        for (table,) in connection.execute("select name from sqlite_master where type='table'"):
            rows.extend(repr(row) for row in connection.execute(f'select * from "{table}"'))
    finally:
        connection.close()
    return "\n".join(rows).encode()


def test_no_planted_identifier_reaches_a_topic_a_table_a_file_or_a_log(
    system: System, tmp_path: Path
) -> None:
    printed: dict[str, bytes] = {}

    # 1. HTTP: two valid incidents in one request, then a request with an invalid one.
    http_caller = PLANTED["http"]
    status, body = http(
        "POST",
        f"{system.ingest}/v1/incidents",
        [http_caller.incident(1), http_caller.incident(2, with_person_id=True)],
    )
    assert status == 202, body
    status, body = http(
        "POST", f"{system.ingest}/v1/incidents", [http_caller.incident(3, valid=False)]
    )
    assert status == 422, body
    printed["the 422 answer"] = json.dumps(body).encode()

    # 2. The Kafka source topic: raw events as a force's own system would write them.
    raw_caller = PLANTED["raw"]
    producer = KafkaProducer(bootstrap_servers=system.bootstrap, acks="all")
    for record in (
        raw_caller.incident(1),
        raw_caller.incident(2, with_person_id=True),
        raw_caller.incident(3, valid=False),
    ):
        producer.send(
            RAW_INPUT_TOPIC, key=record["incident_id"].encode(), value=json.dumps(record).encode()
        )
    producer.flush()
    producer.close()

    # 3. A file through `asvat ingest-file`.
    file_caller = PLANTED["file"]
    source = tmp_path / "incidents.ndjson"
    source.write_text(
        "\n".join(
            json.dumps(r, ensure_ascii=False)
            for r in (
                file_caller.incident(1),
                file_caller.incident(2, with_person_id=True),
                file_caller.incident(3, valid=False),
            )
        )
        + "\n",
        encoding="utf-8",
    )
    loaded = subprocess.run(
        [
            sys.executable,
            "-m",
            "asvat",
            "ingest-file",
            str(source),
            "--format",
            "ndjson",
            "--no-progress",
        ],
        env=system_env(system.data_dir, system.ports),
        capture_output=True,
        timeout=120,
    )
    assert loaded.returncode == 0, loaded.stderr.decode()
    printed["asvat ingest-file"] = loaded.stdout + loaded.stderr

    # Every valid record has been through the worker into the API; every invalid one from
    # Kafka or a file is on the dead-letter topic.
    for planted in PLANTED.values():
        for n in (1, 2):
            incident_id = f"PD-{planted.source}-{n}"
            wait_for(
                lambda i=incident_id: (
                    http("GET", f"{system.api}/v1/incidents/{i}/assessment")[0] == 200
                ),
                120,
                f"the assessment of {incident_id}",
            )
    topics = wait_for(
        lambda: (
            t
            if b"PD-raw-3" in (t := all_topics(system.bootstrap)).get("asvat.incidents.dlq.v1", b"")
            and b"PD-file-3" in t.get("asvat.incidents.dlq.v1", b"")
            else None
        ),
        60,
        "the invalid records on asvat.incidents.dlq.v1",
    )
    # The victim key made from the phone links both of a source's incidents.
    keys = {
        http("GET", f"{system.api}/v1/incidents/PD-http-{n}/assessment")[1]["victim_key"]
        for n in (1,)
    }
    assert None not in keys

    # The raw input topic is the only place the planted values may be: it is the input.
    assert raw_caller.person_id.encode() in topics.pop(RAW_INPUT_TOPIC)
    haystacks: dict[str, bytes] = {f"topic {name}": blob for name, blob in topics.items()}
    assert any(b"PD-http-1" in blob for blob in haystacks.values()), "the events were published"
    api_db = system.data_dir / "asvat.db"
    haystacks["API database rows"] = sqlite_rows(api_db)
    assert b"PD-file-2" in haystacks["API database rows"]
    for database in sorted(system.data_dir.rglob("*.db")):
        haystacks[f"rows of {database.name}"] = sqlite_rows(database)
    files = [p for p in system.data_dir.rglob("*") if p.is_file()]
    assert any("log" in p.name for p in files), "expected the services' log files"
    for path in files:
        haystacks[str(path.relative_to(system.data_dir))] = path.read_bytes()
    haystacks["asvat up output"] = system.output.read_bytes()
    haystacks.update(printed)

    found = [
        f"{needle!r} ({planted.source}) in {where}"
        for planted in PLANTED.values()
        for needle in planted.needles
        for where, blob in haystacks.items()
        if needle.lower().encode() in blob.lower()
    ]
    assert not found, "raw identifiers found:\n" + "\n".join(found)
