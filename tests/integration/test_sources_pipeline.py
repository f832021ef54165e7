"""Sources on the real embedded broker: files (ndjson, police.uk, bus feedback) with bad
input and resumption, the Kafka source, dead-letter replay, and one event by three paths."""

from __future__ import annotations

import csv
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import TEST_HMAC_KEY, TopicRecord, issue_token, make_settings
from fastapi.testclient import TestClient

from asvat.contracts import validate_against
from asvat.demo import load_northumbria
from asvat.embedded.broker import EmbeddedBroker, ensure_topics
from asvat.keys import KeyRing
from asvat.policy import load_policy
from asvat.replay import replay as replay_offline
from services.ingest.app import create_app
from services.ingest.dead_letters import Delivery, outstanding, read_messages, replay
from services.ingest.publisher import KafkaPublisher
from services.ingest.sources.bus import BusNetwork
from services.ingest.sources.files import ingest_file
from services.ingest.sources.police_uk import COLUMNS
from services.ingest.sources.raw_topic import RawTopicSource
from services.ingest.submission import Submission

Reader = Callable[..., list[TopicRecord]]
KEYS = KeyRing(key_id="test", key=TEST_HMAC_KEY.encode())
PHONE = "07412 345678"
NAME = "Quentin Raw-Caller"
ROOT = Path(__file__).resolve().parents[2]


def incident(event_id: str | None = None, **changes: Any) -> dict[str, Any]:
    incident_id = f"NB-SRC-{uuid.uuid4().hex[:10]}"
    event: dict[str, Any] = {
        "event_id": event_id or f"{incident_id}-0",
        "incident_id": incident_id,
        "sequence": 0,
        "event_type": "opened",
        "occurred_at": "2024-03-01T21:15:00Z",
        "reported_at": "2024-03-01T21:17:00Z",
        "source": "101",
        "opening_code": "ASBN",
        "caller": {"phone": PHONE, "name": NAME},
        "location": {"lat": 54.97328, "lon": -1.61396},
        "description": f"{NAME} reports noise",
    }
    event.update(changes)
    return event


class Topics:
    """Fresh incidents and DLQ topics with publishers on them."""

    def __init__(self, bootstrap: str) -> None:
        tag = uuid.uuid4().hex[:10]
        self.bootstrap = bootstrap
        self.incidents = f"asvat.test.src.incidents.{tag}"
        self.dlq = f"asvat.test.src.dlq.{tag}"
        self.delivery = Delivery(
            KafkaPublisher(bootstrap, topic=self.incidents, timeout=5.0),
            KafkaPublisher(bootstrap, topic=self.dlq, timeout=5.0),
        )

    def events(self, read: Reader) -> list[dict[str, Any]]:
        return [json.loads(r.value) for r in read(self.bootstrap, self.incidents)]

    def letters(self) -> list[dict[str, Any]]:
        return read_messages(self.bootstrap, self.dlq, idle_s=0.5)

    def close(self) -> None:
        self.delivery.incidents.close()
        self.delivery.dlq.close()


@pytest.fixture
def topics(broker: EmbeddedBroker) -> Iterator[Topics]:
    made = Topics(broker.bootstrap)
    yield made
    made.close()


def submission(policy_path: Path | None = None) -> Submission:
    return Submission(KEYS, load_policy(policy_path), future_skew_seconds=300)


def assert_no_raw_caller(payloads: list[bytes]) -> None:
    everything = b"".join(payloads)
    for raw in (PHONE, "7412345678", "345678", NAME, "Raw-Caller"):
        assert raw.encode() not in everything, f"{raw!r} passed the ingest boundary"


# ----------------------------------------------------------------------------- files


