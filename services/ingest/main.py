"""``asvat ingest``: serve the ingest app with uvicorn on ``ASVAT_INGEST_HOST:PORT``."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

import uvicorn

from asvat.domain.policy import default_policy
from asvat.embedded.broker import (
    BrokerUnreachableError,
    PortInUseError,
    ensure_port_free,
    ping_broker,
)
from asvat.keys import HmacKeyError
from asvat.logs import configure_logging
from asvat.runtime import tune_gc
from asvat.settings import TOPIC_DLQ, TOPIC_INCIDENTS, TOPIC_RAW, Settings
from services.ingest.app import create_app
from services.ingest.dead_letters import Delivery
from services.ingest.event_log import EventLog
from services.ingest.publisher import DurablePublisher, KafkaPublisher, Republisher
from services.ingest.sources.raw_topic import RawTopicSource

if TYPE_CHECKING:
    from asvat.domain.policy import Policy

log = logging.getLogger("asvat.ingest")


def run(settings: Settings, policy: Policy | None = None) -> int:
    """Serve until stopped (SIGINT/SIGTERM). Returns the exit code: 1 on a start-up problem.

    With a ``policy`` that rejects unknown codes, ingest refuses them with 422.
    """
    configure_logging(settings, "ingest")
    try:
        ensure_port_free(settings.ingest_host, settings.ingest_port, "ingest HTTP")
        event_log = EventLog(settings.resolved_event_log_url)
        kafka = KafkaPublisher(
            settings.bootstrap,
            partitions=settings.topic_partitions,
            timeout=settings.publish_timeout_seconds,
        )
        publisher = DurablePublisher(kafka, event_log)
        app = create_app(settings, publisher, policy)
    except (PortInUseError, HmacKeyError, ValueError) as exc:
        print(f"asvat ingest: {exc}", file=sys.stderr)
        return 1
    try:
        ping_broker(settings.bootstrap, timeout=2.0)
    except BrokerUnreachableError as exc:
        log.warning("%s; /readyz answers 503 and POSTs 503 until it does", exc)
    retention = (policy or default_policy()).retention
    republisher = Republisher(
        settings.bootstrap,
        event_log,
        kafka,
        partitions=settings.topic_partitions,
        retention_s=retention.incidents / 1_000_000,
        purge_every_s=retention.every / 1_000_000,
    )
    republisher.start()
    raw = _raw_source(settings, app, event_log) if settings.ingest_raw_consumer else None
    if raw is not None:
        raw.start()
    tune_gc()
    try:
        uvicorn.run(
            app,
            host=settings.ingest_host,
            port=settings.ingest_port,
            log_level=settings.log_level.lower(),
            log_config=None,  # uvicorn's records go to the JSON handler configure_logging set
            access_log=False,
        )
    finally:
        if raw is not None:
            raw.stop()
            raw.delivery.incidents.close()
            raw.delivery.dlq.close()
        republisher.stop()
        publisher.close()
        event_log.close()
    return 0


def _raw_source(settings: Settings, app: Any, event_log: EventLog) -> RawTopicSource:
    """The reader of ``asvat.raw.v1``, sharing the app's validation path and metrics."""
    metrics = app.state.metrics

    def dead_letter(source: str, reason: str) -> None:
        metrics.dead_letters.labels(source=source, reason=reason).inc()
        metrics.raw_records.labels(outcome="dead_letter").inc()

    def warning(source: str, check: str) -> None:
        metrics.location_warnings.labels(source=source, check=check).inc()

    def publisher(topic: str) -> KafkaPublisher:
        return KafkaPublisher(
            settings.bootstrap,
            topic=topic,
            partitions=settings.topic_partitions,
            timeout=settings.publish_timeout_seconds,
        )

    delivery = Delivery(
        DurablePublisher(publisher(TOPIC_INCIDENTS), event_log),
        publisher(TOPIC_DLQ),
        on_dead_letter=dead_letter,
        on_warning=warning,
        on_published=lambda source, n: metrics.raw_records.labels(outcome="published").inc(n),
    )
    return RawTopicSource(
        settings.bootstrap,
        topic=TOPIC_RAW,
        group_id=settings.ingest_raw_consumer_group,
        submission=app.state.submission,
        delivery=delivery,
        partitions=settings.topic_partitions,
    )
