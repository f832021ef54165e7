"""``asvat replay``: the detection engine offline, over an NDJSON file of incident events.

Each line is a contract-v1 incident event, raw (with ``caller``) or already pseudonymised
(with ``victim_key``). Raw callers are pseudonymised on the way in exactly as ingest does.
The output has one JSON line per incident in scope at the end, sorted by ``incident_id``,
equal to the live pipeline's latest assessment for that incident (less ``assessed_at``).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from asvat.contracts import validate_against, validate_incident
from asvat.domain.detector import Detector
from asvat.domain.identity import IdentityError, pseudonymise_event
from asvat.domain.incident import IncidentEvent
from asvat.domain.policy import Policy
from asvat.domain.timeutil import now_micros

#: Replayed history is old by definition; only reject times absurdly far in the future.
_REPLAY_FUTURE_SKEW_US = 10 * 365 * 86_400 * 1_000_000


@dataclass
class LineError:
    line: int
    reason: str


@dataclass
class ReplaySummary:
    lines: int = 0
    applied: int = 0
    duplicates: int = 0
    superseded: int = 0
    late: int = 0
    rejected: int = 0
    invalid: list[LineError] = field(default_factory=list)
    incidents_written: int = 0
    rules_met: Counter[str] = field(default_factory=Counter)
    risk_levels: Counter[str] = field(default_factory=Counter)
    escalations: Counter[str] = field(default_factory=Counter)
    case_reviews: int = 0
    integrity_findings: int = 0

    def report(self) -> str:
        parts = [
            f"{self.lines} lines",
            f"{self.applied} applied",
            f"{self.duplicates} duplicates ignored",
            f"{self.superseded} superseded by a higher sequence",
            f"{self.late} late",
            f"{self.rejected} rejected by policy",
            f"{len(self.invalid)} invalid",
            f"{self.incidents_written} incidents in scope written",
        ]
        lines = ["; ".join(parts)]
        if self.rules_met:
            met = ", ".join(f"{rule}: {n}" for rule, n in sorted(self.rules_met.items()))
            lines.append(f"incidents meeting each rule: {met}")
        if self.risk_levels:
            levels = ", ".join(
                f"{level}: {self.risk_levels[level]}" for level in ("standard", "medium", "high")
            )
            lines.append(f"incidents by risk level: {levels}")
        escalations = ", ".join(f"{kind}: {n}" for kind, n in sorted(self.escalations.items()))
        lines.append(
            f"escalation events: {escalations or 'none'}; case reviews due: "
            f"{self.case_reviews}; integrity findings: {self.integrity_findings}"
        )
        return "\n".join(lines)


def _parse_line(
    text: str, *, key: bytes, key_id: str, now_us: int
) -> tuple[IncidentEvent | None, str | None]:
    try:
        obj: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc.msg} at column {exc.colno})"
    if isinstance(obj, dict) and "caller" not in obj and "victim_key" in obj:
        errors = validate_against("incident.pseudonymised.v1", obj)
    else:
        errors = validate_incident(obj, now_us=now_us, future_skew_us=_REPLAY_FUTURE_SKEW_US)
    if errors:
        return None, "; ".join(f"{e.field}: {e.reason}" for e in errors)
    try:
        wire = pseudonymise_event(obj, key, key_id)
    except IdentityError as exc:
        return None, str(exc)
    return IncidentEvent.from_wire(wire), None


def _lines(stream: IO[str]) -> Iterator[tuple[int, str]]:
    for number, text in enumerate(stream, start=1):
        if text.strip():
            yield number, text


def replay(
    policy: Policy,
    source: Path,
    destination: Path,
    *,
    key: bytes,
    key_id: str,
    skip_invalid: bool = False,
    progress: bool = True,
    max_errors_shown: int = 20,
    err: IO[str] | None = None,
) -> tuple[int, ReplaySummary]:
    """Replay ``source`` into ``destination``. Returns the exit code and a summary.

    Exit code 0 on success; 1 when a line was invalid and ``skip_invalid`` is false (the
    output is still written, so the valid part can be inspected, and every bad line is
    listed with its number and reason).
    """
    err = err if err is not None else sys.stderr
    engine = Detector(policy, forget=False)  # every incident's final answer, however old
    summary = ReplaySummary()
    now_us = now_micros()
    with source.open("rb") as counting:
        total = sum(1 for _ in counting)  # lines, so the bar shows events per second
    with (
        source.open("r", encoding="utf-8", errors="strict") as stream,
        tqdm(
            total=total,
            unit=" events",
            unit_scale=True,
            disable=not progress,
            file=err,
            desc="replay",
            mininterval=0.5,
        ) as bar,
    ):
        try:
            for number, text in _lines(stream):
                summary.lines += 1
                bar.update(1)
                event, problem = _parse_line(text, key=key, key_id=key_id, now_us=now_us)
                if event is None:
                    summary.invalid.append(LineError(number, problem or "invalid"))
                    continue
                outcome = engine.apply(event)
                if outcome.duplicate:
                    summary.duplicates += 1
                elif outcome.superseded:
                    summary.superseded += 1
                elif outcome.not_applied is not None and outcome.not_applied.kind == "late":
                    summary.late += 1
                elif outcome.not_applied is not None:
                    # An unknown code under `unknown_code: reject` is a bad line.
                    summary.rejected += 1
                    summary.invalid.append(LineError(number, outcome.not_applied.reason))
                else:
                    summary.applied += 1
                summary.escalations.update(
                    f"{e.event} {e.subject_type} {e.level}" for e in outcome.escalations
                )
                summary.case_reviews += len(outcome.case_reviews)
                summary.integrity_findings += len(outcome.integrity)
        except UnicodeDecodeError as exc:
            summary.invalid.append(
                LineError(summary.lines + 1, f"not UTF-8 text ({exc.reason} at byte {exc.start})")
            )
    final = engine.final_assessments()
    tmp = destination.with_name(destination.name + ".partial")
    with tmp.open("w", encoding="utf-8") as out:
        for incident_id in sorted(final):
            assessment = final[incident_id]
            line = {"assessment_id": assessment.assessment_id, **assessment.content()}
            out.write(json.dumps(line, separators=(",", ":"), ensure_ascii=False))
            out.write("\n")
            summary.rules_met.update(assessment.rules_met)
            summary.risk_levels[assessment.risk_level] += 1
    tmp.replace(destination)
    summary.incidents_written = len(final)
    for bad in summary.invalid[:max_errors_shown]:
        print(f"{source}:{bad.line}: {bad.reason}", file=err)
    if len(summary.invalid) > max_errors_shown:
        print(f"... and {len(summary.invalid) - max_errors_shown} more invalid lines", file=err)
    print(summary.report(), file=err)
    if summary.invalid and not skip_invalid:
        print(
            f"replay: {len(summary.invalid)} invalid lines; fix them or pass --skip-invalid",
            file=err,
        )
        return 1, summary
    return 0, summary
