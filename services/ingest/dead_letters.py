"""Dead letters: what the Kafka and file sources rejected, on ``asvat.incidents.dlq.v1``.

Nothing is dropped silently. Every rejected record becomes one message (schema
``schemas/dead-letter.v1.json``, ``kind: dead_letter``) with its source, where it came from
(topic/partition/offset, or file and line), the time, the reason code and every field
error (as in the HTTP 422), and the record itself **pseudonymised**:

* ``caller`` is replaced by ``victim_key`` / ``victim_key_id`` exactly as on
  ``asvat.incidents.v1`` (``caller_status: pseudonymised`` or ``anonymous``). A caller that
  is itself invalid cannot be keyed reliably: it is dropped (``caller_status: unusable``),
  and a replay of that letter fails again with the reason (re-send it from its source);
* free text is dropped: ``description`` (and a bus report's ``comment``); ``location.address``
  is kept only with the caller's identifiers redacted, as on the incidents topic;
* any field the contract does not know is dropped (its *name* is kept in
  ``dropped_fields``; its value could be anything); a replay submits the record without it;
* a line that is not JSON, not UTF-8 or too long keeps no record at all (``record: null``):
  only its position, so it can be fixed at the source.

``asvat dlq list`` counts the letters still outstanding by source and reason; ``asvat dlq
replay [--reason R] [--source S]`` re-submits them through the same path
(:class:`~services.ingest.submission.Submission`). A letter replayed is closed by a
``kind: resolution`` message (``published``, or ``failed_again`` with the id of the new
letter that replaces it). Ids are deterministic, so a replay interrupted and run again
repeats nothing that matters: the incident is a duplicate downstream (same ``event_id``),
and a letter or resolution seen twice counts once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from asvat.contracts import FieldError, load_schema
from asvat.domain.identity import IdentityError, pseudonymise_event
from asvat.domain.timeutil import format_timestamp, now_micros
from asvat.embedded.broker import parse_bootstrap, ping_broker
from asvat.keys import KeyRing
from services.ingest.publisher import Publisher
from services.ingest.submission import (
    PSEUDONYMOUS_FIELDS,
    Accepted,
    Rejected,
    SourceError,
    Submission,
)

log = logging.getLogger("asvat.ingest.dlq")

SCHEMA = "asvat.dead-letter.v1"
INCIDENT_FORMAT = "incident.v1"
BUS_FORMAT = "bus-feedback.v1"

#: Sources of dead letters (label ``source`` of the metric).
SOURCES = ("kafka", "ndjson", "csv", "police-uk", "bus-feedback")

#: A letter whose record would be larger than this keeps no record (Kafka's default
#: message limit is 1 MiB, and a record this big is no longer a plausible incident).
MAX_RECORD_BYTES = 64 * 1024

_INCIDENT_FIELDS = frozenset(load_schema("incident.v1")["properties"]) - {"caller", "description"}
_LOCATION_FIELDS = frozenset(load_schema("incident.v1")["$defs"]["location"]["properties"])
_FREE_TEXT = frozenset({"description", "comment"})


# --------------------------------------------------------------------------- letters


def _digest(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _caller_errors(errors: Iterable[FieldError]) -> bool:
    return any(e.field == "caller" or e.field.startswith("caller.") for e in errors)


def _bus_fields() -> frozenset[str]:
    return frozenset(load_schema("bus-feedback.v1")["properties"]) - {"caller", "comment"}


def sanitise(
    record: Any, errors: Sequence[FieldError], keys: KeyRing, record_format: str
) -> tuple[dict[str, Any] | None, str, list[str]]:
    """The record as a dead letter may hold it: ``(record or None, caller_status, dropped)``.

    See the module docstring for the rule. Never raises on any input.
    """
    if not isinstance(record, Mapping):
        return None, "unknown", []
    allowed = _INCIDENT_FIELDS if record_format == INCIDENT_FORMAT else _bus_fields()
    dropped: list[str] = []
    kept: dict[str, Any] = {}
    for name, value in record.items():
        if name in allowed or name in PSEUDONYMOUS_FIELDS or name == "caller":
            kept[name] = value
        else:
            dropped.append(str(name))
    location = kept.get("location")
    if isinstance(location, Mapping):
        clean = {k: v for k, v in location.items() if k in _LOCATION_FIELDS}
        dropped += [f"location.{k}" for k in location if k not in _LOCATION_FIELDS]
        kept["location"] = clean
    point = kept.get("point")
    if isinstance(point, Mapping):
        kept["point"] = {k: v for k, v in point.items() if k in ("lat", "lon")}
    raw_caller = kept.pop("caller", None)
    pre_keyed = "victim_key" in kept and "caller" not in record
    if pre_keyed:
        status = "pseudonymised" if kept.get("victim_key") else "anonymous"
        out = kept
    elif "caller" in record and (
        not (raw_caller is None or isinstance(raw_caller, Mapping)) or _caller_errors(errors)
    ):
        status = "unusable"
        out = {k: v for k, v in kept.items() if k != "location"}
        if isinstance(kept.get("location"), Mapping):
            out["location"] = {k: v for k, v in kept["location"].items() if k != "address"}
        out["victim_key"] = None
        out["victim_key_id"] = keys.key_id
    else:
        try:
            out = pseudonymise_event(
                {**kept, "caller": raw_caller}, keys.key, keys.key_id, previous=keys.previous
            )
        except (IdentityError, TypeError, ValueError):
            out = {k: v for k, v in kept.items() if k != "location"}
            out["victim_key"] = None
            out["victim_key_id"] = keys.key_id
            status = "unusable"
        else:
            status = "pseudonymised" if out.get("victim_key") else "anonymous"
    for name in _FREE_TEXT:
        if name in out:
            out.pop(name)
    dropped += [name for name in _FREE_TEXT if name in record]
    if len(json.dumps(out, default=str).encode("utf-8")) > MAX_RECORD_BYTES:
        return None, status, [*sorted(set(dropped)), "(record too large)"]
    return out, status, sorted(set(dropped))


@dataclass(frozen=True)
class Origin:
    """Where a rejected record came from: a topic position, or a file and line."""

    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    file: str | None = None
    file_id: str | None = None
    line: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def dead_letter(
    rejected: Rejected,
    *,
    source: str,
    origin: Origin,
    keys: KeyRing,
    record_format: str = INCIDENT_FORMAT,
    attempt: int = 1,
    replay_of: str | None = None,
    now_us: int | None = None,
) -> dict[str, Any]:
    """The dead-letter message for one rejected record (pseudonymised, see the module)."""
    record, caller_status, dropped = sanitise(rejected.record, rejected.errors, keys, record_format)
    origin_json = origin.as_json()
    return {
        "schema": SCHEMA,
        "kind": "dead_letter",
        "dead_letter_id": "dl-" + _digest(source, origin_json, attempt, replay_of),
        "source": source,
        "origin": origin_json,
        "rejected_at": format_timestamp(now_micros() if now_us is None else now_us),
        "reason": rejected.reason,
        "errors": [{"field": e.field, "reason": e.reason} for e in rejected.errors],
        "record_format": record_format if record is not None else None,
        "record": record,
        "caller_status": caller_status,
        "dropped_fields": dropped,
        "attempt": attempt,
        "replay_of": replay_of,
    }


def resolution(
    letter_id: str, *, outcome: str, event_id: str | None, new_letter_id: str | None
) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "kind": "resolution",
        "dead_letter_id": letter_id,
        "resolved_at": format_timestamp(now_micros()),
        "outcome": outcome,
        "event_id": event_id,
        "new_dead_letter_id": new_letter_id,
    }


def encode(message: Mapping[str, Any]) -> tuple[str, bytes]:
    """``(key, value)`` for the DLQ topic: keyed by the letter's id."""
    value = json.dumps(message, separators=(",", ":"), ensure_ascii=False, default=str)
    return str(message["dead_letter_id"]), value.encode("utf-8")


