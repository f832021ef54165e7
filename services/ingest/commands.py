"""``asvat ingest-file`` and ``asvat dlq list|replay``: the command-line side of the sources.

Both publish straight to Kafka (``ASVAT_KAFKA_BOOTSTRAP``, else the embedded broker's
address) with the same validation and pseudonymisation as the ingest service.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO

from asvat.domain.policy import Policy
from asvat.embedded.broker import BrokerUnreachableError, ensure_topics
from asvat.keys import HmacKeyError, load_key_ring
from asvat.settings import TOPIC_DLQ, TOPIC_INCIDENTS, Settings
from services.ingest.area_check import AreaCheck
from services.ingest.dead_letters import (
    Delivery,
    format_counts,
    outstanding,
    read_messages,
    replay,
)
from services.ingest.event_log import EventLog
from services.ingest.publisher import BrokerUnavailable, DurablePublisher, KafkaPublisher
from services.ingest.sources.bus import BusNetwork, NetworkError
from services.ingest.sources.csv_mapping import CsvMapping, MappingError
from services.ingest.sources.files import FileFormatError, ingest_file
from services.ingest.submission import Submission


def _submission(settings: Settings, policy: Policy) -> Submission:
    return Submission(
        load_key_ring(settings),
        policy,
        future_skew_seconds=settings.future_skew_seconds,
        area_check=AreaCheck(settings.districts_geojson),
    )


def _delivery(settings: Settings) -> Delivery:
    """Incidents go through the durable event log, as over HTTP (a broker that loses them
    gets them back from it); dead letters go to the broker only."""

    def publisher(topic: str) -> KafkaPublisher:
        return KafkaPublisher(
            settings.bootstrap,
            topic=topic,
            partitions=settings.topic_partitions,
            timeout=settings.publish_timeout_seconds,
        )

    event_log = EventLog(settings.resolved_event_log_url)
    return Delivery(DurablePublisher(publisher(TOPIC_INCIDENTS), event_log), publisher(TOPIC_DLQ))


def _close(delivery: Delivery) -> None:
    delivery.incidents.close()
    delivery.dlq.close()
    if isinstance(delivery.incidents, DurablePublisher):
        delivery.incidents.event_log.close()


def run_ingest_file(
    settings: Settings,
    policy: Policy,
    path: Path,
    file_format: str,
    *,
    mapping_path: Path | None = None,
    restart: bool = False,
    progress: bool = True,
    err: IO[str] | None = None,
) -> int:
    """Load one file; exit code 0 (done, even with dead letters), 1 (stopped), 2 (refused)."""
    err = err if err is not None else sys.stderr
    if not path.is_file():
        print(f"asvat ingest-file: {path}: no such file", file=err)
        return 2
    try:
        mapping = CsvMapping.load(mapping_path) if mapping_path is not None else None
        network = (
            BusNetwork.load(settings.bus_network_geojson) if file_format == "bus-feedback" else None
        )
        submission = _submission(settings, policy)
    except (MappingError, NetworkError, HmacKeyError) as exc:
        print(f"asvat ingest-file: {exc}", file=err)
        return 2
    delivery = _delivery(settings)
    try:
        report = ingest_file(
            path,
            file_format,
            submission=submission,
            delivery=delivery,
            data_dir=settings.data_path,
            mapping=mapping,
            network=network,
            restart=restart,
            progress=progress,
            err=err,
        )
    except FileFormatError as exc:
        print(f"asvat ingest-file: {path}: {exc}; nothing was published", file=err)
        return 2
    except (BrokerUnavailable, BrokerUnreachableError) as exc:
        print(
            f"asvat ingest-file: {exc}\nstopped; the checkpoint holds the last acknowledged "
            "batch: run the same command again to resume",
            file=err,
        )
        return 1
    except KeyboardInterrupt:
        print(
            "asvat ingest-file: interrupted; run the same command again to resume after the "
            "last acknowledged batch",
            file=err,
        )
        return 130
    finally:
        _close(delivery)
    for line in report.problems[:20]:
        print(line, file=err)
    if len(report.problems) > 20:
        print(f"... and {len(report.problems) - 20} more (asvat dlq list)", file=err)
    print(report.summary(), file=err)
    return 0


def run_dlq_list(settings: Settings, out: IO[str] | None = None) -> int:
    out = out if out is not None else sys.stdout
    found = outstanding(read_messages(settings.bootstrap, TOPIC_DLQ))
    print(format_counts(found), file=out)
    return 0


def run_dlq_replay(
    settings: Settings,
    policy: Policy,
    *,
    reason: str | None = None,
    source: str | None = None,
    out: IO[str] | None = None,
) -> int:
    """Re-submit the outstanding dead letters (those matching ``reason`` and ``source``)."""
    out = out if out is not None else sys.stdout
    ensure_topics(settings.bootstrap, settings.topic_partitions, [TOPIC_INCIDENTS, TOPIC_DLQ])
    found = outstanding(read_messages(settings.bootstrap, TOPIC_DLQ))
    chosen = [
        letter
        for letter in found.letters
        if (reason is None or letter.get("reason") == reason)
        and (source is None or letter.get("source") == source)
    ]
    if not chosen:
        print("no outstanding dead letters match; nothing to replay", file=out)
        return 0
    network = BusNetwork.load(settings.bus_network_geojson)
    delivery = _delivery(settings)
    try:
        report = replay(
            chosen,
            submission=_submission(settings, policy),
            delivery=delivery,
            bus=network.to_incident,
        )
    except BrokerUnavailable as exc:
        print(f"asvat dlq replay: {exc}; run it again (safe: ids are deterministic)", file=out)
        return 1
    finally:
        _close(delivery)
    print(report.summary(), file=out)
    return 0
