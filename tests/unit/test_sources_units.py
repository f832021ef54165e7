"""Sources without a broker: bounded lines, dead-letter pseudonymisation, police.uk rows,
bus placement, CSV mappings, and the Kafka source's commit-after-acknowledgement rule."""

from __future__ import annotations

import csv
import io
import json
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import TEST_HMAC_KEY

from asvat.contracts import FieldError, validate_against
from asvat.demo import load_northumbria
from asvat.domain.identity import victim_key
from asvat.keys import KeyRing
from asvat.policy import load_policy
from services.ingest.dead_letters import Delivery, Origin, dead_letter
from services.ingest.publisher import BrokerUnavailable
from services.ingest.sources.bus import BusNetwork
from services.ingest.sources.csv_mapping import CsvMapping, CsvRows, MappingError
from services.ingest.sources.lines import read_lines
from services.ingest.sources.police_uk import COLUMNS, PoliceUkRows, nuisance_code
from services.ingest.sources.raw_topic import handle_batch
from services.ingest.submission import Rejected, Submission, reason_of

KEYS = KeyRing(key_id="test", key=TEST_HMAC_KEY.encode())
PHONE = "07412 345678"


def incident(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": "E-1",
        "incident_id": "NB-1",
        "sequence": 0,
        "event_type": "opened",
        "occurred_at": "2024-03-01T21:15:00Z",
        "reported_at": "2024-03-01T21:17:00Z",
        "source": "101",
        "opening_code": "ASBP",
        "caller": {"phone": PHONE, "name": "Quentin Raw-Caller"},
        "location": {"lat": 54.97328, "lon": -1.61396},
        "description": "Quentin says youths kick his door",
    }
    event.update(changes)
    return event


def submission() -> Submission:
    return Submission(KEYS, load_policy(None), future_skew_seconds=300)


# ----------------------------------------------------------------------------- lines


def test_lines_report_encoding_and_length_and_carry_on(tmp_path: Path) -> None:
    path = tmp_path / "mixed.ndjson"
    path.write_bytes(
        b'\xef\xbb\xbf{"a": 1}\n'
        + '{"name": "Zo\xeb"}\n'.encode("latin-1")
        + b"x" * 5000
        + b'\n{"b": 2}\n{"c": 3'
    )
    with path.open("rb") as stream:
        lines = list(read_lines(stream, max_bytes=1000))
    assert [line.number for line in lines] == [1, 2, 3, 4, 5]
    assert lines[0].text == '{"a": 1}'  # byte-order mark dropped
    assert lines[1].error is not None and lines[1].error.code == "not_utf8"
    assert "0xeb at column 13" in lines[1].error.reason
    assert lines[2].error is not None and lines[2].error.code == "line_too_long"
    assert "5001 bytes" in lines[2].error.reason
    assert lines[3].text == '{"b": 2}'
    assert lines[4].text == '{"c": 3' and not lines[4].complete
    # Offsets let a reader resume at any line.
    with path.open("rb") as stream:
        again = list(read_lines(stream, offset=lines[3].start, number=3, max_bytes=1000))
    assert [(line.number, line.text) for line in again] == [(4, '{"b": 2}'), (5, '{"c": 3')]


def test_a_100_mb_line_is_rejected_without_reading_it_into_memory(tmp_path: Path) -> None:
    path = tmp_path / "huge.ndjson"
    with path.open("wb") as out:
        out.write(b'{"ok": 1}\n{"description": "')
        block = b"y" * (1 << 20)
        for _ in range(100):
            out.write(block)
        out.write(b'"}\n{"ok": 2}\n')
    tracemalloc.start()
    try:
        with path.open("rb") as stream:
            lines = list(read_lines(stream))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [line.text for line in lines] == ['{"ok": 1}', None, '{"ok": 2}']
    assert lines[1].error is not None and lines[1].error.code == "line_too_long"
    assert peak < 8 * (1 << 20), f"peak {peak} bytes"


# ----------------------------------------------------------------------------- letters