# --------------------------------------------------------------------------- delivery


class Delivery:
    """Publishes a batch's accepted records, then its dead letters, each all-or-error.

    The caller moves on (commits an offset, writes a checkpoint) only once this returns:
    a :class:`~services.ingest.publisher.BrokerUnavailable` means neither is safe to skip.
    """

    def __init__(
        self,
        incidents: Publisher,
        dlq: Publisher,
        *,
        on_dead_letter: Callable[[str, str], None] | None = None,
        on_warning: Callable[[str, str], None] | None = None,
        on_published: Callable[[str, int], None] | None = None,
    ) -> None:
        self.incidents = incidents
        self.dlq = dlq
        self._on_dead_letter = on_dead_letter
        self._on_warning = on_warning
        self._on_published = on_published

    def deliver(
        self, source: str, accepted: Sequence[Accepted], letters: Sequence[Mapping[str, Any]]
    ) -> None:
        if accepted:
            self.incidents.publish([(a.key, a.value) for a in accepted])
        if letters:
            self.dlq.publish([encode(letter) for letter in letters])
        # Counted once acknowledged, so a retried batch is not counted twice.
        if self._on_published is not None and accepted:
            self._on_published(source, len(accepted))
        for letter in letters:
            if self._on_dead_letter is not None:
                self._on_dead_letter(source, str(letter["reason"]))
        for item in accepted:
            for check in item.warnings:
                if self._on_warning is not None:
                    self._on_warning(source, check)


