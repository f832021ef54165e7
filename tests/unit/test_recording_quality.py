"""Recording quality by team and month against numbers worked out by hand, and the
pseudonymisation of the operator at the ingest boundary (contract v1, ``recorded_by``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from asvat.cli import main
from asvat.contracts import validate_against, validate_incident
from asvat.domain.policy import default_policy
from asvat.domain.timeutil import parse_timestamp
from asvat.keys import KeyRing
from asvat.recording_quality import (
    UNRECORDED,
    operator_key,
    pseudonymise_recorder,
    recording_quality,
)
from services.ingest.submission import Submission

KEY = b"test-only-hmac-key-0123456789abcdef"


def event(
    incident: str,
    sequence: int,
    opening: str,
    closing: str | None = None,
    *,
    month: str = "2024-03",
    team: str | None = "Control A",
    event_type: str = "opened",
    event_id: str | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "event_id": event_id or f"{incident}-{sequence}",
        "incident_id": incident,
        "sequence": sequence,
        "event_type": event_type if closing is None else "closed",
        "occurred_at": f"{month}-10T21:00:00Z",
        "reported_at": f"{month}-10T21:05:00Z",
        "source": "101",
        "opening_code": opening,
        "closing_code": closing,
        "caller": {"person_id": f"P-{incident}"},
        "location": {"lat": 54.97, "lon": -1.61},
    }
    if team is not None:
        out["recorded_by"] = {"team": team, "operator_id": f"OP-{incident}-{sequence}"}
    return out


def history() -> list[dict[str, Any]]:
    return [
        # Control A, March
        event("I1", 0, "ASBP"),
        event("I1", 1, "ASBP", "ASBP"),  # finalised, same class and code
        event("I2", 0, "HARS"),
        event("I2", 1, "HARS", "ASBP"),  # a crime finalised as ASB: flagged ...
        event("I2", 2, "HARS", "HARS", team="Crime desk"),  # ... then corrected
        event("I3", 0, "ASBP", "DISP"),  # out of ASB
        event("I4", 0, "ASBP"),  # not finalised
        event("I5", 0, "ASBP"),
        event("I5", 1, "ASBP", event_type="cancelled"),  # counted apart
        # Online, April
        event("I6", 0, "DISP", "ASBN", month="2024-04", team="Online"),  # into ASB
        event("I7", 0, "HARS", "ASBP", month="2024-04", team="Online"),  # flagged, still
        event("I7", 0, "HARS", "ASBP", month="2024-04", team="Online"),  # a duplicate
        # no team recorded
        event("I8", 0, "ASBP", month="2024-04", team=None),
    ]


def test_the_numbers_by_team_and_month() -> None:
    rows = recording_quality(history(), default_policy())
    assert rows == [
        {
            "team": UNRECORDED,
            "month": "2024-04",
            "incidents": 1,
            "finalised": 0,
            "same_class": 0,
            "same_code": 0,
            "into_asb": 0,
            "out_of_asb": 0,
            "integrity_flagged": 0,
            "integrity_corrected": 0,
            "cancelled": 0,
            "same_class_rate": None,
        },
        {
            "team": "Control A",
            "month": "2024-03",
            "incidents": 4,
            "finalised": 3,
            "same_class": 2,
            "same_code": 2,
            "into_asb": 0,
            "out_of_asb": 1,
            "integrity_flagged": 1,
            "integrity_corrected": 1,
            "cancelled": 1,
            "same_class_rate": 0.6667,
        },
        {
            "team": "Online",
            "month": "2024-04",
            "incidents": 2,
            "finalised": 2,
            "same_class": 0,
            "same_code": 0,
            "into_asb": 2,
            "out_of_asb": 0,
            "integrity_flagged": 1,
            "integrity_corrected": 0,
            "cancelled": 0,
            "same_class_rate": 0.0,
        },
    ]


def test_recorded_by_is_optional_and_checked_in_contract_v1() -> None:
    now = parse_timestamp("2024-08-01T00:00:00Z")
    good = event("I1", 0, "ASBP")
    assert validate_incident(good, now_us=now, future_skew_us=0) == []
    del good["recorded_by"]
    assert validate_incident(good, now_us=now, future_skew_us=0) == []
    bad = event("I1", 0, "ASBP") | {"recorded_by": {"operator_id": "OP-1", "name": "Sam"}}
    fields = {e.field for e in validate_incident(bad, now_us=now, future_skew_us=0)}
    assert "recorded_by.team" in fields or "recorded_by" in fields


def test_the_operator_is_pseudonymised_and_the_topic_payload_is_valid() -> None:
    submission = Submission(KeyRing("k1", KEY), default_policy(), future_skew_seconds=300)
    accepted = submission.pseudonymise(event("I1", 0, "ASBP"), ingested_at="2024-08-01T00:00:00Z")
    published = json.loads(accepted.value)
    assert "OP-I1-0" not in accepted.value.decode()
    assert published["recorded_by"] == {
        "team": "Control A",
        "operator_key": operator_key("OP-I1-0", KEY),
    }
    assert validate_against("incident.pseudonymised.v1", published) == []
    # an operator id must never reach the topic
    leaked = published | {"recorded_by": {"team": "A", "operator_id": "OP-1"}}
    assert validate_against("incident.pseudonymised.v1", leaked) != []
    assert pseudonymise_recorder({"recorded_by": {"team": "A"}}, KEY) == {
        "recorded_by": {"team": "A"}
    }


def test_the_command_writes_csv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "events.jsonl"
    source.write_text("".join(json.dumps(e) + "\n" for e in history()))
    monkeypatch.setenv("ASVAT_DATA_DIR", str(tmp_path / "data"))
    assert main(["report", "recording-quality", "--input", str(source)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("team,month,incidents,finalised,same_class")
    assert lines[2] == "Control A,2024-03,4,3,2,2,0,1,1,1,1,0.6667"
    assert "OP-" not in "\n".join(lines)