def test_a_dead_letter_holds_no_raw_caller_and_no_free_text() -> None:
    record = incident(opening_code="NEWC", email_of_caller="q@example.org")
    [rejected] = submission().submit([record])[1]
    letter = dead_letter(rejected, source="kafka", origin=Origin("asvat.raw.v1", 0, 7), keys=KEYS)

    assert validate_against("dead-letter.v1", letter) == []
    assert letter["reason"] == "unknown_code"  # the most specific of its two problems
    assert {e["field"] for e in letter["errors"]} == {"opening_code", "email_of_caller"}
    assert letter["record"]["victim_key"] == victim_key({"phone": PHONE}, KEYS.key)
    assert letter["caller_status"] == "pseudonymised"
    assert letter["dropped_fields"] == ["description", "email_of_caller"]
    text = json.dumps(letter)
    for raw in ("07412", "345678", "Quentin", "Raw-Caller", "q@example.org", "kick"):
        assert raw not in text


def test_an_invalid_caller_is_dropped_not_guessed() -> None:
    record = incident(caller={"phone": "12345", "name": "Quentin Raw-Caller"})
    [rejected] = submission().submit([record])[1]
    assert rejected.reason == "invalid_caller"
    letter = dead_letter(rejected, source="ndjson", origin=Origin(file="a", line=3), keys=KEYS)
    assert letter["caller_status"] == "unusable"
    assert letter["record"]["victim_key"] is None
    assert "12345" not in json.dumps(letter) and "Quentin" not in json.dumps(letter)
    assert validate_against("dead-letter.v1", letter) == []


def test_unreadable_lines_keep_no_record() -> None:
    letter = dead_letter(
        Rejected(None, (FieldError("(line)", "expected UTF-8"),)),
        source="csv",
        origin=Origin(file="x.csv", file_id="abc", line=9),
        keys=KEYS,
    )
    assert letter["record"] is None and letter["record_format"] is None
    assert validate_against("dead-letter.v1", letter) == []


def test_reason_codes() -> None:
    future = FieldError("occurred_at", "expected a time no later than 2024-01-01T00:00:00Z ...")
    assert reason_of([FieldError("source", "expected one of ..."), future]) == "future_time"
    assert reason_of([FieldError("caller.phone", "expected a valid phone")]) == "invalid_caller"


def test_a_future_date_is_rejected_and_a_far_away_point_only_flagged() -> None:
    from services.ingest.area_check import AreaCheck

    path = Submission(KEYS, load_policy(None), future_skew_seconds=300, area_check=AreaCheck())
    accepted, rejected = path.submit(
        [
            incident(event_id="in-area"),
            incident(event_id="paris", location={"lat": 48.8566, "lon": 2.3522}),
            incident(event_id="leeds", location={"lat": 53.8008, "lon": -1.5491}),
            incident(event_id="future", occurred_at="2999-01-01T00:00:00Z"),
        ]
    )
    assert {a.event_id: a.warnings for a in accepted} == {
        "in-area": (),
        "paris": ("outside_uk",),
        "leeds": ("outside_force_area",),
    }
    [future] = rejected
    assert future.reason == "future_time"



def test_places_checked_together_get_what_each_gets_alone() -> None:
    from services.ingest.area_check import AreaCheck

    check = AreaCheck()
    locations = [
        {"easting": 424944, "northing": 564696},  # Newcastle, in the grid
        {"lat": 54.9783, "lon": -1.6178},  # Newcastle
        {"easting": 429000, "northing": 433500},  # Leeds, in the grid
        {"lat": 53.8008, "lon": -1.5491},  # Leeds
        {"lat": 48.8566, "lon": 2.3522},  # Paris
        {"uprn": "1000123"},  # no point: nothing to check
        None,
        {"easting": "not a number", "northing": 1},
        {"easting": 424944, "northing": 564696, "lat": 48.8566, "lon": 2.3522},  # grid first
    ]
    expected = [
        (),
        (),
        ("outside_force_area",),
        ("outside_force_area",),
        ("outside_uk",),
        (),
        (),
        (),
        (),
    ]
    assert check.warnings_many(locations) == expected
    assert [check.warnings(location) for location in locations] == expected
    assert check.warnings_many([]) == []