# --------------------------------------------------------------------------- reading


def read_messages(
    bootstrap: str, topic: str, *, idle_s: float = 1.0, timeout_s: float = 60.0
) -> list[dict[str, Any]]:
    """Every JSON message on ``topic`` from the beginning (read until ``idle_s`` of quiet).

    Reads by fetching, not by end offsets (Tansu's end offsets are unreliable). Messages
    that are not JSON objects are skipped with a warning.
    """
    from kafka import KafkaConsumer, TopicPartition

    ping_broker(bootstrap, timeout=5.0)
    consumer = KafkaConsumer(
        bootstrap_servers=[f"{h}:{p}" for h, p in parse_bootstrap(bootstrap)],
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id="asvat-dlq-reader",
    )
    out: list[dict[str, Any]] = []
    try:
        if topic not in consumer.topics():
            return []
        partitions = sorted(consumer.partitions_for_topic(topic) or ())
        assigned = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        deadline = time.monotonic() + timeout_s
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            batches: dict[Any, list[Any]] = consumer.poll(timeout_ms=100)
            fresh = [r for batch in batches.values() for r in batch]
            if not fresh:
                if time.monotonic() - last_new >= idle_s:
                    break
                continue
            last_new = time.monotonic()
            for record in fresh:
                try:
                    message = json.loads(record.value)
                except (ValueError, TypeError):
                    message = None
                if isinstance(message, dict):
                    out.append(message)
                else:
                    log.warning("skipped a message on %s that is not a JSON object", topic)
    finally:
        consumer.close()
    return out


@dataclass
class Outstanding:
    """The dead letters not yet resolved, in the order they were set aside."""

    letters: list[dict[str, Any]] = field(default_factory=list)
    resolved: int = 0

    def counts(self) -> Counter[tuple[str, str]]:
        return Counter((str(l["source"]), str(l["reason"])) for l in self.letters)  # noqa: E741


def outstanding(messages: Iterable[Mapping[str, Any]]) -> Outstanding:
    """Letters minus those a resolution closed (each id once, whatever was seen twice)."""
    letters: dict[str, dict[str, Any]] = {}
    closed: set[str] = set()
    for message in messages:
        if message.get("schema") != SCHEMA:
            continue
        letter_id = str(message.get("dead_letter_id"))
        if message.get("kind") == "dead_letter":
            letters.setdefault(letter_id, dict(message))
        elif message.get("kind") == "resolution":
            closed.add(letter_id)
    open_letters = [letter for key, letter in letters.items() if key not in closed]
    return Outstanding(open_letters, len(closed & set(letters)))


