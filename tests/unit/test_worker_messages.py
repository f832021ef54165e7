"""Every message the worker publishes matches its schema: built from real detector output
over real Northumbria incidents, not hand-written samples."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from asvat.contracts import SCHEMA_DIR, validate_against
from asvat.demo import demo_burst, northumbria_incidents
from asvat.domain.detector import Detector
from asvat.domain.identity import pseudonymise_event
from asvat.domain.incident import IncidentEvent
from asvat.domain.policy import default_policy
from asvat.domain.timeutil import parse_timestamp
from services.repeat_detector.messages import (
    assessment_message,
    case_review_message,
    escalation_message,
    integrity_message,
    not_applied_message,
    review_message,
)

NOW = parse_timestamp("2024-01-01T00:00:00Z")
#: Schemas whose examples under schemas/examples/ are generated from this scenario.
EXAMPLED = ("assessment.v1", "escalation.v1", "case-review.v1", "integrity.v1", "review.v1")


def produced() -> Iterator[tuple[str, dict[str, Any]]]:
    end = datetime(2023, 12, 31, tzinfo=UTC)
    raw = demo_burst(seed=1, end=end) + northumbria_incidents(seed=9, limit=2500, shift_to=end)
    detector = Detector(default_policy())
    for record in raw:
        event = IncidentEvent.from_wire(pseudonymise_event(record, b"k" * 32, "k1"))
        outcome = detector.apply(event, at=event.reported_at)
        for a in outcome.assessments:
            yield "assessment.v1", assessment_message(a, NOW)
        for e in outcome.escalations:
            yield "escalation.v1", escalation_message(e, NOW)
        for m in outcome.case_reviews:
            yield "case-review.v1", case_review_message(m, NOW)
        for f in outcome.integrity:
            yield "integrity.v1", integrity_message(f, NOW)
    for review in detector.reviews_due(NOW + 400 * 86_400 * 1_000_000):
        yield "review.v1", review_message(review)
    late = detector.apply(
        IncidentEvent.from_wire(
            pseudonymise_event(
                dict(
                    raw[0],
                    event_id="late-1",
                    incident_id="late-1",
                    occurred_at="2020-01-01T00:00:00Z",
                    reported_at="2020-01-01T01:00:00Z",
                ),
                b"k" * 32,
                "k1",
            )
        )
    )
    assert late.not_applied is not None
    event = pseudonymise_event(dict(raw[0], event_id="late-1"), b"k" * 32, "k1")
    event["ingested_at"] = "2024-01-01T00:00:00Z"
    yield "late-incident.v1", not_applied_message(late.not_applied, event)


@pytest.fixture(scope="module")
def messages() -> dict[str, list[dict[str, Any]]]:
    by_schema: dict[str, list[dict[str, Any]]] = {}
    for schema, message in produced():
        by_schema.setdefault(schema, []).append(json.loads(json.dumps(message)))
    return by_schema


@pytest.mark.parametrize(
    "schema",
    [
        "assessment.v1",
        "escalation.v1",
        "case-review.v1",
        "integrity.v1",
        "review.v1",
        "late-incident.v1",
    ],
)
def test_every_message_of_a_topic_is_valid(
    schema: str, messages: dict[str, list[dict[str, Any]]]
) -> None:
    found = messages.get(schema, [])
    assert found, f"the scenario produced no {schema} message"
    for message in found:
        assert validate_against(schema, message) == [], message


def test_escalations_upgrade_and_carry_tasking(messages: dict[str, list[dict[str, Any]]]) -> None:
    events = {m["event"] for m in messages["escalation.v1"]}
    assert events == {"raised", "upgraded"}
    assert all(m["tasking"]["actions"] for m in messages["escalation.v1"])
    assert {m["event"] for m in messages["review.v1"]} == {"review.due", "review.overdue"}


def test_the_shipped_examples_are_real_output(messages: dict[str, list[dict[str, Any]]]) -> None:
    """schemas/examples/<schema>/ hold messages this scenario produces (regenerate with
    `python -m tests.unit.test_worker_messages`)."""
    for schema in EXAMPLED:
        examples = sorted((SCHEMA_DIR / "examples" / schema).glob("*.json"))
        assert examples, schema
        for path in examples:
            assert validate_against(schema, json.loads(path.read_text())) == [], path


def _write_examples() -> None:
    chosen: dict[str, list[dict[str, Any]]] = {}
    for schema, message in produced():
        if schema not in EXAMPLED:
            continue
        picked = chosen.setdefault(schema, [])
        kind = message.get("risk_level") if schema == "assessment.v1" else message.get("event")
        kinds = {
            m.get("risk_level") if schema == "assessment.v1" else m.get("event") for m in picked
        }
        if len(picked) < 3 and (kind not in kinds or schema in ("case-review.v1", "integrity.v1")):
            picked.append(json.loads(json.dumps(message)))
    for schema in EXAMPLED:
        folder = SCHEMA_DIR / "examples" / schema
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.json"):
            old.unlink()
        for n, message in enumerate(chosen[schema], start=1):
            label = message.get("risk_level") if schema == "assessment.v1" else message.get("event")
            name = str(label or schema.split(".")[0]).replace(".", "-").replace("_", "-")
            (folder / f"{n}-{name}.json").write_text(json.dumps(message, indent=2) + "\n")


if __name__ == "__main__":
    _write_examples()
    print("examples written under", Path(SCHEMA_DIR / "examples"))