# ----------------------------------------------------------------------------- police.uk


def police_uk_rows() -> list[str]:
    """The shipped Northumbria 2022 records as police.uk CSV lines (header first)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for record in load_northumbria():
        writer.writerow(
            [
                "",
                record.month.strftime("%Y-%m"),
                "Northumbria Police",
                "Northumbria Police",
                record.lon,
                record.lat,
                f"On or near {record.location}",
                record.lsoa_code,
                "",
                "Anti-social behaviour",
                "",
                "",
            ]
        )
    return out.getvalue().splitlines()


def test_the_whole_northumbria_year_converts_deterministically() -> None:
    lines = police_uk_rows()
    code = nuisance_code(load_policy(None))
    assert code == "ASBN"
    rows = PoliceUkRows(code)
    rows.header(lines[0])
    first = [rows.convert(text, number) for number, text in enumerate(lines[1:], start=2)]
    again = [rows.convert(text, number) for number, text in enumerate(lines[1:], start=2)]
    assert first == again
    records = [record for record, errors, skipped in first if record and not errors]
    assert len(records) == len(lines) - 1 == 39_706
    assert len({r["event_id"] for r in records}) == len(records)
    by_month = {r["incident_id"]: r for r in records}
    for (record, _, _), text in zip(first, lines[1:], strict=True):
        assert record is not None
        month = text.split(",")[1]
        assert record["occurred_at"].startswith(month)  # spread within its own month
    moments = {by_month[i]["occurred_at"] for i in list(by_month)[:2000]}
    assert len(moments) > 1900  # spread, not piled on the 1st
    checker = submission()
    assert all(checker.problems(r, now_us=0 + 10**18) == [] for r in records[:500])


def test_police_uk_skips_other_crime_types_and_names_a_bad_header() -> None:
    rows = PoliceUkRows("ASBN")
    with pytest.raises(MappingError, match="'LSOA code'"):
        rows.header("Crime ID,Month,Reported by,Falls within,Longitude,Latitude,Location")
    rows.header(",".join(COLUMNS))
    burglary = "abc123,2022-01,N,N,-1.6,54.9,On or near X,E01,Name,Burglary,Under investigation,"
    assert rows.convert(burglary, 2) == (None, [], True)
    no_point = ",2022-01,N,N,,,No location,,,Anti-social behaviour,,"
    _, errors, _ = rows.convert(no_point, 3)
    assert [e.field for e in errors] == ["location"]


# ----------------------------------------------------------------------------- bus


def test_bus_reports_snap_to_stops_then_routes_else_are_rejected() -> None:
    network = BusNetwork.load()
    haymarket = network.stops["NCL-0004"]
    base = {"report_id": "R1", "submitted_at": "2024-03-01T22:40:00Z"}
    base["occurred_at"] = "2024-03-01T22:10:00Z"
    near_stop = {**base, "category": "intimidation", "point": {"lat": 54.97755, "lon": -1.6134}}
    record, errors = network.to_incident(near_stop)
    assert errors == [] and record is not None
    assert record["location"]["uprn"] == haymarket.location_id
    assert (record["location"]["lat"], record["location"]["lon"]) == (haymarket.lat, haymarket.lon)
    assert record["opening_code"] == "ASBP" and record["source"] == "bus_feedback"

    on_route = {
        **base,
        "category": "other",
        "route_id": "12",
        "point": {"lat": 54.9742, "lon": -1.592},
    }
    record, errors = network.to_incident(on_route)
    assert errors == [] and record is not None
    assert "uprn" not in record["location"]
    assert "Bus route 12" in record["location"]["address"]

    far = {**base, "category": "other", "route_id": "39", "point": {"lat": 54.995, "lon": -1.66}}
    record, errors = network.to_incident(far)
    assert record is None
    assert reason_of(errors) == "off_network"
    assert "m away" in errors[0].reason

    unknown = {**base, "category": "other", "stop_id": "NOPE"}
    assert reason_of(network.to_incident(unknown)[1]) == "unknown_place"
    route_only = {**base, "category": "other", "route_id": "1", "caller": {"phone": PHONE}}
    _, errors = network.to_incident(route_only)
    assert errors and PHONE not in str(errors)


def test_the_sample_reports_are_valid_and_one_is_off_network() -> None:
    network = BusNetwork.load()
    sample = Path("asvat/reference/bus/feedback.sample.ndjson").read_text().splitlines()
    results = [network.to_incident(json.loads(line)) for line in sample]
    assert [record is not None for record, _ in results] == [True, True, True, True, False]


# ----------------------------------------------------------------------------- csv


MAPPING = {
    "timestamp_format": "%d/%m/%Y %H:%M",
    "timezone": "Europe/London",
    "columns": {
        "incident_id": "Log",
        "occurred_at": "When",
        "opening_code": "Code",
        "caller.phone": "Phone",
        "location.lat": "Lat",
        "location.lon": "Lon",
    },
    "constants": {"source": "101"},
}


def test_csv_rows_follow_the_mapping() -> None:
    rows = CsvRows(CsvMapping.from_dict(MAPPING))
    rows.header("Log,When,Code,Phone,Lat,Lon,Notes")
    record, errors = rows.convert(f"NB-7,01/07/2024 22:15,ASBN,{PHONE},54.97,-1.61,x")
    assert errors == []
    assert record == {
        "incident_id": "NB-7",
        "event_id": "NB-7-0",
        "sequence": 0,
        "event_type": "opened",
        "source": "101",
        "occurred_at": "2024-07-01T21:15:00Z",  # BST read as UK time
        "reported_at": "2024-07-01T21:15:00Z",
        "opening_code": "ASBN",
        "caller": {"phone": PHONE},
        "location": {"lat": 54.97, "lon": -1.61},
    }
    _, errors = rows.convert("NB-8,yesterday,ASBN,,north,-1.6,x")
    assert {e.field for e in errors} == {"occurred_at", "location.lat"}
    _, errors = rows.convert("NB-9,short")
    assert reason_of(errors) == "bad_row"


def test_csv_header_problems_are_named() -> None:
    rows = CsvRows(CsvMapping.from_dict(MAPPING))
    with pytest.raises(MappingError, match=r"no column 'Phone' \(for caller.phone\)"):
        rows.header("Log,When,Code,Lat,Lon")
    with pytest.raises(MappingError, match="duplicate column"):
        rows.header("Log,When,Code,Phone,Lat,Lon,Lat")
    with pytest.raises(MappingError, match=r"columns\.callr\.phone: not a field"):
        CsvMapping.from_dict({**MAPPING, "columns": {**MAPPING["columns"], "callr.phone": "P"}})


def test_the_shipped_example_mapping_loads() -> None:
    CsvMapping.load(Path("deploy/ingest/mapping.example.yaml"))


# ----------------------------------------------------------------------------- kafka


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    value: bytes


class FlakyPublisher:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.sent: list[Sequence[tuple[str, bytes]]] = []

    def publish(self, records: Sequence[tuple[str, bytes]]) -> None:
        if self.failures:
            self.failures -= 1
            raise BrokerUnavailable("down")
        self.sent.append(records)

    def check_ready(self, timeout: float) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_kafka_batch_is_delivered_whole_or_raises_so_nothing_is_committed() -> None:
    incidents, dlq = FlakyPublisher(failures=0), FlakyPublisher(failures=1)
    delivery = Delivery(incidents, dlq)
    batch = [
        Message("asvat.raw.v1", 0, 0, json.dumps(incident()).encode()),
        Message("asvat.raw.v1", 0, 1, b"{not json"),
    ]
    with pytest.raises(BrokerUnavailable):
        handle_batch(batch, submission=submission(), delivery=delivery)
    assert handle_batch(batch, submission=submission(), delivery=delivery) == (1, 1)
    [letters] = dlq.sent
    letter = json.loads(letters[0][1])
    assert letter["reason"] == "not_json" and letter["origin"]["offset"] == 1
    assert datetime.fromisoformat(letter["rejected_at"]).tzinfo == UTC
