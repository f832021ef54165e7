"""The worker's messages: domain results as the JSON payloads of its output topics.

One function per topic, each matching its schema in ``schemas/`` (tests validate real
output against them). ``now`` is the wall-clock time the worker issues the message (µs; the
replica uses one per batch, so it is formatted once per batch).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from asvat.domain.assessment import Assessment, NotApplied
from asvat.domain.case_review import CaseReviewThresholdMet
from asvat.domain.escalation_lifecycle import EscalationEvent, ReviewEvent
from asvat.domain.integrity import IntegrityFinding
from asvat.domain.timeutil import format_timestamp


@lru_cache(maxsize=8)
def _stamp(now: int) -> str:
    """``format_timestamp(now)``, remembered for the last few ``now``."""
    return format_timestamp(now)


def assessment_message(assessment: Assessment, now: int) -> dict[str, Any]:
    """``asvat.assessments.v1`` (key: incident_id)."""
    return assessment.to_wire(_stamp(now))


def escalation_message(escalation: EscalationEvent, now: int) -> dict[str, Any]:
    """``asvat.escalations.v1`` (key: subject_key)."""
    return {
        "schema": "asvat.escalation.v1",
        **escalation.content(),
        "raised_at": _stamp(now),
    }


def case_review_message(met: CaseReviewThresholdMet, now: int) -> dict[str, Any]:
    """``asvat.case-reviews.v1`` (key: subject_key)."""
    return {"schema": "asvat.case-review.v1", **met.content(), "at": _stamp(now)}


def integrity_message(finding: IntegrityFinding, now: int) -> dict[str, Any]:
    """``asvat.integrity.v1`` (key: incident_id)."""
    return {"schema": "asvat.integrity.v1", **finding.content(), "at": _stamp(now)}


def review_message(review: ReviewEvent) -> dict[str, Any]:
    """``asvat.reviews.v1`` (key: escalation_id)."""
    return {"schema": "asvat.review.v1", **review.content()}


def late_message(reason: str, kind: str, watermark: int | None, event: Any) -> dict[str, Any]:
    """``asvat.incidents.late.v1`` (key: incident_id): an event not applied, and why.

    ``event`` is the pseudonymised event as read (None if it could not be decoded).
    """
    return {
        "schema": "asvat.late-incident.v1",
        "reason": reason,
        "kind": kind,
        "watermark": None if watermark is None else format_timestamp(watermark),
        "event": event,
    }


def not_applied_message(not_applied: NotApplied, event: Any) -> dict[str, Any]:
    return late_message(not_applied.reason, not_applied.kind, not_applied.watermark, event)
