"""Recording quality by contact team and month (HMICFRS 2024 recommendations 1 and 2:
record ASB and associated crime correctly, at first report).

Incident events may carry ``recorded_by`` (contract v1): the contact ``team`` and the
operator's id. The operator is pseudonymised at ingest (:func:`pseudonymise_recorder`,
keyed HMAC with the same key as callers, under a separate label) and never reported: the
report is by team only.

For each incident (its events grouped by ``incident_id``, duplicates ignored, the highest
``sequence`` its current record) the report counts, under its **opening** team (the team
on its earliest event that names one) and the month it occurred (UK time):

* ``finalised``: the current record has a closing code; ``same_class`` / ``same_code``:
  of those, the closing code's class (or the code itself) equals the opening one;
* ``into_asb`` / ``out_of_asb``: finalised incidents whose class moved into or out of ASB;
* ``integrity_flagged``: incidents that at some version carried an integrity flag
  (:func:`asvat.domain.integrity.check_integrity`); ``integrity_corrected``: of those, the
  ones whose current record carries none (recorded as a crime after all);
* ``cancelled`` incidents are counted apart and in nothing else.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from asvat.domain.incident import IncidentEvent
from asvat.domain.integrity import check_integrity
from asvat.domain.policy import Policy
from asvat.domain.timeutil import parse_timestamp

LOCAL = ZoneInfo("Europe/London")
UNRECORDED = "(not recorded)"
COUNTS = (
    "incidents",
    "finalised",
    "same_class",
    "same_code",
    "into_asb",
    "out_of_asb",
    "integrity_flagged",
    "integrity_corrected",
    "cancelled",
)
CSV_COLUMNS = ["team", "month", *COUNTS, "same_class_rate"]


def operator_key(operator_id: str, key: bytes) -> str:
    """Keyed HMAC-SHA256 (hex) of an operator id, labelled apart from callers' identities."""
    basis = "operator:" + operator_id.strip()
    return hmac.new(key, basis.encode("utf-8"), hashlib.sha256).hexdigest()


def pseudonymise_recorder(event: dict[str, Any], key: bytes) -> dict[str, Any]:
    """``event`` with ``recorded_by.operator_id`` replaced by ``operator_key`` (in place;
    returned for chaining). Events without ``recorded_by`` are unchanged."""
    recorder = event.get("recorded_by")
    if isinstance(recorder, Mapping):
        out = {k: v for k, v in recorder.items() if k != "operator_id"}
        operator = recorder.get("operator_id")
        if isinstance(operator, str) and operator.strip():
            out["operator_key"] = operator_key(operator, key)
        event["recorded_by"] = out
    return event


def _team(event: Mapping[str, Any]) -> str | None:
    recorder = event.get("recorded_by")
    if isinstance(recorder, Mapping):
        team = recorder.get("team")
        if isinstance(team, str) and team.strip():
            return team.strip()
    return None


def _month(occurred_at: str) -> str:
    moment = datetime.fromtimestamp(parse_timestamp(occurred_at) / 1e6, tz=UTC)
    return moment.astimezone(LOCAL).strftime("%Y-%m")


def _flagged(event: Mapping[str, Any], policy: Policy) -> bool:
    incident = IncidentEvent.from_wire(event)
    closing = incident.closing_code
    return bool(
        check_integrity(
            incident,
            policy.classify(closing) if closing else None,
            policy.classify(incident.opening_code),
            policy,
        )
    )


def _class(policy: Policy, code: str | None) -> str | None:
    if not code:
        return None
    found = policy.classify(code)
    return found.cls if found is not None else "other"


def recording_quality(events: Iterable[Mapping[str, Any]], policy: Policy) -> list[dict[str, Any]]:
    """One row per team and month (sorted), with the counts of the module's docstring."""
    by_incident: dict[str, dict[str, Mapping[str, Any]]] = defaultdict(dict)
    for event in events:
        by_incident[str(event["incident_id"])].setdefault(str(event["event_id"]), event)
    rows: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNTS, 0))
    for versions in by_incident.values():
        ordered = sorted(versions.values(), key=lambda e: (int(e["sequence"]), str(e["event_id"])))
        current = ordered[-1]
        team = next((t for t in map(_team, ordered) if t), UNRECORDED)
        counts = rows[(team, _month(str(current["occurred_at"])))]
        if current.get("event_type") == "cancelled":
            counts["cancelled"] += 1
            continue
        counts["incidents"] += 1
        opening_code = str(current["opening_code"])
        closing_code = current.get("closing_code") or None
        if closing_code:
            counts["finalised"] += 1
            opened, closed = _class(policy, opening_code), _class(policy, closing_code)
            counts["same_class"] += opened == closed
            counts["same_code"] += opening_code == closing_code
            counts["into_asb"] += opened != "asb" and closed == "asb"
            counts["out_of_asb"] += opened == "asb" and closed != "asb"
        flags = [_flagged(e, policy) for e in ordered if e.get("event_type") != "cancelled"]
        if any(flags):
            counts["integrity_flagged"] += 1
            counts["integrity_corrected"] += not flags[-1]
    out = []
    for (team, month), counts in sorted(rows.items()):
        rate = counts["same_class"] / counts["finalised"] if counts["finalised"] else None
        out.append(
            {
                "team": team,
                "month": month,
                **counts,
                "same_class_rate": None if rate is None else round(rate, 4),
            }
        )
    return out


def as_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})
    return buffer.getvalue()


def parse_events(
    lines: Iterable[str], *, key: bytes, key_id: str
) -> tuple[list[dict[str, Any]], int]:
    """Valid events of NDJSON lines, pseudonymised as ingest does (callers and operators);
    returns them and the number of invalid lines."""
    from asvat.contracts import validate_against, validate_incident
    from asvat.domain.identity import IdentityError, pseudonymise_event
    from asvat.domain.timeutil import now_micros

    now_us = now_micros()
    skew = 10 * 365 * 86_400 * 1_000_000  # history is old; refuse only absurd future times
    events: list[dict[str, Any]] = []
    bad = 0
    for text in lines:
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(obj, dict) and "caller" not in obj and "victim_key" in obj:
            errors = validate_against("incident.pseudonymised.v1", obj)
        else:
            errors = validate_incident(obj, now_us=now_us, future_skew_us=skew)
        if errors:
            bad += 1
            continue
        try:
            event = pseudonymise_event(obj, key, key_id)
        except IdentityError:
            bad += 1
            continue
        events.append(pseudonymise_recorder(event, key))
    return events, bad


def report_from_file(
    source: Path, policy: Policy, *, key: bytes, key_id: str
) -> tuple[list[dict[str, Any]], int]:
    with source.open("r", encoding="utf-8") as stream:
        events, bad = parse_events(stream, key=key, key_id=key_id)
    return recording_quality(events, policy), bad
