"""The API's topic reader: assessments and escalations from Kafka into the database.

At-least-once: a batch from ``getmany`` is written in one database transaction, and only
then are its offsets committed. A crash in between redelivers the batch, which is harmless
because the writes are idempotent (assessments are upserts by incident_id, escalations are
stored once per escalation_id).

Nothing stops the loop: a message that is not JSON, breaks its schema or cannot be stored is
logged with its topic, partition and offset, counted in
``asvat_api_messages_invalid_total`` and skipped; a database that does not answer makes the
batch wait and retry; a broker that goes away is reconnected to with backoff.

The worker's ``asvat.reviews.v1``, ``asvat.integrity.v1`` and ``asvat.case-reviews.v1`` are
not read, on purpose: the queues are derived from what is stored, and that is the more
correct source. Reviews come due by the schedule each escalation's tasking carries, and a
sign-off here moves the next one, which the worker never learns (its notices would call a
signed-off review overdue). An integrity finding is issued only when the incident's
assessment carries the same flags, on the same key, and a re-issued assessment without them
clears the queue, which an append-only finding cannot. Case reviews: under the default
``count_by: victim`` the assessments' ``case_review_threshold_met`` gives the same victims
and stays right when an incident is reclassified; under ``location_distinct_reporters`` the
subject is a place, which the queue (victims) cannot show yet: consuming case-reviews.v1,
by ``event_id``, is the way to show it when that policy is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.orm import Session, sessionmaker

from asvat.contracts import loads_json, refuse_json_constant, validate_against
from asvat.embedded.broker import group_consumer
from asvat.settings import TOPIC_ASSESSMENTS, TOPIC_ESCALATIONS
from services.api import service, statistics
from services.api.areas import AreaIndex
from services.api.metrics import ApiMetrics

log = logging.getLogger(__name__)

#: The schema (``schemas/<name>.json``) each consumed topic's payloads follow.
TOPIC_SCHEMAS: Mapping[str, str] = {
    TOPIC_ASSESSMENTS: "assessment.v1",
    TOPIC_ESCALATIONS: "escalation.v1",
}
MAX_BATCH = 500
#: Longest a fetch waits at the broker for records (see the consumer's construction).
FETCH_MAX_WAIT_MS = 20
POLL_TIMEOUT_MS = 500


class InvalidMessage(ValueError):
    """A message the API cannot use; the text says what is wrong with it."""


class DatabaseUnavailable(RuntimeError):
    """The database did not take the batch; retry it later."""


@dataclass(frozen=True, slots=True)
class Message:
    """One consumed message and where it came from."""

    topic: str
    partition: int
    offset: int
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message set aside, and why."""

    topic: str
    partition: int
    offset: int
    reason: str

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


