"""What the engine says about an incident, and what it raises about a subject."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from asvat.domain.timeutil import format_timestamp


def content_id(*parts: str) -> str:
    """A deterministic id: SHA-256 (hex) of the parts joined by ``|``."""
    return hashlib.sha256("|".join(parts).encode("utf-8")).hexdigest()


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Assessment:
    """The current assessment of one incident.

    ``rule_counts`` has an entry for every rule of the policy (0 when the rule does not apply,
    e.g. a victim rule for an anonymous report); ``contributing`` lists, for rules met only,
    the sorted ids of the incidents counted.
    """

    incident_id: str
    in_scope: bool
    classification: str
    asb_category: str | None
    occurred_at: int
    victim_key: str | None
    location_key: str | None
    rules_met: tuple[str, ...]
    rule_counts: Mapping[str, int]
    contributing: Mapping[str, tuple[str, ...]]
    # Filled in by asvat.domain.detector from the policy's risk, case_review and integrity
    # sections; the engine alone leaves the defaults.
    risk_level: str = "standard"
    risk_score: int = 0
    reasons: tuple[Mapping[str, Any], ...] = ()
    case_review_threshold_met: bool = False
    integrity_flags: tuple[Mapping[str, Any], ...] = ()

    def content(self) -> dict[str, Any]:
        """The assessment as JSON-ready data, without wall-clock fields."""
        return {
            "incident_id": self.incident_id,
            "in_scope": self.in_scope,
            "classification": self.classification,
            "asb_category": self.asb_category,
            "occurred_at": format_timestamp(self.occurred_at),
            "victim_key": self.victim_key,
            "location_key": self.location_key,
            "rules_met": list(self.rules_met),
            "rule_counts": dict(self.rule_counts),
            "contributing": {rule: list(ids) for rule, ids in self.contributing.items()},
            "risk_level": self.risk_level,
            "risk_score": self.risk_score,
            "reasons": [dict(reason) for reason in self.reasons],
            "case_review_threshold_met": self.case_review_threshold_met,
            "integrity_flags": [dict(flag) for flag in self.integrity_flags],
        }

    @property
    def assessment_id(self) -> str:
        """Deterministic: the same content always has the same id, whatever the arrival order."""
        return content_id("assessment", _canonical(self.content()))

    def to_wire(self, assessed_at: int) -> dict[str, Any]:
        """The ``asvat.assessments.v1`` payload."""
        return {
            "schema": "asvat.assessment.v1",
            "assessment_id": self.assessment_id,
            **self.content(),
            "assessed_at": format_timestamp(assessed_at),
        }


@dataclass(frozen=True, slots=True)
class Escalation:
    """A subject (victim or location) met a rule for the first time."""

    subject_type: str
    subject_key: str
    rule_id: str
    incident_id: str
    contributing_incident_ids: tuple[str, ...]
    occurred_at: int
    event: str = "raised"

    @property
    def escalation_id(self) -> str:
        return content_id(self.subject_type, self.subject_key, self.rule_id)

    def to_wire(self, raised_at: int) -> dict[str, Any]:
        """The ``asvat.escalations.v1`` payload."""
        return {
            "schema": "asvat.escalation.v1",
            "escalation_id": self.escalation_id,
            "event": self.event,
            "subject_type": self.subject_type,
            "subject_key": self.subject_key,
            "rule_id": self.rule_id,
            "incident_id": self.incident_id,
            "contributing_incident_ids": list(self.contributing_incident_ids),
            "occurred_at": format_timestamp(self.occurred_at),
            "raised_at": format_timestamp(raised_at),
        }


@dataclass(frozen=True, slots=True)
class NotApplied:
    """An event the engine did not apply, and why (late, or an unknown code)."""

    reason: str
    kind: str  # "late" | "rejected"
    watermark: int | None
