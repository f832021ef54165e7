"""What the engine says about an incident, and what it raises about a subject."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from asvat.domain.timeutil import format_timestamp


def content_id(*parts: str) -> str:
    """A deterministic id: SHA-256 (hex) of the parts joined by ``|``."""
    return hashlib.sha256("|".join(parts).encode("utf-8")).hexdigest()


def _canonical(obj: Any) -> str:
    """The canonical JSON of an assessment's content: sorted keys, no spaces, UTF-8 as is."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _plain(value: Any) -> bool:
    """Whether ``value`` holds only what orjson encodes exactly as :func:`_canonical` does:
    ``str``, ``int``, ``bool``, None, and lists, tuples and ``str``-keyed dicts of them.

    Not a float (orjson writes ``1e-7`` where ``json`` writes ``1e-07``, and ``null`` for
    NaN), nor any subclass or other type (orjson encodes dataclasses, enums and datetimes
    that ``json`` refuses).
    """
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return True
    if kind is list or kind is tuple:
        return all(_plain(item) for item in value)
    if kind is dict:
        return all(type(key) is str and _plain(item) for key, item in value.items())
    return False


def _assessment_id(content: dict[str, Any]) -> str:
    """``content_id("assessment", _canonical(content))``, several times faster.

    orjson with sorted keys writes the same bytes as ``json.dumps(sort_keys=True,
    separators=(",", ":"), ensure_ascii=False)`` encoded as UTF-8 for strings (every code
    point, control characters escaped alike), 64-bit integers, booleans, None, lists and
    ``str``-keyed dicts (keys in code-point order either way), which is all the content
    holds: the typed fields, and the reasons and integrity flags (``str``, ``int``, None and
    lists of ``str``: ``Reason.content``, ``IntegrityFlag.content``), which are checked
    (:func:`_plain`) since their type says ``Any``. Anything else, or what orjson refuses
    (an integer beyond 64 bits), takes the ``json`` path. Ids are compared with consumers'
    across versions: ``tests/unit/test_assessment_id.py`` holds ids made before this change
    and a property test of the two encodings.
    """
    if _plain(content["reasons"]) and _plain(content["integrity_flags"]):
        try:
            encoded = orjson.dumps(content, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:
            pass
        else:
            return hashlib.sha256(b"assessment|" + encoded).hexdigest()
    return content_id("assessment", _canonical(content))


class Assessment:
    """The current assessment of one incident.

    ``rule_counts`` has an entry for every rule of the policy (0 when the rule does not apply,
    e.g. a victim rule for an anonymous report); ``contributing`` lists, for rules met only,
    the sorted ids of the incidents counted.

    Immutable (every field is ``Final``: mypy refuses an assignment) and compared by value.
    A plain class, not a dataclass, so that mypyc compiles its ``__init__``: a dataclass's
    generated one stays interpreted, and one assessment is made per incident assessed.
    """

    __slots__ = (
        "asb_category", "case_review_threshold_met", "classification", "contributing",
        "in_scope", "incident_id", "integrity_flags", "location_key", "occurred_at",
        "reasons", "risk_level", "risk_score", "rule_counts", "rules_met", "victim_key",
    )

    def __init__(
        self,
        incident_id: str,
        in_scope: bool,
        classification: str,
        asb_category: str | None,
        occurred_at: int,
        victim_key: str | None,
        location_key: str | None,
        rules_met: tuple[str, ...],
        rule_counts: Mapping[str, int],
        contributing: Mapping[str, tuple[str, ...]],
        # Filled in by asvat.domain.detector from the policy's risk, case_review and
        # integrity sections; the engine alone leaves the defaults.
        risk_level: str = "standard",
        risk_score: int = 0,
        reasons: tuple[Mapping[str, Any], ...] = (),
        case_review_threshold_met: bool = False,
        integrity_flags: tuple[Mapping[str, Any], ...] = (),
    ) -> None:
        self.incident_id: Final = incident_id
        self.in_scope: Final = in_scope
        self.classification: Final = classification
        self.asb_category: Final = asb_category
        self.occurred_at: Final = occurred_at
        self.victim_key: Final = victim_key
        self.location_key: Final = location_key
        self.rules_met: Final = rules_met
        self.rule_counts: Final = rule_counts
        self.contributing: Final = contributing
        self.risk_level: Final = risk_level
        self.risk_score: Final = risk_score
        self.reasons: Final = reasons
        self.case_review_threshold_met: Final = case_review_threshold_met
        self.integrity_flags: Final = integrity_flags

    def _fields(self) -> tuple[Any, ...]:
        return (
            self.incident_id, self.in_scope, self.classification, self.asb_category,
            self.occurred_at, self.victim_key, self.location_key, self.rules_met,
            self.rule_counts, self.contributing, self.risk_level, self.risk_score,
            self.reasons, self.case_review_threshold_met, self.integrity_flags,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Assessment):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # compared by value, holds dicts

    def __repr__(self) -> str:
        names = (
            "incident_id", "in_scope", "classification", "asb_category", "occurred_at",
            "victim_key", "location_key", "rules_met", "rule_counts", "contributing",
            "risk_level", "risk_score", "reasons", "case_review_threshold_met",
            "integrity_flags",
        )
        shown = ", ".join(f"{n}={v!r}" for n, v in zip(names, self._fields(), strict=True))
        return f"Assessment({shown})"

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
        """Deterministic: the same content always has the same id, whatever the arrival order
        (SHA-256 of ``assessment|`` and the content's canonical JSON)."""
        return _assessment_id(self.content())

    def to_wire(self, assessed_at: int | str) -> dict[str, Any]:
        """The ``asvat.assessments.v1`` payload (the content built once, for the id too).
        ``assessed_at``: µs since the epoch, or already formatted (one stamp for a batch)."""
        content = self.content()
        return {
            "schema": "asvat.assessment.v1",
            "assessment_id": _assessment_id(content),
            **content,
            "assessed_at": (
                assessed_at if isinstance(assessed_at, str) else format_timestamp(assessed_at)
            ),
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