def decode(topic: str, value: bytes | None) -> dict[str, Any]:
    """The JSON object in ``value``, checked against the topic's schema."""
    if value is None:
        raise InvalidMessage("empty message (no value)")
    try:
        payload = loads_json(value, parse_constant=refuse_json_constant)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidMessage(f"not UTF-8 JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise InvalidMessage(f"expected a JSON object, got {type(payload).__name__}")
    schema = TOPIC_SCHEMAS.get(topic)
    if schema is None:
        raise InvalidMessage(f"no schema for topic {topic!r}")
    errors = validate_against(schema, payload)
    if errors:
        raise InvalidMessage(f"breaks {schema}: " + "; ".join(str(e) for e in errors))
    return payload


def store_batch(
    session_factory: sessionmaker[Session],
    messages: Sequence[Message],
    areas: AreaIndex | None = None,
) -> list[Rejected]:
    """Write ``messages`` in one transaction; returns the ones that could not be stored.

    A row the database refuses (say a NUL character PostgreSQL will not take) would fail
    the whole transaction; then the batch is written again one message per transaction so
    that only the bad ones are set aside. Raises :class:`DatabaseUnavailable` when the
    database itself is the problem (nothing of the batch is then acknowledged).
    """
    if not messages:
        return []
    try:
        with session_factory.begin() as session:
            _write(session, messages, areas)
        return []
    except (SQLAlchemyError, service.PayloadError) as exc:
        if _database_unavailable(exc):
            raise DatabaseUnavailable(_describe(exc)) from exc
        log.warning("batch of %d refused (%s); storing one by one", len(messages), _describe(exc))
    rejected: list[Rejected] = []
    for message in messages:
        try:
            with session_factory.begin() as session:
                _write(session, [message], areas)
        except (SQLAlchemyError, service.PayloadError) as exc:
            if _database_unavailable(exc):
                raise DatabaseUnavailable(_describe(exc)) from exc
            rejected.append(
                Rejected(message.topic, message.partition, message.offset, _describe(exc))
            )
    return rejected


def _database_unavailable(exc: Exception) -> bool:
    """True for errors of the database (down, locked, connection lost), not of a row."""
    if isinstance(exc, OperationalError | InterfaceError | DisconnectionError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def _write(session: Session, messages: Sequence[Message], areas: AreaIndex | None) -> None:
    assessments = [m.payload for m in messages if m.topic == TOPIC_ASSESSMENTS]
    escalations = [m.payload for m in messages if m.topic == TOPIC_ESCALATIONS]
    # Every transaction that may append to the alert feed takes its lock first.
    service.lock_feed(session)
    deltas = statistics.Deltas()  # the area counts' changes: one write for the batch
    # Assessments first: a victim escalation is placed where its incident is.
    if assessments:
        service.upsert_assessments(
            session=session, payloads=assessments, areas=areas, deltas=deltas
        )
    if escalations:
        new = service.record_escalations(
            session=session, payloads=escalations, areas=areas, deltas=deltas
        )
        if new < len(escalations):
            log.debug("%d redelivered escalation(s) ignored", len(escalations) - new)
    deltas.write(session)


def _describe(exc: BaseException) -> str:
    """One line: the error's type and first line (the driver's own error for SQLAlchemy's)."""
    orig = getattr(exc, "orig", None)
    text = (str(orig if orig is not None else exc).splitlines() or [""])[0][:300]
    name = type(exc).__name__
    return text if text.startswith(name) else f"{name}: {text}"


@dataclass
class _Backoff:
    """Exponential backoff from ``first`` to ``limit`` seconds."""

    first: float = 0.5
    limit: float = 30.0
    _next: float = field(default=0.0, init=False)

    def delay(self) -> float:
        self._next = self.first if self._next == 0 else min(self._next * 2, self.limit)
        return self._next

    def reset(self) -> None:
        self._next = 0.0


class ApiConsumer:
    """Runs the read-store-commit loop as an asyncio task until :meth:`stop`."""

    def __init__(
        self,
        *,
        bootstrap: str,
        group_id: str,
        session_factory: sessionmaker[Session],
        metrics: ApiMetrics,
        topics: Sequence[str] = (TOPIC_ASSESSMENTS, TOPIC_ESCALATIONS),
        areas: AreaIndex | None = None,
        on_stored: Callable[[], None] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.topics = tuple(topics)
        self._session_factory = session_factory
        self._metrics = metrics
        self._areas = areas
        self._on_stored = on_stored or (lambda: None)
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        """Start the loop in the background (returns at once, even if the broker is down)."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="asvat-api-consumer")
        return self._task

    async def stop(self, timeout: float = 10.0) -> None:
        """Finish the batch in hand, leave the group, and end the loop."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await asyncio.wait_for(task, timeout)
        except TimeoutError:
            log.warning("consumer did not stop within %g s; cancelled", timeout)

    async def run(self) -> None:
        """Consume until stopped; reconnect with backoff whenever the broker goes away."""
        backoff = _Backoff()
        while not self._stopping.is_set():
            consumer = group_consumer(
                *self.topics,
                bootstrap=self.bootstrap,
                group_id=self.group_id,
                max_poll_interval_ms=60_000,
                # The embedded broker answers a waiting fetch only when the wait ends, not
                # when records arrive: 500 ms (the default) was a floor on alert latency.
                fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            )
            try:
                await consumer.start()
                backoff.reset()
                log.info(
                    "consuming %s from %s as group %s", self.topics, self.bootstrap, self.group_id
                )
                await self._consume(consumer)
            except KafkaError as exc:
                delay = backoff.delay()
                log.warning(
                    "Kafka at %s unavailable (%s); reconnecting in %.1f s",
                    self.bootstrap,
                    _describe(exc),
                    delay,
                )
                await self._pause(delay)
            except Exception:
                delay = backoff.delay()
                log.exception("consumer loop failed; restarting in %.1f s", delay)
                await self._pause(delay)
            finally:
                try:
                    await consumer.stop()
                except Exception:
                    log.debug("stopping the Kafka consumer failed", exc_info=True)

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        db_backoff = _Backoff()
        while not self._stopping.is_set():
            batches = await consumer.getmany(timeout_ms=POLL_TIMEOUT_MS, max_records=MAX_BATCH)
            if not batches:
                continue
            # Partition order is what matters (an incident's messages share a partition).
            records = [r for tp in sorted(batches, key=_tp_order) for r in batches[tp]]
            try:
                # Off the event loop: schema checks and database writes take milliseconds
                # per batch that HTTP requests should not wait for.
                rejected = await asyncio.to_thread(self._handle, records)
            except DatabaseUnavailable as exc:
                delay = db_backoff.delay()
                log.warning("database did not take the batch (%s); retrying in %.1f s", exc, delay)
                self._rewind(consumer, batches)
                await self._pause(delay)
                continue
            db_backoff.reset()
            self._account(records, rejected)
            await self._commit(consumer, batches)

    def _handle(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> list[Rejected]:
        """Decode and store one batch; the messages set aside (raises DatabaseUnavailable)."""
        started = time.perf_counter()
        messages, rejected = _decode_all(records)
        stored = rejected + store_batch(self._session_factory, messages, self._areas)
        self._on_stored()  # wake the live alert streams
        self._metrics.batch_store_seconds.observe(time.perf_counter() - started)
        now_ms = time.time() * 1000
        delay = self._metrics.message_delay_seconds
        by_topic = {topic: delay.labels(topic=topic) for topic in {r.topic for r in records}}
        for record in records:
            if record.timestamp > 0:  # -1: the producer set none
                by_topic[record.topic].observe(max(0.0, now_ms - record.timestamp) / 1000)
        return stored

    def _account(
        self, records: Sequence[ConsumerRecord[bytes, bytes]], rejected: Sequence[Rejected]
    ) -> None:
        for bad in rejected:
            log.error("invalid message set aside at %s: %s", bad.where, bad.reason)
            self._metrics.messages_invalid.labels(topic=bad.topic).inc()
        for topic, count in Counter(r.topic for r in records).items():
            self._metrics.messages_consumed.labels(topic=topic).inc(count)

    @staticmethod
    def _rewind(
        consumer: AIOKafkaConsumer,
        batches: Mapping[TopicPartition, Sequence[ConsumerRecord[bytes, bytes]]],
    ) -> None:
        """Fetch the batch again next time (it was not stored)."""
        for tp, records in batches.items():
            # A partition revoked meanwhile is its new owner's: it starts at the committed offset.
            with contextlib.suppress(IllegalStateError):
                consumer.seek(tp, records[0].offset)

    @staticmethod
    async def _commit(
        consumer: AIOKafkaConsumer,
        batches: Mapping[TopicPartition, Sequence[ConsumerRecord[bytes, bytes]]],
    ) -> None:
        offsets = {tp: records[-1].offset + 1 for tp, records in batches.items()}
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # A rebalance took the partitions away: the new owner re-reads from the last
            # committed offset and the idempotent writes absorb the repeat.
            log.warning("offset commit failed (%s); the batch will be redelivered", exc)

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once when stopped."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)


def _decode_all(
    records: Sequence[ConsumerRecord[bytes, bytes]],
) -> tuple[list[Message], list[Rejected]]:
    messages: list[Message] = []
    rejected: list[Rejected] = []
    for record in records:
        try:
            payload = decode(record.topic, record.value)
        except InvalidMessage as exc:
            rejected.append(Rejected(record.topic, record.partition, record.offset, str(exc)))
        else:
            messages.append(Message(record.topic, record.partition, record.offset, payload))
    return messages, rejected


def _tp_order(tp: TopicPartition) -> tuple[str, int]:
    return (tp.topic, tp.partition)
