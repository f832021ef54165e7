"""``asvat ingest``: serve the ingest app with uvicorn on ``ASVAT_INGEST_HOST:PORT``."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

import uvicorn

from asvat.embedded.broker import (
    BrokerUnreachableError,
    PortInUseError,
    ensure_port_free,
    ping_broker,
)
from asvat.keys import HmacKeyError
from asvat.logs import configure_logging
from asvat.settings import Settings
from services.ingest.app import create_app
from services.ingest.publisher import KafkaPublisher

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
        publisher = KafkaPublisher(
            settings.bootstrap,
            partitions=settings.topic_partitions,
            timeout=settings.publish_timeout_seconds,
        )
        app = create_app(settings, publisher, policy)
    except (PortInUseError, HmacKeyError, ValueError) as exc:
        print(f"asvat ingest: {exc}", file=sys.stderr)
        return 1
    try:
        ping_broker(settings.bootstrap, timeout=2.0)
    except BrokerUnreachableError as exc:
        log.warning("%s; /readyz answers 503 and POSTs 503 until it does", exc)
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
        publisher.close()
    return 0
