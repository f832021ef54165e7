"""The one path every incident record takes into ASVAT: validate, then pseudonymise.

HTTP (``POST /v1/incidents``), the Kafka source (``asvat.raw.v1``), ``asvat ingest-file``
and ``asvat dlq replay`` all call :class:`Submission`, so a record is judged the same way
whichever door it came through: the contract (``schemas/incident.v1.json`` plus the
checks in :func:`asvat.contracts.validate_incident`), the policy's code list when it
rejects unknown codes, and then the caller replaced by ``victim_key``.

A record that already carries ``victim_key`` and no ``caller`` (a dead letter being
replayed: its caller was pseudonymised when it was set aside) is checked without its
pseudonymous fields and passes through with its ``victim_key`` unchanged.

Places are also checked, but only to *flag*: a point outside the United Kingdom or outside
the force area is published as it is and counted (``location_warnings``), never dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from asvat.contracts import FieldError, dumps_json, validate_incident
from asvat.domain.identity import pseudonymise_event
from asvat.domain.policy import Policy
from asvat.domain.timeutil import MICROS_PER_SECOND, format_timestamp, now_micros
from asvat.keys import KeyRing
from asvat.recording_quality import pseudonymise_recorder
from services.ingest.area_check import AreaCheck

#: Fields a pseudonymised record carries instead of ``caller``.
PSEUDONYMOUS_FIELDS = ("victim_key", "victim_key_id", "victim_key_aliases")

#: Reason codes, the label of ``asvat_ingest_dead_letters_total{reason}`` and what
#: ``asvat dlq replay --reason`` selects. Most specific first: a record's reason is the
#: first of these that any of its errors has.
REASONS = (
    "not_utf8",  # the line is not UTF-8 text
    "line_too_long",  # the line is longer than the reader's bound
    "not_json",  # the line or message is not a JSON value
    "bad_row",  # a CSV row that does not fit its header or mapping
    "off_network",  # bus feedback too far from every route and stop
    "unknown_place",  # bus feedback naming a route or stop the network does not have
    "unknown_code",  # a code the policy does not list (unknown_code: reject)
    "future_time",  # a time later than now plus ASVAT_FUTURE_SKEW_SECONDS
    "invalid_caller",  # the caller object or phone number is not valid
    "invalid_field",  # any other breach of the contract
)

#: Reason code of an error, when its wording alone says it (see :func:`reason_of`).
_FUTURE_WORDS = "expected a time no later than"
_CODE_WORDS = "expected one of the policy's codes"


@dataclass(frozen=True, slots=True)
class SourceError(FieldError):
    """A :class:`FieldError` raised by a source before the contract (its reason code given)."""

    code: str = "invalid_field"


def reason_of(errors: Sequence[FieldError]) -> str:
    """The reason code of a rejected record: the most specific code among its errors."""
    codes = {_code(error) for error in errors}
    for code in REASONS:
        if code in codes:
            return code
    return "invalid_field"


def _code(error: FieldError) -> str:
    if isinstance(error, SourceError):
        return error.code
    if error.reason.startswith(_CODE_WORDS):
        return "unknown_code"
    if error.reason.startswith(_FUTURE_WORDS):
        return "future_time"
    if error.field == "caller" or error.field.startswith("caller."):
        return "invalid_caller"
    return "invalid_field"


def policy_code_errors(record: Any, policy: Policy | None) -> list[FieldError]:
    """Codes the policy does not list, when it rejects unknown codes (``unknown_code``)."""
    if policy is None or policy.unknown_code != "reject" or not isinstance(record, dict):
        return []
    errors = []
    for name in ("opening_code", "closing_code"):
        code = record.get(name)
        if isinstance(code, str) and code and policy.classify(code) is None:
            known = ", ".join(sorted(policy.codes))
            errors.append(
                FieldError(name, f"expected one of the policy's codes ({known}), got {code!r}")
            )
    return errors


@dataclass(frozen=True, slots=True)
class Accepted:
    """A record ready to publish: the Kafka key (``incident_id``) and the JSON value."""

    event_id: str
    key: str
    value: bytes
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record refused, with every problem and the reason code."""

    record: Any
    errors: tuple[FieldError, ...]

    @property
    def reason(self) -> str:
        return reason_of(self.errors)


@dataclass
class Checked:
    """The outcome of :meth:`Submission.check_all`: per record, problems or none."""

    problems: list[list[FieldError]] = field(default_factory=list)

    @property
    def invalid(self) -> int:
        return sum(1 for found in self.problems if found)


class Submission:
    """Validation and pseudonymisation with one key ring, policy and clock-skew allowance."""

    def __init__(
        self,
        keys: KeyRing,
        policy: Policy | None,
        *,
        future_skew_seconds: int,
        area_check: AreaCheck | None = None,
    ) -> None:
        self.keys = keys
        self.policy = policy
        self.future_skew_us = future_skew_seconds * MICROS_PER_SECOND
        self.area_check = area_check

    def problems(self, record: Any, *, now_us: int) -> list[FieldError]:
        """Everything wrong with one record; ``[]`` when it may be published."""
        checked = record
        if _pre_pseudonymised(record):
            checked = {k: v for k, v in record.items() if k not in PSEUDONYMOUS_FIELDS}
        found = validate_incident(checked, now_us=now_us, future_skew_us=self.future_skew_us)
        return found + policy_code_errors(record, self.policy)

    def pseudonymise(self, record: Mapping[str, Any], *, ingested_at: str) -> Accepted:
        """The published form of a valid record (``caller`` replaced by ``victim_key``)."""
        return self.pseudonymise_all([record], ingested_at=ingested_at)[0]

    def pseudonymise_all(
        self, records: Sequence[Mapping[str, Any]], *, ingested_at: str
    ) -> list[Accepted]:
        """:meth:`pseudonymise` of each valid record, their places checked in one go."""
        keys = self.keys
        if self.area_check is not None:
            warnings = self.area_check.warnings_many([r.get("location") for r in records])
        else:
            warnings = [()] * len(records)
        accepted: list[Accepted] = []
        for record, warned in zip(records, warnings, strict=True):
            event = pseudonymise_event(record, keys.key, keys.key_id, previous=keys.previous)
            pseudonymise_recorder(event, keys.key)  # recorded_by.operator_id -> operator_key
            event["ingested_at"] = ingested_at
            value = dumps_json(event)
            accepted.append(
                Accepted(str(record["event_id"]), str(record["incident_id"]), value, warned)
            )
        return accepted

    def submit(
        self, records: Sequence[Any], *, now_us: int | None = None
    ) -> tuple[list[Accepted], list[Rejected]]:
        """Each record on its own: the valid ones pseudonymised, the others with their errors.

        (HTTP is all or nothing and uses :meth:`problems` and :meth:`pseudonymise` itself.)
        """
        now = now_micros() if now_us is None else now_us
        ingested_at = format_timestamp(now)
        valid: list[Mapping[str, Any]] = []
        rejected: list[Rejected] = []
        for record in records:
            found = self.problems(record, now_us=now)
            if found:
                rejected.append(Rejected(record, tuple(found)))
            else:
                valid.append(record)
        return self.pseudonymise_all(valid, ingested_at=ingested_at), rejected


def _pre_pseudonymised(record: Any) -> bool:
    return isinstance(record, Mapping) and "caller" not in record and "victim_key" in record
