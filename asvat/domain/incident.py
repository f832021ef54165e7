"""Incident events as the engine sees them (after pseudonymisation at ingest)."""

from __future__ import annotations

import sys
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


#: One shared object per set of known vulnerability factors (at most 2**8 of them), so that a
#: retained event does not carry its own copy: an empty frozenset alone takes 216 bytes.
_VULNERABILITY_SETS: dict[frozenset[str], frozenset[str]] = {}
_KNOWN_FACTORS = frozenset(VULNERABILITY_FACTORS)
_NO_FACTORS: frozenset[str] = _VULNERABILITY_SETS.setdefault(frozenset(), frozenset())


def _vulnerability(raw: Any) -> frozenset[str]:
    factors: frozenset[str] = frozenset(raw or ())
    if factors <= _KNOWN_FACTORS:
        return _VULNERABILITY_SETS.setdefault(factors, factors)
    return factors


def _shared(text: Any) -> Any:
    """``text`` interned if it is a string: an engine retains up to millions of events, and
    most of their strings repeat (codes, sources, event types, a victim's key)."""
    return sys.intern(text) if type(text) is str else text


def _aliases(raw: Any) -> tuple[str, ...]:
    """The alias keys of ``victim_key_aliases`` (``{key id: key}``), in key-id order."""
    if not isinstance(raw, Mapping) or not raw:
        return ()
    return tuple(sys.intern(str(raw[key_id])) for key_id in sorted(raw) if raw[key_id])


@dataclass(frozen=True, slots=True)
class IncidentEvent:
    """One message about one incident: a full snapshot of its current record.

    Times are epoch microseconds. ``victim_key`` is the pseudonymous victim identity (None
    for an anonymous report); raw caller identifiers never reach this type.
    ``victim_key_aliases`` are the same identity under previous HMAC keys while a key
    rotation is under way (empty otherwise): the engine treats incidents that share any
    of these keys as one victim's (:func:`asvat.domain.identity.victim_keys`).
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
    victim_key_aliases: tuple[str, ...] = ()

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
        return cls.from_wire_with_place(
            data, place_from_wire(location if isinstance(location, dict) else None)
        )

    @classmethod
    def from_wire_with_place(cls, data: Mapping[str, Any], place: Place | None) -> IncidentEvent:
        """:meth:`from_wire` with the place already made from ``data["location"]`` (by
        :func:`~asvat.domain.location.places_from_wire`, which converts a batch at once)."""
        get = data.get
        closing_code = get("closing_code")
        victim_key = get("victim_key")
        vulnerability = get("vulnerability")
        aliases = get("victim_key_aliases")
        # Positional, in field order: the fields of a frozen dataclass are slow to set by
        # keyword (this runs once per event).
        return cls(
            str(data["event_id"]),
            str(data["incident_id"]),
            int(data["sequence"]),
            _shared(str(data["event_type"])),
            parse_timestamp(data["occurred_at"]),
            parse_timestamp(data["reported_at"]),
            _shared(str(data["source"])),
            _shared(str(data["opening_code"])),
            _shared(closing_code) if closing_code else None,
            _shared(victim_key) if victim_key else None,
            place,
            _vulnerability(vulnerability) if vulnerability else _NO_FACTORS,
            get("description"),
            _aliases(aliases) if aliases else (),
        )


def shared_event(
    event_id: str,
    incident_id: str,
    sequence: int,
    event_type: str,
    occurred_at: int,
    reported_at: int,
    source: str,
    opening_code: str,
    closing_code: str | None,
    victim_key: str | None,
    place: Place | None,
    vulnerability: frozenset[str] = frozenset(),
    description: str | None = None,
    victim_key_aliases: tuple[str, ...] = (),
) -> IncidentEvent:
    """An event from its fields in order, its repeated strings and factor set shared as
    :meth:`IncidentEvent.from_wire` shares them (for a restored checkpoint)."""
    return IncidentEvent(
        event_id,
        incident_id,
        sequence,
        _shared(event_type),
        occurred_at,
        reported_at,
        _shared(source),
        _shared(opening_code),
        _shared(closing_code),
        _shared(victim_key),
        place,
        _vulnerability(vulnerability) if vulnerability else _NO_FACTORS,
        description,
        tuple(sys.intern(alias) for alias in victim_key_aliases),
    )