def test_a_bad_file_publishes_the_good_records_and_dead_letters_each_bad_line(
    tmp_path: Path, topics: Topics, read_topic: Reader
) -> None:
    good = [incident() for _ in range(3)]
    future = incident(occurred_at="2999-01-01T00:00:00Z", reported_at="2999-01-01T00:00:00Z")
    bad_phone = incident(caller={"phone": "12345", "name": NAME})
    path = tmp_path / "export.ndjson"
    with path.open("wb") as out:
        out.write((json.dumps(good[0]) + "\n").encode())
        out.write(
            json.dumps(incident(description="Zo\xeb"), ensure_ascii=False).encode("latin-1") + b"\n"
        )
        out.write((json.dumps(future) + "\n").encode())
        out.write(b'{"event_id": ' + b"9" * 3_000_000 + b"}\n")  # longer than the bound
        out.write((json.dumps(good[1]) + "\n\n").encode())
        out.write((json.dumps(bad_phone) + "\n").encode())
        out.write((json.dumps(good[2]) + "\n").encode())
        out.write(json.dumps(incident()).encode()[:80])  # truncated last line

    report = ingest_file(
        path,
        "ndjson",
        submission=submission(),
        delivery=topics.delivery,
        data_dir=tmp_path / "data",
        progress=False,
    )

    assert report.published == 3
    assert report.dead_letters == 5
    assert report.skipped == {"blank line": 1}
    assert dict(report.reasons) == {
        "not_utf8": 1,
        "future_time": 1,
        "line_too_long": 1,
        "invalid_caller": 1,
        "not_json": 1,
    }
    published = topics.events(read_topic)
    assert sorted(e["event_id"] for e in published) == sorted(e["event_id"] for e in good)
    letters = topics.letters()
    assert sorted(letter["origin"]["line"] for letter in letters) == [2, 3, 4, 7, 9]
    for letter in letters:
        assert validate_against("dead-letter.v1", letter) == []
        assert letter["source"] == "ndjson" and letter["origin"]["file"] == "export.ndjson"
    truncated = next(letter for letter in letters if letter["origin"]["line"] == 9)
    assert "truncated?" in truncated["errors"][0]["reason"]
    assert any("export.ndjson:4: line_too_long" in p for p in report.problems)
    raw = [r.value for r in read_topic(topics.bootstrap, topics.dlq)]
    raw += [r.value for r in read_topic(topics.bootstrap, topics.incidents)]
    assert_no_raw_caller(raw)
    checkpoints = list((tmp_path / "data").rglob("*.json"))
    assert len(checkpoints) == 1
    assert_no_raw_caller([checkpoints[0].read_bytes()])


def test_an_interrupted_load_resumes_without_counting_twice(
    tmp_path: Path, topics: Topics, read_topic: Reader
) -> None:
    events = [incident() for _ in range(50)]
    path = tmp_path / "big.ndjson"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))

    def interrupt(batches: int) -> None:
        if batches == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ingest_file(
            path,
            "ndjson",
            submission=submission(),
            delivery=topics.delivery,
            data_dir=tmp_path,
            batch_size=10,
            progress=False,
            on_batch=interrupt,
        )
    assert len(topics.events(read_topic)) == 30
    report = ingest_file(
        path,
        "ndjson",
        submission=submission(),
        delivery=topics.delivery,
        data_dir=tmp_path,
        batch_size=10,
        progress=False,
    )
    assert report.resumed_at_line == 30 and report.published == 20
    ids = [e["event_id"] for e in topics.events(read_topic)]
    assert sorted(ids) == sorted(e["event_id"] for e in events)  # each exactly once
    again = ingest_file(
        path, "ndjson", submission=submission(), delivery=topics.delivery, data_dir=tmp_path
    )
    assert again.already_complete and again.published == 0


def write_police_uk(path: Path, limit: int) -> int:
    """The project's real Northumbria 2022 ASB records as a data.police.uk CSV (plus one
    burglary row, which is not ASB); returns the number of ASB rows."""
    records = load_northumbria()[:limit]
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(COLUMNS)
        for number, record in enumerate(records):
            if number == 10:
                writer.writerow(
                    ["b1f2", "2022-01", "Northumbria Police", "Northumbria Police", -1.61,
                     54.97, "On or near Grey Street", "E01008300", "Newcastle upon Tyne 001A",
                     "Burglary", "Under investigation", ""]
                )  # fmt: skip
            writer.writerow(
                ["", record.month.strftime("%Y-%m"), "Northumbria Police", "Northumbria Police",
                 record.lon, record.lat, f"On or near {record.location}", record.lsoa_code, "",
                 "Anti-social behaviour", "", ""]
            )  # fmt: skip
    return len(records)


