"""The repeat-detector worker: a faust-streaming app around the pure detection engine.

Data flow: ``asvat.incidents.v1`` → :class:`~asvat.domain.engine.DetectionEngine` →
``asvat.assessments.v1`` (every changed assessment), ``asvat.escalations.v1`` (a subject
first meeting a rule) and ``asvat.incidents.late.v1`` (events not applied, with the
reason).

State: the engine keeps its windows in memory; the durable part of that state, the
current record of every incident, lives in the faust table ``incident-records`` (RocksDB
store, changelog with ``cleanup.policy=delete`` because the embedded broker reports wrong
end offsets for compacted topics). On start the engine is rebuilt from that table, so a
restart neither forgets a repeat nor re-issues what it already issued.
"""

from __future__ import annotations

import json
import logging
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.streams import _current_event
from prometheus_client import generate_latest

from asvat.domain.detector import Detector, DetectorOutcome
from asvat.domain.incident import IncidentEvent
from asvat.domain.policy import Policy
from asvat.domain.timeutil import now_micros
from asvat.settings import (
    TOPIC_ASSESSMENTS,
    TOPIC_CASE_REVIEWS,
    TOPIC_ESCALATIONS,
    TOPIC_INCIDENTS,
    TOPIC_INTEGRITY,
    TOPIC_LATE,
    TOPIC_REVIEWS,
    Settings,
)
from services.repeat_detector.messages import (
    assessment_message,
    case_review_message,
    escalation_message,
    integrity_message,
    late_message,
    not_applied_message,
    review_message,
)
from services.repeat_detector.metrics import NO_RULE, WorkerMetrics, level_of

log = logging.getLogger("asvat.worker")

#: Events taken from the stream per batch, and the longest wait to fill one.
BATCH_SIZE = 500
BATCH_WITHIN_S = 0.05
#: How often open escalations are checked for reviews coming due or overdue.
REVIEW_CHECK_INTERVAL_S = 60.0


class IncidentRecordTable(faust.Table):  # type: ignore[misc,type-arg]
    """A table whose changelog is not compacted (see the module docstring)."""

    _changelog_compacting = False


@dataclass
class DetectorState:
    """What the agent shares with the health pages."""

    detector: Detector
    restored: bool = False
    started_at: float = field(default_factory=time.time)
    last_progress: float = field(default_factory=time.time)


def _make_current(event: Any) -> None:
    """Make ``event`` faust's current event in this task only.

    ``take_events`` yields a batch without setting faust's current event, but the RocksDB
    store and the changelog need it to know which partition a table write belongs to. Only
    the context variable is set: the stream's ``current_event`` attribute is read by the
    background task that fills the next batch, and overwriting it there swaps events
    (found by the live-equals-replay end-to-end test).
    """
    _current_event.set(weakref.ref(event))


