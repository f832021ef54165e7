"""Incident events as the engine sees them (after pseudonymisation at ingest)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from asvat.domain.location import Place, place_from_wire
from asvat.domain.timeutil import parse_timestamp

EventType = Literal["opened", "updated", "closed", "cancelled"]
EVENT_TYPES: tuple[str, ...] = ("opened", "updated", "closed", "cancelled")
SOURCES: tuple[str, ...] = ("999", "101", "online", "bus_feedback", "partner", "other")
VULNERABILITY_FACTORS: tuple[str, ...] = (
    "disability",
    "mental_health",
    "age_elderly",
    "child",
    "isolation",
    "hate_motivated",
    "previous_victim",
    "self_identified",
)


@dataclass(frozen=True, slots=True)
class IncidentEvent:
    """One message about one incident: a full snapshot of its current record.

    Times are epoch microseconds. ``victim_key`` is the pseudonymous victim identity (None
    for an anonymous report); raw caller identifiers never reach this type.
    """

    event_id: str
    incident_id: str
    sequence: int
    event_type: str
    occurred_at: int
    reported_at: int
    source: str
    opening_code: str
    closing_code: str | None
    victim_key: str | None
    place: Place | None
    vulnerability: frozenset[str] = frozenset()
    description: str | None = None

    @property
    def code(self) -> str:
        """The code that decides the classification: the closing code once set."""
        return self.closing_code if self.closing_code else self.opening_code

    @property
    def cancelled(self) -> bool:
        return self.event_type == "cancelled"

    @property
    def report_delay(self) -> int:
        """Microseconds between the behaviour and its report."""
        return self.reported_at - self.occurred_at

    def supersedes(self, other: IncidentEvent) -> bool:
        """True when this event, not ``other``, is the incident's current record.

        Highest ``sequence`` wins; equal sequences are ordered by ``event_id`` so that the
        choice never depends on arrival order.
        """
        return (self.sequence, self.event_id) > (other.sequence, other.event_id)

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> IncidentEvent:
        """Build from a pseudonymised, schema-valid JSON object (``asvat.incidents.v1``)."""
        location = data.get("location")
        return cls(
            event_id=str(data["event_id"]),
            incident_id=str(data["incident_id"]),
            sequence=int(data["sequence"]),
            event_type=str(data["event_type"]),
            occurred_at=parse_timestamp(data["occurred_at"]),
            reported_at=parse_timestamp(data["reported_at"]),
            source=str(data["source"]),
            opening_code=str(data["opening_code"]),
            closing_code=data.get("closing_code") or None,
            victim_key=data.get("victim_key") or None,
            place=place_from_wire(location if isinstance(location, dict) else None),
            vulnerability=frozenset(data.get("vulnerability") or ()),
            description=data.get("description"),
        )