def test_police_uk_northumbria_loads_once_however_often_it_is_loaded(
    tmp_path: Path, topics: Topics, read_topic: Reader
) -> None:
    path = tmp_path / "2022-northumbria-street.csv"
    rows = write_police_uk(path, 1500)

    first = ingest_file(
        path,
        "police-uk",
        submission=submission(),
        delivery=topics.delivery,
        data_dir=tmp_path,
        progress=False,
    )
    assert (first.published, first.dead_letters) == (rows, 0)
    assert first.skipped == {"not anti-social behaviour": 1}
    second = ingest_file(
        path, "police-uk", submission=submission(), delivery=topics.delivery, data_dir=tmp_path
    )
    assert second.already_complete and second.published == 0
    forced = ingest_file(
        path,
        "police-uk",
        submission=submission(),
        delivery=topics.delivery,
        data_dir=tmp_path,
        restart=True,
        progress=False,
    )
    assert forced.published == rows
    published = topics.events(read_topic)
    assert len(published) == 2 * rows
    assert len({e["event_id"] for e in published}) == rows  # the reload is all duplicates
    sample = published[0]
    assert validate_against("incident.pseudonymised.v1", sample) == []
    assert sample["source"] == "other" and sample["opening_code"] == "ASBN"


def test_bus_feedback_file_places_reports_and_dead_letters_the_off_network_one(
    tmp_path: Path, topics: Topics, read_topic: Reader
) -> None:
    sample = ROOT / "asvat" / "reference" / "bus" / "feedback.sample.ndjson"
    report = ingest_file(
        sample,
        "bus-feedback",
        submission=submission(),
        delivery=topics.delivery,
        data_dir=tmp_path,
        network=BusNetwork.load(),
        progress=False,
    )
    assert (report.published, report.dead_letters) == (4, 1)
    events = {e["incident_id"]: e for e in topics.events(read_topic)}
    assert (
        events["BUS-BF-2024-0001"]["location"]["uprn"]
        == events["BUS-BF-2024-0002"]["location"]["uprn"]
    )  # a stop is one place for repeat-location rules
    assert events["BUS-BF-2024-0004"]["victim_key"] is not None
    [letter] = topics.letters()
    assert letter["reason"] == "off_network" and letter["record_format"] == "bus-feedback.v1"
    assert "comment" not in letter["record"]
    assert validate_against("dead-letter.v1", letter) == []


# ----------------------------------------------------------------------------- replay


def test_dlq_replay_publishes_after_the_policy_gains_the_code(
    tmp_path: Path, topics: Topics, read_topic: Reader
) -> None:
    unknown = incident(opening_code="BUSX")
    path = tmp_path / "new-code.ndjson"
    path.write_text(json.dumps(unknown) + "\n" + json.dumps(incident()) + "\n")
    ingest_file(
        path,
        "ndjson",
        submission=submission(),
        delivery=topics.delivery,
        data_dir=tmp_path,
        progress=False,
    )
    [letter] = outstanding(topics.letters()).letters
    assert letter["reason"] == "unknown_code"

    # Replayed under the same policy: it fails again and replaces itself.
    still = replay([letter], submission=submission(), delivery=topics.delivery)
    assert (still.published, still.failed_again) == (0, 1)
    [again] = outstanding(topics.letters()).letters
    assert again["replay_of"] == letter["dead_letter_id"] and again["attempt"] == 2

    policy = tmp_path / "policy.yaml"
    default = (ROOT / "asvat" / "policy" / "default.yaml").read_text()
    policy.write_text(
        default.replace("codes:\n", "codes:\n  BUSX: {class: asb, asb_category: nuisance}\n", 1)
    )
    fixed = replay([again], submission=submission(policy), delivery=topics.delivery)
    assert (fixed.published, fixed.failed_again) == (1, 0)
    assert outstanding(topics.letters()).letters == []
    published = {e["event_id"]: e for e in topics.events(read_topic)}
    replayed = published[unknown["event_id"]]
    assert replayed["opening_code"] == "BUSX"
    assert replayed["victim_key"] == json.loads(json.dumps(letter))["record"]["victim_key"]
    assert "description" not in replayed  # free text is not kept in dead letters
    assert validate_against("incident.pseudonymised.v1", replayed) == []


# ----------------------------------------------------------------------------- kafka


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for value in values:
            producer.send(topic, value=value)
        producer.flush(10)
    finally:
        producer.close()


