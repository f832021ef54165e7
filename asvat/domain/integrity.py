"""Crime data integrity: incidents finalised as ASB that disclose an offence.

An incident is checked when it is *finalised* — its current record carries a closing code
— with a code of a class in the policy's ``integrity.finalised_as`` (by default ``asb``),
and it is not cancelled. An incident still open is not checked: its classification may yet
change, and the check runs again on the record that finalises it. An incident finalised as
a crime is never flagged: the crime was recorded, which is what the Home Office Counting
Rules ask.

Reasons (:attr:`IntegrityFlag.reason`), in this order:

* ``opening_code`` — the opening code discloses an offence: it is one of the policy's
  ``disclosing_codes``, or (when that is null) a code of class ``crime``;
* ``crime_type`` — the closing or opening code carries a ``crime_type`` that the policy
  lists under ``offences`` (e.g. an ASB code for criminal-damage-related nuisance), unless
  the opening-code reason already names it;
* ``hate_motive`` — the vulnerability factor ``hate_motivated`` is recorded (when
  ``integrity.hate_motive`` is true);
* ``description`` — the description holds a phrase listed for an offence (whole words, any
  case, any spacing). One flag per offence, naming the phrases found; the description
  itself is never copied into a flag.

A flag is for review by a person (the force crime registrar), not a finding: a phrase may be
negated ("no damage was done") or quoted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from asvat.domain.assessment import content_id
from asvat.domain.incident import IncidentEvent
from asvat.domain.policy import CodeClass, Policy
from asvat.domain.timeutil import format_timestamp

REASONS = ("opening_code", "crime_type", "hate_motive", "description")


@dataclass(frozen=True, slots=True)
class IntegrityFlag:
    """Why an incident finalised as ASB may be an unrecorded crime.

    ``offence`` is the crime type disclosed (None when an opening code of class crime has
    none); ``code`` the code that disclosed it; ``phrases`` the description phrases found.
    """

    reason: str
    offence: str | None
    detail: str
    code: str | None = None
    phrases: tuple[str, ...] = ()

    def content(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "reason": self.reason,
            "offence": self.offence,
            "detail": self.detail,
        }
        if self.code is not None:
            out["code"] = self.code
        if self.phrases:
            out["phrases"] = list(self.phrases)
        return out


def is_checked(event: IncidentEvent, closing: CodeClass | None, policy: Policy) -> bool:
    """Whether ``event`` is a finalised, uncancelled record of a class the policy checks."""
    return (
        bool(event.closing_code)
        and not event.cancelled
        and closing is not None
        and closing.cls in policy.integrity.finalised_as
    )


def check_integrity(
    event: IncidentEvent,
    closing: CodeClass | None,
    opening: CodeClass | None,
    policy: Policy,
) -> tuple[IntegrityFlag, ...]:
    """The integrity flags of an incident's current record (empty when none or unchecked).

    ``closing`` and ``opening`` are the classifications of ``event.closing_code`` and
    ``event.opening_code`` (``policy.classify``; None for an unknown code).
    """
    if not is_checked(event, closing, policy):
        return ()
    assert closing is not None
    integrity = policy.integrity
    flags: list[IntegrityFlag] = []

    named: set[str] = set()
    discloses = (
        event.opening_code in integrity.disclosing_codes
        if integrity.disclosing_codes is not None
        else opening is not None and opening.cls == "crime"
    )
    if discloses:
        offence = opening.crime_type if opening is not None else None
        what = f" ({offence})" if offence else ""
        flags.append(
            IntegrityFlag(
                reason="opening_code",
                offence=offence,
                detail=(
                    f"opened as {event.opening_code}{what}, an offence, but finalised as "
                    f"{event.closing_code} ({closing.cls})"
                ),
                code=event.opening_code,
            )
        )
        if offence:
            named.add(offence)

    for code, cls in ((event.closing_code, closing), (event.opening_code, opening)):
        crime_type = cls.crime_type if cls is not None else None
        if crime_type is None or crime_type in named or crime_type not in integrity.crime_types:
            continue
        named.add(crime_type)
        flags.append(
            IntegrityFlag(
                reason="crime_type",
                offence=crime_type,
                detail=f"code {code} carries the associated crime type {crime_type}",
                code=code,
            )
        )

    if integrity.hate_motive and "hate_motivated" in event.vulnerability:
        flags.append(
            IntegrityFlag(
                reason="hate_motive",
                offence="hate",
                detail="a hate motive is recorded (vulnerability factor hate_motivated)",
            )
        )

    description = event.description or ""
    if description:
        found: dict[str, list[str]] = {}
        for phrase in integrity.phrases:
            if phrase.pattern.search(description):
                listed = found.setdefault(phrase.offence, [])
                if phrase.phrase not in listed:
                    listed.append(phrase.phrase)
        for offence, phrases in found.items():
            quoted = ", ".join(f"'{p}'" for p in phrases)
            flags.append(
                IntegrityFlag(
                    reason="description",
                    offence=offence,
                    detail=f"the description mentions {quoted} ({offence})",
                    phrases=tuple(phrases),
                )
            )
    return tuple(flags)


@dataclass(frozen=True, slots=True)
class IntegrityFinding:
    """An incident for the review queue and the ``asvat.integrity.v1`` topic."""

    incident_id: str
    event_id: str
    opening_code: str
    closing_code: str
    occurred_at: int
    flags: tuple[IntegrityFlag, ...]

    @classmethod
    def of(cls, event: IncidentEvent, flags: tuple[IntegrityFlag, ...]) -> IntegrityFinding:
        return cls(
            incident_id=event.incident_id,
            event_id=event.event_id,
            opening_code=event.opening_code,
            closing_code=event.closing_code or "",
            occurred_at=event.occurred_at,
            flags=flags,
        )

    @property
    def finding_id(self) -> str:
        """Deterministic: the incident, its codes and its flags (so a re-delivered or merely
        re-worded record with the same flags has the same id)."""
        flags = json.dumps([f.content() for f in self.flags], sort_keys=True, separators=(",", ":"))
        return content_id(
            "integrity", self.incident_id, self.opening_code, self.closing_code, flags
        )

    def content(self) -> dict[str, Any]:
        return {
            "finding_id": self.finding_id,
            "incident_id": self.incident_id,
            "event_id": self.event_id,
            "opening_code": self.opening_code,
            "closing_code": self.closing_code,
            "occurred_at": format_timestamp(self.occurred_at),
            "flags": [flag.content() for flag in self.flags],
        }
