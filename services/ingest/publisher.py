"""Publishing pseudonymised incident events to Kafka, all-or-report.

:class:`KafkaPublisher` sends every record of a request, then waits for every broker
acknowledgement (``acks=all``) within the publish timeout. Any failure raises
:class:`BrokerUnavailable`; the caller then answers 503 and the client re-sends the whole
request, which is safe because consumers ignore an ``event_id`` they have seen.

Choices forced by the embedded broker (Tansu, memory-only):

* ``enable_idempotence=False``: after a Tansu restart an idempotent producer's id is
  unknown to the broker and every later send fails (``UnknownProducerIdError``) until the
  producer is replaced. Duplicates from a retried send are harmless (consumers deduplicate
  by ``event_id``), and a partition has one request in flight at a time, so a retried batch
  cannot overtake the next one.
* The producer is created lazily, by the first publish, and replaced after any failure, so
  that a broker that is away neither stops the service from starting nor leaves it with a
  producer whose state the restarted broker no longer knows.
* Topics are (re)created before the first send and after any failure: a restarted Tansu has
  forgotten them, and an auto-created topic would get the broker's default partition count
  instead of ``ASVAT_TOPIC_PARTITIONS``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from asvat.embedded.broker import (
    BrokerUnreachableError,
    ensure_all_topics,
    ensure_topics,
    parse_bootstrap,
    ping_broker,
)
from asvat.record_batches import send_batches
from asvat.settings import TOPIC_EPOCH, TOPIC_INCIDENTS
from services.ingest.event_log import EventLog, LoggedEvent

log = logging.getLogger(__name__)

LINGER_MS = 5
#: Largest record batch the producer builds (a request's records of one partition may take
#: several).
MAX_BATCH_BYTES = 1024 * 1024


class BrokerUnavailable(RuntimeError):
    """The broker did not acknowledge every record in time: assume none was accepted."""


class Publisher(Protocol):
    """Where ingest sends pseudonymised records: ``(key, value)`` pairs, all or an error."""

    def publish(self, records: Sequence[tuple[str, bytes]]) -> None:
        """Return once every record is acknowledged; else raise :class:`BrokerUnavailable`."""
        ...

    def check_ready(self, timeout: float) -> None:
        """Return if the broker answers within ``timeout`` s, else raise BrokerUnavailable."""
        ...

    def close(self) -> None:
        """Release connections (pending records may be dropped)."""
        ...


class KafkaPublisher:
    """:class:`Publisher` on an aiokafka producer (``acks=all``) with a synchronous face.

    The producer runs on an event loop of its own, in a daemon thread started by the first
    publish; :meth:`publish` hands it a request's records and waits. Each request's records
    go as record batches per partition (:func:`~asvat.record_batches.send_batches`: the
    partitions ``producer.send`` would choose, in order), not one ``send`` per record:
    kafka-python's producer, used before, spent about 100 µs of CPU per record, the batch
    API about 12. After any failure the producer is discarded and the next publish starts
    a new one (a restarted embedded broker can leave a producer's state stale).
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        topic: str = TOPIC_INCIDENTS,
        partitions: int = 4,
        timeout: float = 10.0,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.timeout = timeout
        self._servers = [f"{host}:{port}" for host, port in parse_bootstrap(bootstrap)]
        self._lock = threading.Lock()
        self._topic_checked = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._producer: AIOKafkaProducer | None = None  # used on the loop only
        self._producer_lock: asyncio.Lock | None = None

    # ------------------------------------------------------------------ Publisher

    def publish(self, records: Sequence[tuple[str, bytes]]) -> None:
        if not records:
            return
        deadline = time.monotonic() + self.timeout
        try:
            self._prepare(deadline)
            sent = asyncio.run_coroutine_threadsafe(self._send(records, deadline), self._loop_())
            try:
                sent.result(timeout=max(0.001, deadline - time.monotonic()) + 1.0)
            except concurrent.futures.TimeoutError:
                sent.cancel()
                raise TimeoutError(f"no acknowledgement within {self.timeout:g} s") from None
        except (KafkaError, BrokerUnreachableError, OSError, TimeoutError) as exc:
            self._topic_checked = False
            self._discard_producer()
            raise BrokerUnavailable(
                f"the Kafka broker at {self.bootstrap} did not acknowledge all "
                f"{len(records)} record(s) on {self.topic} within {self.timeout:g} s "
                f"({type(exc).__name__}: {exc})"
            ) from exc

    def check_ready(self, timeout: float) -> None:
        try:
            ping_broker(self.bootstrap, timeout=timeout)
        except BrokerUnreachableError as exc:
            raise BrokerUnavailable(str(exc)) from exc

    def close(self) -> None:
        """Stop the producer (records not yet acknowledged are dropped) and its thread."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        failed = self._stop_producer_on(loop, 2.0)
        if failed is not None:
            log.warning("Kafka producer closed with unacknowledged records (dropped): %s", failed)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5.0)

    # ------------------------------------------------------------------ internals

    def _prepare(self, deadline: float) -> None:
        """The topic ensured (before the first send and after any failure)."""
        with self._lock:
            if not self._topic_checked:
                # Probe first: a client spends its whole timeout on a dead broker.
                ping_broker(self.bootstrap, timeout=max(0.1, min(2.0, deadline - time.monotonic())))
                ensure_topics(self.bootstrap, self.partitions, [self.topic])
                self._topic_checked = True

    def _loop_(self) -> asyncio.AbstractEventLoop:
        """The producer's event loop, started in its thread when first needed."""
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name=f"asvat-publisher-{self.topic}", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    async def _send(self, records: Sequence[tuple[str, bytes]], deadline: float) -> None:
        producer = await asyncio.wait_for(self._started_producer(), _remaining(deadline))
        batch = [(self.topic, key, value) for key, value in records]
        await asyncio.wait_for(send_batches(producer, batch), _remaining(deadline))

    async def _started_producer(self) -> AIOKafkaProducer:
        if self._producer_lock is None:
            self._producer_lock = asyncio.Lock()
        async with self._producer_lock:
            if self._producer is None:
                timeout_ms = int(self.timeout * 1000)
                producer = AIOKafkaProducer(
                    bootstrap_servers=self._servers,
                    client_id="asvat-ingest",
                    acks="all",
                    linger_ms=LINGER_MS,
                    enable_idempotence=False,
                    request_timeout_ms=timeout_ms,
                    retry_backoff_ms=100,
                    max_batch_size=MAX_BATCH_BYTES,
                )
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    def _discard_producer(self) -> None:
        """Stop the producer (after a failure); the next publish starts a new one."""
        loop = self._loop
        if loop is None:
            return
        failed = self._stop_producer_on(loop, 5.0)
        if failed is not None:
            log.info("the failed producer did not stop cleanly: %s", failed)

    def _stop_producer_on(
        self, loop: asyncio.AbstractEventLoop, timeout: float
    ) -> Exception | None:
        """Stop the producer on its loop, waiting at most about ``2 × timeout``; the error if
        it did not stop cleanly."""
        stopped = asyncio.run_coroutine_threadsafe(self._stop_producer(timeout), loop)
        try:
            stopped.result(timeout=2 * timeout)
        except (concurrent.futures.TimeoutError, KafkaError, OSError) as exc:
            return exc
        return None

    async def _stop_producer(self, timeout: float) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await asyncio.wait_for(producer.stop(), timeout)
            except TimeoutError:
                log.info("Kafka producer did not stop within %g s", timeout)


def _remaining(deadline: float) -> float:
    return max(0.001, deadline - time.monotonic())


class DurablePublisher:
    """:class:`Publisher` that appends to the durable event log before publishing.

    A record is acknowledged (the call returns) only once it is both in the log and
    acknowledged by the broker. If the broker fails, the records this call added to the log
    are removed again and :class:`BrokerUnavailable` is raised (the client is told 503 and
    re-sends), so the log never holds an event its client was told was refused.
    """

    def __init__(self, inner: KafkaPublisher, event_log: EventLog) -> None:
        self.inner = inner
        self.event_log = event_log

    def publish(self, records: Sequence[tuple[str, bytes]]) -> None:
        if not records:
            return
        logged = [LoggedEvent(_event_id_of(value), key, value) for key, value in records]
        added = self.event_log.append(logged)
        try:
            self.inner.publish(records)
        except BrokerUnavailable:
            self.event_log.remove(added)
            raise

    def check_ready(self, timeout: float) -> None:
        self.inner.check_ready(timeout)

    def close(self) -> None:
        self.inner.close()


def _event_id_of(value: bytes) -> str:
    event_id = json.loads(value).get("event_id")
    if not isinstance(event_id, str) or not event_id:
        raise ValueError("a pseudonymised incident event without an event_id")
    return event_id


class Republisher:
    """Publishes the durable log again whenever the broker has lost it.

    Every ``interval`` s it reads the broker's epoch topic (``asvat.epoch.v1``, one
    partition). An empty or missing epoch topic means the broker has not got the log since
    it (re)started — the embedded broker keeps nothing across a restart — so the topics are
    created, the whole log is published again in the order it was accepted, and then an
    epoch record (a new id, how many events, when) is written. Workers that see a new epoch
    read the incidents topic again from the start (see ``replica.py``). Several ingest
    processes may each do it: consumers ignore events they have seen.
    """

    def __init__(
        self,
        bootstrap: str,
        event_log: EventLog,
        publisher: KafkaPublisher,
        *,
        partitions: int,
        interval: float = 2.0,
        batch: int = 2000,
        retention_s: float | None = None,
        purge_every_s: float = 86_400.0,
    ) -> None:
        self.bootstrap = bootstrap
        self.event_log = event_log
        self.publisher = publisher
        self.partitions = partitions
        self.interval = interval
        self.batch = batch
        self.retention_s = retention_s
        self.purge_every_s = purge_every_s
        self._last_purge = 0.0
        self.purged_total = 0
        self.republished_total = 0
        self.epochs_written = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="asvat-republisher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.purge_if_due()
                self.check_once()
            except (BrokerUnavailable, BrokerUnreachableError, OSError) as exc:
                log.info("republisher: broker not available (%s)", exc)
            except Exception:
                log.exception("republisher: check failed; trying again")
            self._stop.wait(self.interval)

    def purge_if_due(self, now: float | None = None) -> int:
        """Delete events accepted more than ``retention_s`` ago, at most once per
        ``purge_every_s`` (the policy's ``retention.incidents`` and ``retention.every``)."""
        now = time.time() if now is None else now
        if self.retention_s is None or now - self._last_purge < self.purge_every_s:
            return 0
        self._last_purge = now
        removed = self.event_log.purge_accepted_before(now - self.retention_s)
        self.purged_total += removed
        log.info(
            "retention: removed %d events accepted more than %.0f days ago from the durable "
            "event log", removed, self.retention_s / 86_400,
        )
        return removed

    def check_once(self) -> int | None:
        """Republish if the broker has no epoch; returns how many events were republished
        (None when the broker already had the log)."""
        ping_broker(self.bootstrap, timeout=2.0)
        if read_epoch(self.bootstrap) is not None:
            return None
        ensure_all_topics(self.bootstrap, self.partitions)
        count = 0
        for chunk in self.event_log.read(self.batch):
            self.publisher.publish([(e.key, e.value) for e in chunk])
            count += len(chunk)
            if self._stop.is_set():
                return count
        epoch = {
            "epoch": uuid.uuid4().hex,
            "republished": count,
            "at": time.time(),
            "by": socket.gethostname(),
        }
        write_epoch(self.bootstrap, epoch)
        self.republished_total += count
        self.epochs_written += 1
        log.log(
            logging.WARNING if count else logging.INFO,
            "the broker had no epoch: republished %d events from the durable log (epoch %s)",
            count, epoch["epoch"],
        )
        return count


def read_epoch(bootstrap: str) -> dict[str, Any] | None:
    """The newest epoch record on the broker, or None if there is none (or no topic)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=[f"{h}:{p}" for h, p in parse_bootstrap(bootstrap)],
        client_id="asvat-epoch-reader",
        group_id=None,
        enable_auto_commit=False,
        request_timeout_ms=10_000,
    )
    try:
        if not consumer.partitions_for_topic(TOPIC_EPOCH):
            return None
        tp = TopicPartition(TOPIC_EPOCH, 0)
        consumer.assign([tp])
        end = consumer.end_offsets([tp])[tp]
        if end <= 0:
            return None
        consumer.seek(tp, max(0, end - 1))
        found: dict[str, Any] | None = None
        deadline = time.monotonic() + 5.0
        while found is None and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    found = json.loads(record.value)
        if found is None:
            raise BrokerUnavailable(f"{TOPIC_EPOCH} has records but none could be read")
        return found
    finally:
        consumer.close()


def write_epoch(bootstrap: str, epoch: dict[str, Any]) -> None:
    publisher = KafkaPublisher(bootstrap, topic=TOPIC_EPOCH, partitions=1)
    try:
        publisher.publish([("epoch", json.dumps(epoch).encode())])
    finally:
        publisher.close()