def wait_for(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError("timed out")


def committed(bootstrap: str, group: str, topic: str) -> int:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        return sum(consumer.committed(TopicPartition(topic, p)) or 0 for p in parts)
    finally:
        consumer.close()


def test_the_kafka_source_publishes_dead_letters_and_commits(
    broker: EmbeddedBroker, topics: Topics, read_topic: Reader
) -> None:
    raw_topic = f"asvat.test.src.raw.{uuid.uuid4().hex[:10]}"
    group = f"asvat-test-raw-{uuid.uuid4().hex[:6]}"
    ensure_topics(broker.bootstrap, 4, [raw_topic])
    good = [incident() for _ in range(4)]
    produce(
        broker.bootstrap,
        raw_topic,
        [json.dumps(e).encode() for e in good]
        + [b"not json", json.dumps(incident(opening_code="ZZZZ")).encode()],
    )
    source = RawTopicSource(
        broker.bootstrap,
        topic=raw_topic,
        group_id=group,
        submission=submission(),
        delivery=topics.delivery,
    )
    source.start()
    try:
        wait_for(lambda: source.published + source.dead_letters >= 6)
        wait_for(lambda: committed(broker.bootstrap, group, raw_topic) == 6, timeout=20)
    finally:
        source.stop()
    published = topics.events(read_topic)
    assert sorted(e["event_id"] for e in published) == sorted(e["event_id"] for e in good)
    assert all(validate_against("incident.pseudonymised.v1", e) == [] for e in published)
    letters = topics.letters()
    assert sorted(letter["reason"] for letter in letters) == ["not_json", "unknown_code"]
    assert {letter["origin"]["topic"] for letter in letters} == {raw_topic}
    raw = [r.value for r in read_topic(broker.bootstrap, topics.incidents)]
    assert_no_raw_caller(raw + [r.value for r in read_topic(broker.bootstrap, topics.dlq)])


def test_one_event_by_http_kafka_and_file_counts_once(
    tmp_path: Path, broker: EmbeddedBroker, topics: Topics, read_topic: Reader
) -> None:
    event = incident()
    # HTTP, publishing to this test's incidents topic.
    settings = make_settings(tmp_path, kafka_bootstrap=broker.bootstrap)
    app = create_app(settings, topics.delivery.incidents)
    token = issue_token(settings.resolved_database_url, "ingest")
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as client:
        assert client.post("/v1/incidents", json=event).status_code == 202
    # Kafka.
    raw_topic = f"asvat.test.src.raw.{uuid.uuid4().hex[:10]}"
    ensure_topics(broker.bootstrap, 4, [raw_topic])
    produce(broker.bootstrap, raw_topic, [json.dumps(event).encode()])
    source = RawTopicSource(
        broker.bootstrap,
        topic=raw_topic,
        group_id=f"asvat-test-raw-{uuid.uuid4().hex[:6]}",
        submission=submission(),
        delivery=topics.delivery,
    )
    source.start()
    try:
        wait_for(lambda: source.published == 1)
    finally:
        source.stop()
    # File.
    path = tmp_path / "one.ndjson"
    path.write_text(json.dumps(event) + "\n")
    ingest_file(
        path,
        "ndjson",
        submission=submission(),
        delivery=topics.delivery,
        data_dir=tmp_path,
        progress=False,
    )

    records = read_topic(broker.bootstrap, topics.incidents)
    assert len(records) == 3
    payloads = [json.loads(r.value) for r in records]
    assert {p["event_id"] for p in payloads} == {event["event_id"]}
    assert len({p["victim_key"] for p in payloads}) == 1  # one key ring, one path
    # What the worker does with them: the offline replay runs the same engine.
    dump = tmp_path / "topic.ndjson"
    dump.write_text("".join(r.value.decode() + "\n" for r in records))
    out = tmp_path / "assessments.ndjson"
    code, summary = replay_offline(
        load_policy(None), dump, out, key=KEYS.key, key_id=KEYS.key_id, progress=False
    )
    assert code == 0
    assert (summary.applied, summary.duplicates) == (1, 2)
    [assessment] = out.read_text().splitlines()
    assert json.loads(assessment)["incident_id"] == event["incident_id"]