def _decode(raw: bytes) -> IncidentEvent:
    return IncidentEvent.from_wire(json.loads(raw))


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def create_app(
    settings: Settings, policy: Policy
) -> tuple[faust.App, DetectorState, WorkerMetrics]:
    """Build the faust app, its table, agent and health pages."""
    data = settings.data_path / "worker"
    data.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.consumer_group,
        broker=f"kafka://{settings.bootstrap}",
        store="rocksdb://" if settings.worker_store == "rocksdb" else "memory://",
        datadir=str(data),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=1,
        web_enabled=True,
        web_host=settings.worker_host,
        web_bind=settings.worker_host,
        web_port=settings.worker_port,
        web_in_thread=False,
        # The defaults (session 60 s, rebalance 60 s) make a group join take ~30 s on the
        # embedded broker; these bring it to a few seconds (ENGINEERING.md).
        broker_session_timeout=10,
        broker_heartbeat_interval=1,
        broker_rebalance_timeout=10,
        broker_commit_every=BATCH_SIZE,
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_linger_ms=5,
        table_cleanup_interval=3600,
        Table=IncidentRecordTable,
    )
    metrics = WorkerMetrics(rules=[rule.id for rule in policy.rules])
    state = DetectorState(detector=Detector(policy))
    metrics.observe(app, lambda: state.detector.watermark)

    incidents = app.topic(TOPIC_INCIDENTS, key_type=bytes, value_type=bytes, value_serializer="raw")
    assessments = app.topic(
        TOPIC_ASSESSMENTS, key_type=bytes, value_type=bytes, value_serializer="raw"
    )
    escalations = app.topic(
        TOPIC_ESCALATIONS, key_type=bytes, value_type=bytes, value_serializer="raw"
    )
    late = app.topic(TOPIC_LATE, key_type=bytes, value_type=bytes, value_serializer="raw")
    reviews = app.topic(TOPIC_REVIEWS, key_type=bytes, value_type=bytes, value_serializer="raw")
    case_reviews = app.topic(
        TOPIC_CASE_REVIEWS, key_type=bytes, value_type=bytes, value_serializer="raw"
    )
    integrity = app.topic(TOPIC_INTEGRITY, key_type=bytes, value_type=bytes, value_serializer="raw")
    records = app.Table(
        "incident-records",
        key_type=bytes,  # bytes → faust's "raw" serializer for keys and values
        value_type=bytes,
        partitions=settings.topic_partitions,
        # Delete-policy changelog: keep it for as long as the state it rebuilds can matter.
        extra_topic_configs={"retention.ms": str(-1)},
        help="Current record (pseudonymised wire event) of every retained incident.",
    )

    def restore() -> None:
        events = []
        for _key, value in records.items():
            try:
                events.append(_decode(value))
            except (ValueError, KeyError) as exc:  # pragma: no cover - data written by us
                log.error("skipping unreadable stored record: %s", exc)
        events.sort(key=lambda e: e.occurred_at)
        state.detector.restore(events)
        state.restored = True
        log.info("engine restored from %d stored incident records", len(events))

    async def publish(outcome: DetectorOutcome, raw: bytes, event: IncidentEvent, now: int) -> None:
        if outcome.not_applied is not None:
            payload = not_applied_message(outcome.not_applied, json.loads(raw))
            await late.send(key=event.incident_id.encode(), value=_dumps(payload))
            metrics.late.labels(outcome.not_applied.kind).inc()
            return
        for assessment in outcome.assessments:
            await assessments.send(
                key=assessment.incident_id.encode(),
                value=_dumps(assessment_message(assessment, now)),
            )
            for rule in assessment.rules_met or (NO_RULE,):
                metrics.assessments.labels(level_of(assessment), rule).inc()
        for escalation in outcome.escalations:
            payload = escalation_message(escalation, now)
            await escalations.send(key=escalation.subject_key.encode(), value=_dumps(payload))
            rules = [r.rule_id for r in escalation.reasons if r.rule_id] or [NO_RULE]
            for rule in rules:
                metrics.escalations.labels(escalation.level, rule).inc()
            log.info(
                "escalation %s: %s %s level=%s incident_id=%s",
                escalation.event,
                escalation.subject_type,
                escalation.escalation_id[:12],
                escalation.level,
                escalation.incident_id,
                extra={
                    "incident_id": escalation.incident_id,
                    "event_id": event.event_id,
                    "escalation_id": escalation.escalation_id,
                },
            )
        for met in outcome.case_reviews:
            payload = case_review_message(met, now)
            await case_reviews.send(key=met.subject_key.encode(), value=_dumps(payload))
        for finding in outcome.integrity:
            payload = integrity_message(finding, now)
            await integrity.send(key=finding.incident_id.encode(), value=_dumps(payload))

    @app.timer(interval=REVIEW_CHECK_INTERVAL_S)  # type: ignore[misc]
    async def announce_reviews() -> None:
        """Reviews of open escalations coming due or overdue (each announced once)."""
        if not state.restored:
            return
        for review in state.detector.reviews_due(now_micros()):
            payload = review_message(review)
            await reviews.send(key=review.escalation_id.encode(), value=_dumps(payload))
            metrics.reviews.labels(review.event).inc()

    @app.agent(incidents)  # type: ignore[misc]
    async def detect(stream: Any) -> None:
        async for batch in stream.take_events(BATCH_SIZE, within=BATCH_WITHIN_S):
            if not state.restored:
                restore()
            started = time.perf_counter()
            applied: list[tuple[Any, bytes, bytes]] = []
            for message_event in batch:
                raw = message_event.value
                try:
                    event = _decode(raw)
                except (ValueError, KeyError, TypeError) as exc:
                    # Ingest validated it; an unreadable message here is a contract breach.
                    metrics.events.labels("unreadable").inc()
                    log.error("unreadable incident message (%s); sent to the late topic", exc)
                    payload = late_message(f"unreadable: {exc}", "rejected", None, None)
                    await late.send(key=b"", value=_dumps(payload))
                    metrics.late.labels("unreadable").inc()
                    continue
                try:
                    now = now_micros()
                    outcome = state.detector.apply(event, at=now)
                except Exception as exc:  # a bug, not bad data: keep the event, say why
                    log.exception(
                        "engine failed on incident_id=%s event_id=%s",
                        event.incident_id,
                        event.event_id,
                        extra={"incident_id": event.incident_id, "event_id": event.event_id},
                    )
                    metrics.events.labels("engine_error").inc()
                    reason = f"engine error: {type(exc).__name__}: {exc}"
                    payload = late_message(reason, "rejected", None, json.loads(raw))
                    await late.send(key=event.incident_id.encode(), value=_dumps(payload))
                    metrics.late.labels("engine_error").inc()
                    continue
                if outcome.duplicate:
                    metrics.events.labels("duplicate").inc()
                    continue
                if outcome.superseded:
                    metrics.events.labels("superseded").inc()
                    continue
                if outcome.not_applied is None:
                    applied.append((message_event, event.incident_id.encode(), raw))
                    metrics.events.labels("applied").inc()
                else:
                    metrics.events.labels(outcome.not_applied.kind).inc()
                await publish(outcome, raw, event, now)
            # Outputs first, then the state that produced them: once a record is stored, a
            # redelivery of its event is a duplicate and issues nothing, so whatever that
            # event issued must already be acknowledged by the broker. A worker killed in
            # between re-applies the event after restart and re-issues (consumers are
            # idempotent on assessment_id and escalation_id).
            await app.producer.flush()
            for message_event, key, raw in applied:
                _make_current(message_event)
                records[key] = raw
            metrics.batch_seconds.observe(time.perf_counter() - started)
            metrics.retained.set(state.detector.retained_incidents)
            metrics.last_batch.set(time.time())
            state.last_progress = time.time()

    @app.page("/healthz")  # type: ignore[misc]
    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    @app.page("/readyz")  # type: ignore[misc]
    async def readyz(web: Any, request: Any) -> Any:
        assigned = len(app.consumer.assignment()) if app.consumer else 0
        ready = assigned > 0
        body = {"ready": ready, "assigned_partitions": assigned, "restored": state.restored}
        return web.json(body, status=200 if ready else 503)

    @app.page("/metrics")  # type: ignore[misc]
    async def metrics_page(web: Any, request: Any) -> Any:
        return web.bytes(
            generate_latest(metrics.registry), content_type="text/plain; version=0.0.4"
        )

    return app, state, metrics