def format_counts(found: Outstanding) -> str:
    """The table ``asvat dlq list`` prints."""
    counts = found.counts()
    lines = [f"{'source':<14} {'reason':<16} {'count':>7}"]
    for (source, reason), count in sorted(counts.items()):
        lines.append(f"{source:<14} {reason:<16} {count:>7}")
    lines.append(
        f"{len(found.letters)} outstanding dead letters ({found.resolved} resolved by replay)"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------- replay


@dataclass
class ReplayReport:
    published: int = 0
    failed_again: int = 0
    reasons_again: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        again = ", ".join(f"{r}: {n}" for r, n in sorted(self.reasons_again.items()))
        return (
            f"replayed {self.published + self.failed_again} dead letters: {self.published} "
            f"published, {self.failed_again} set aside again" + (f" ({again})" if again else "")
        )


#: Turns a bus-feedback record into an incident record (or errors): see sources/bus.py.
BusConverter = Callable[[Mapping[str, Any]], tuple[dict[str, Any] | None, list[FieldError]]]


def replay(
    letters: Sequence[Mapping[str, Any]],
    *,
    submission: Submission,
    delivery: Delivery,
    bus: BusConverter | None = None,
    batch_size: int = 500,
) -> ReplayReport:
    """Re-submit ``letters`` through ``submission``; resolve each, re-letter the failures."""
    report = ReplayReport()
    for start in range(0, len(letters), batch_size):
        batch = letters[start : start + batch_size]
        accepted: list[Accepted] = []
        again: list[dict[str, Any]] = []
        resolutions: list[dict[str, Any]] = []
        now = now_micros()
        ingested_at = format_timestamp(now)
        for letter in batch:
            letter_id = str(letter["dead_letter_id"])
            record, errors, record_format = _replayable(letter, bus)
            if not errors:
                errors = submission.problems(record, now_us=now)
            if errors:
                new = dead_letter(
                    Rejected(record, tuple(errors)),
                    source=str(letter["source"]),
                    origin=Origin(**letter.get("origin", {})),
                    keys=submission.keys,
                    record_format=record_format,
                    attempt=int(letter.get("attempt", 1)) + 1,
                    replay_of=letter_id,
                    now_us=now,
                )
                if record is None or letter.get("record") is None:
                    new["record"], new["record_format"] = None, None
                    new["caller_status"] = letter.get("caller_status", "unknown")
                again.append(new)
                resolutions.append(
                    resolution(
                        letter_id,
                        outcome="failed_again",
                        event_id=None,
                        new_letter_id=new["dead_letter_id"],
                    )
                )
                report.failed_again += 1
                report.reasons_again[str(new["reason"])] += 1
            else:
                item = submission.pseudonymise(record, ingested_at=ingested_at)
                accepted.append(item)
                resolutions.append(
                    resolution(
                        letter_id, outcome="published", event_id=item.event_id, new_letter_id=None
                    )
                )
                report.published += 1
        source = str(batch[0]["source"]) if batch else "replay"
        delivery.deliver(source, accepted, again)
        # Resolutions last: a letter is closed only once its outcome is acknowledged.
        delivery.dlq.publish([encode(r) for r in resolutions])
    return report


def _replayable(
    letter: Mapping[str, Any], bus: BusConverter | None
) -> tuple[Any, list[FieldError], str]:
    """The incident record to re-submit, errors found before the contract, and its format."""
    record = letter.get("record")
    record_format = str(letter.get("record_format") or INCIDENT_FORMAT)
    if record is None:
        return (
            None,
            [
                SourceError(
                    "(record)",
                    "the record was not kept (it could not be read as a record); fix it at the "
                    "source and send it again",
                    letter.get("reason", "invalid_field"),
                )
            ],
            record_format,
        )
    if letter.get("caller_status") == "unusable":
        return (
            record,
            [
                SourceError(
                    "caller",
                    "the caller could not be pseudonymised when the record was set aside; "
                    "re-send the record from its source",
                    "invalid_caller",
                )
            ],
            record_format,
        )
    if record_format == BUS_FORMAT:
        if bus is None:
            problem = SourceError("(record)", "no bus network to place the report on")
            return record, [problem], BUS_FORMAT
        converted, errors = bus(record)
        if converted is None:
            return record, errors, BUS_FORMAT
        return converted, errors, INCIDENT_FORMAT
    return record, [], INCIDENT_FORMAT
