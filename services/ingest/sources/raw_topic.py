"""The Kafka source: raw incident events from ``asvat.raw.v1``, through the ingest path.

Upstream command-and-control integrations publish one incident.v1 event (JSON, with the
raw ``caller``) per message. Ingest reads them as consumer group
``ASVAT_INGEST_RAW_CONSUMER_GROUP``, validates and pseudonymises each exactly as ``POST
/v1/incidents`` does, publishes the valid ones to ``asvat.incidents.v1`` (key
``incident_id``) and each rejected one to ``asvat.incidents.dlq.v1``; only once the broker
has acknowledged both does it commit the batch's offsets. If publishing fails it rewinds
to the batch and tries again after a pause: at least once, and duplicates are harmless
downstream (same ``event_id``).

The loop runs in a thread of the ingest process with its own asyncio event loop
(:class:`RawTopicSource`), started by ``asvat ingest`` when
``ASVAT_INGEST_RAW_CONSUMER`` is true (the default).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from asvat.contracts import refuse_json_constant
from asvat.domain.timeutil import now_micros
from asvat.embedded.broker import ensure_topics, group_consumer
from services.ingest.dead_letters import Delivery, Origin, dead_letter
from services.ingest.publisher import BrokerUnavailable
from services.ingest.submission import Rejected, SourceError, Submission

log = logging.getLogger("asvat.ingest.raw")

SOURCE = "kafka"
MAX_BATCH = 500
POLL_TIMEOUT_MS = 500
RETRY_PAUSE_S = 2.0


def handle_batch(
    records: Sequence[Any], *, topic_of: Any = None, submission: Submission, delivery: Delivery
) -> tuple[int, int]:
    """Validate, pseudonymise and deliver one batch of consumer records.

    Returns ``(published, dead letters)``; raises BrokerUnavailable when either output was
    not acknowledged (then nothing may be committed).
    """
    now = now_micros()
    decoded: list[tuple[Any, Any]] = []
    letters: list[dict[str, Any]] = []
    for message in records:
        origin = Origin(topic=message.topic, partition=message.partition, offset=message.offset)
        try:
            value = json.loads(message.value, parse_constant=refuse_json_constant)
        except (ValueError, TypeError) as exc:
            problem = SourceError(
                "(message)", f"expected a JSON incident event ({exc})", "not_json"
            )
            rejected = Rejected(None, (problem,))
            letters.append(
                dead_letter(
                    rejected, source=SOURCE, origin=origin, keys=submission.keys, now_us=now
                )
            )
            continue
        decoded.append((origin, value))
    accepted = []
    for origin, value in decoded:
        good, bad = submission.submit([value], now_us=now)
        accepted += good
        for rejected in bad:
            letters.append(
                dead_letter(
                    rejected, source=SOURCE, origin=origin, keys=submission.keys, now_us=now
                )
            )
    delivery.deliver(SOURCE, accepted, letters)
    return len(accepted), len(letters)


class RawTopicSource:
    """Consumes ``topic`` in a background thread until :meth:`stop`."""

    def __init__(
        self,
        bootstrap: str,
        *,
        topic: str,
        group_id: str,
        submission: Submission,
        delivery: Delivery,
        partitions: int = 4,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.group_id = group_id
        self.submission = submission
        self.delivery = delivery
        self.partitions = partitions
        self.published = 0
        self.dead_letters = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="asvat-ingest-raw", daemon=True)
        self._thread.start()
        self._started.wait(5.0)

    def stop(self, timeout: float = 10.0) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    async def _main(self) -> None:
        from aiokafka.errors import KafkaError

        self._stopping = asyncio.Event()
        self._started.set()
        while not self._stopping.is_set():
            consumer = None
            try:
                await asyncio.to_thread(
                    ensure_topics, self.bootstrap, self.partitions, [self.topic]
                )
                consumer = group_consumer(
                    self.topic,
                    bootstrap=self.bootstrap,
                    group_id=self.group_id,
                    max_poll_interval_ms=120_000,
                )
                await consumer.start()
                log.info(
                    "reading raw incident events from %s as group %s", self.topic, self.group_id
                )
                await self._consume(consumer)
            except (KafkaError, OSError, RuntimeError) as exc:
                log.warning(
                    "raw source: Kafka at %s unavailable (%s); retrying", self.bootstrap, exc
                )
                await self._pause(RETRY_PAUSE_S)
            except Exception:
                log.exception("raw source loop failed; restarting")
                await self._pause(RETRY_PAUSE_S)
            finally:
                if consumer is not None:
                    with contextlib.suppress(Exception):
                        await consumer.stop()

    async def _consume(self, consumer: Any) -> None:
        assert self._stopping is not None
        while not self._stopping.is_set():
            batches: Mapping[Any, Sequence[Any]] = await consumer.getmany(
                timeout_ms=POLL_TIMEOUT_MS, max_records=MAX_BATCH
            )
            if not batches:
                continue
            records = [r for tp in sorted(batches, key=lambda t: t.partition) for r in batches[tp]]
            try:
                published, letters = await asyncio.to_thread(
                    handle_batch, records, submission=self.submission, delivery=self.delivery
                )
            except BrokerUnavailable as exc:
                log.warning("raw source: output not acknowledged (%s); batch will be retried", exc)
                for tp, batch in batches.items():
                    consumer.seek(tp, batch[0].offset)
                await self._pause(RETRY_PAUSE_S)
                continue
            self.published += published
            self.dead_letters += letters
            offsets = {tp: batch[-1].offset + 1 for tp, batch in batches.items()}
            await consumer.commit(offsets)
            log.info("raw source: %d published, %d dead letters", published, letters)

    async def _pause(self, seconds: float) -> None:
        assert self._stopping is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
