"""The worker's replica of the detection state, and what it publishes.

Why a replica: a repeat is a relation between incidents of one victim or one place, and an
incident's risk (hence its victim's escalation) depends on both at once. Partitioning the
state by incident would split a victim's incidents across workers (two workers would each
see part of a repeat and miss it); partitioning by subject would need a chain of re-keying
stages and a join. The whole state of a force is small (under 1 KiB per retained incident:
``bench/engine.py``), so every worker keeps all of it:

* **State**: a plain consumer (no group) reads *every* partition of ``asvat.incidents.v1``
  from the beginning into one :class:`~asvat.domain.detector.Detector`. The topic — backed
  by ingest's durable event log, which republishes what a restarted embedded broker lost —
  is the source of truth, so a restart, a rebalance or a lost broker is recovered by
  reading it again; nothing is restored from changelogs. A checkpoint (``checkpoint.py``)
  shortens that read: a restart starts from the state and offsets it holds, when they fit
  this policy, code, topic and broker epoch.
* **Publishing**: the consumer group on the same topic (the faust agent in ``app.py``)
  decides which partitions this worker *owns*; it publishes only the outputs whose keys
  belong to them (``ownership.py``). Two workers therefore share the publishing, and each
  output is published by one of them.
* **Taking over**: whenever this worker starts owning partitions — its first assignment
  after start, a rebalance, or a broker that lost its topics — it publishes a *snapshot* of
  what those partitions own (``Detector.snapshot``) once it has caught up with the topic.
  Whatever the previous owner had not published (it died, it lost ownership mid-batch) is
  then published; what it had published comes again with the same deterministic id and
  consumers ignore it.
* **Order**: outputs are flushed (acknowledged by the broker) before the positions they
  came from count as applied; the agent lets faust commit an offset only once it is
  applied, so the group's committed offsets and lag mean "published".
* **Sending**: a batch's outputs go to the broker as one record batch per topic partition
  (aiokafka's batch API), each record on the partition Kafka's default partitioner gives its
  key (murmur2, as ``producer.send`` would: ``asvat/record_batches.py``), in the order
  decided. One INFO line per batch says how many records of each kind were published; the
  line per escalation is DEBUG.

Time: an escalation raised by an event counts its deadlines from when ingest accepted the
event (``ingested_at``), so every replica computes the same escalation, however late it
reads the event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, OffsetOutOfRangeError

from asvat.contracts import decode_incidents, dumps_json
from asvat.domain.checkpoint import FORMAT, policy_digest
from asvat.domain.detector import Detector, DetectorOutcome
from asvat.domain.incident import IncidentEvent
from asvat.domain.policy import Policy
from asvat.domain.timeutil import format_timestamp, now_micros, parse_timestamp
from asvat.embedded.broker import ensure_all_topics, parse_bootstrap
from asvat.record_batches import Record, send_batches
from asvat.settings import (
    TOPIC_ASSESSMENTS,
    TOPIC_CASE_REVIEWS,
    TOPIC_COMMANDS,
    TOPIC_EPOCH,
    TOPIC_ESCALATIONS,
    TOPIC_INCIDENTS,
    TOPIC_INTEGRITY,
    TOPIC_LATE,
    TOPIC_REVIEWS,
    Settings,
)
from services.repeat_detector.checkpoint import (
    CheckpointStore,
    CheckpointWriter,
    code_digest,
    restore,
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
from services.repeat_detector.ownership import Ownership

log = logging.getLogger("asvat.worker")

#: Records read per poll, and the longest wait for them.
BATCH_SIZE = 2000
POLL_MS = 200
#: Seconds between retries while the broker does not take the outputs.
RETRY_S = 1.0
#: While reading a backlog, how far (µs of acceptance time) a partition may run ahead of the
#: slowest one that still has records to read (see ``Replica._apply_bound``).
IN_STEP_US = 3_600 * 1_000_000
#: Records per send when publishing a snapshot (see ``Replica._publish_snapshot``).
SNAPSHOT_CHUNK = 5000
#: Longest wait for the broker to acknowledge one batch of outputs before starting over.
PUBLISH_TIMEOUT_S = 30.0
#: Longest a stopping worker waits for its final checkpoint (2,000,000 events' state took
#: 18 s to write, bench/pipeline.py --rebuild-only); within Kubernetes' grace period.
FINAL_CHECKPOINT_S = 45.0
#: Longest a stopping worker lets the step in hand finish (publish what it decided).
STEP_FINISH_S = 15.0

#: What the per-batch log line calls the records of each topic, in its order.
TOPIC_NOUNS = {
    TOPIC_ASSESSMENTS: "assessments",
    TOPIC_ESCALATIONS: "escalations",
    TOPIC_CASE_REVIEWS: "case reviews",
    TOPIC_INTEGRITY: "integrity findings",
    TOPIC_REVIEWS: "reviews",
    TOPIC_LATE: "late or rejected events",
}


Decoded = tuple[dict[str, Any], IncidentEvent] | Exception


def _acceptance(decoded: Decoded) -> tuple[int, int | None, Decoded]:
    """``(sort key, ingested_at, decoded)`` of one message, parsing ``ingested_at`` once.

    The sort key is when ingest accepted the event (``ingested_at``, else its
    ``reported_at``); an unreadable message sorts first. A malformed ``ingested_at`` makes
    the message unreadable (its exception replaces it).
    """
    if isinstance(decoded, Exception):
        return -1, None, decoded
    data, event = decoded
    ingested = data.get("ingested_at")
    if not isinstance(ingested, str):
        return event.reported_at, None, decoded
    try:
        at = parse_timestamp(ingested)
    except ValueError as exc:
        return -1, None, exc
    return at, at, decoded


@dataclass(frozen=True)
class _Snapshot:
    """What a worker publishes on taking partitions over: which (for the log), the
    ownership test, the detector's snapshot, and late events kept while rebuilding."""

    label: str
    owns: Callable[[str], bool]
    outcome: DetectorOutcome
    late: list[tuple[str, bytes]]


def _chunks(outcome: DetectorOutcome, size: int) -> Iterator[DetectorOutcome]:
    """``outcome``'s items, in the order they are published, as outcomes of at most
    ``size`` items each."""
    for kind in ("assessments", "escalations", "case_reviews", "integrity"):
        items = getattr(outcome, kind)
        for start in range(0, len(items), size):
            yield DetectorOutcome(**{kind: items[start : start + size]})


@dataclass
class _Pending:
    """Outputs decided but not yet acknowledged, the positions they advance, and what the
    metrics count once they are published (counted per batch, not per record)."""

    records: list[Record] = field(default_factory=list)
    positions: dict[int, int] = field(default_factory=dict)
    #: Wall-clock time the batch's outputs are issued (µs): one for the whole batch.
    now: int = field(default_factory=now_micros)
    #: ``asvat_worker_events_processed_total`` by result.
    events: Counter[str] = field(default_factory=Counter)
    #: ``asvat_worker_assessments_issued_total`` / ``…escalations_raised_total`` by (level, rule).
    assessments: Counter[tuple[str, str]] = field(default_factory=Counter)
    escalations: Counter[tuple[str, str]] = field(default_factory=Counter)


def published_summary(records: Iterable[Record]) -> str:
    """``published N records: A assessments, E escalations, …`` (kinds in
    :data:`TOPIC_NOUNS` order, those with none left out). Counts only: no ids."""
    by_topic = Counter(map(itemgetter(0), records))
    total = sum(by_topic.values())
    kinds = [f"{by_topic.pop(topic)} {noun}" for topic, noun in TOPIC_NOUNS.items()
             if topic in by_topic]
    kinds += [f"{count} on {topic}" for topic, count in sorted(by_topic.items())]
    return f"published {total} record{'' if total == 1 else 's'}: {', '.join(kinds)}"


class Replica:
    """Reads every partition into one detector; publishes what this worker owns."""

    def __init__(
        self,
        settings: Settings,
        policy: Policy,
        metrics: WorkerMetrics,
        *,
        client_id: str = "asvat-worker",
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.client_id = client_id
        self.policy = policy
        self.detector = Detector(policy)
        #: The checkpoint store and its writer (None: ASVAT_WORKER_CHECKPOINT_SECONDS=0).
        self._checkpoints: CheckpointWriter | None = (
            CheckpointWriter(CheckpointStore(settings.resolved_checkpoint_dir))
            if settings.worker_checkpoint_seconds > 0
            else None
        )
        self._policy_digest = policy_digest(policy)
        self._code_digest = code_digest()
        self._next_checkpoint = float("inf")  # monotonic time; set once caught up
        self._changed = False  # state changed since the last checkpoint started
        #: The meta of the checkpoint this worker started from, and of the last it wrote.
        self.restored: dict[str, Any] | None = None
        self.last_checkpoint: dict[str, Any] | None = None
        #: True from loading a checkpoint until caught up: a broker epoch the checkpoint
        #: does not know means its offsets are of a broker since lost.
        self._from_checkpoint = False
        #: Held while review notices are decided and published (no checkpoint meanwhile:
        #: it would hold them as announced before they are).
        self._output_lock = asyncio.Lock()
        self.ownership = Ownership(settings.topic_partitions)
        #: False until the first assignment (nothing is published before it).
        self.assigned = False
        #: "rebuilding" until caught up with the topic once, then "live".
        self.phase = "rebuilding"
        #: Partitions whose snapshot is still to be published (None: all owned).
        self._snapshot_due: set[int] | None = None
        self._resnapshot_all = True
        #: Next offset applied *and* published, per partition of the incidents topic.
        self.applied: dict[int, int] = {}
        #: End offsets seen by the last check, per partition.
        self.end_offsets: dict[int, int] = {}
        self._catch_up_to: dict[int, int] | None = None
        self.last_progress = time.time()
        self.snapshots = 0
        self.broker_resets = 0
        self._late_while_rebuilding: list[tuple[str, bytes]] = []
        self._applied_changed = asyncio.Condition()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._partitions: list[TopicPartition] = []
        self._epoch_tp = TopicPartition(TOPIC_EPOCH, 0)
        self._command_tps: list[TopicPartition] = []
        #: Per partition: the acceptance time (µs) of the newest event read from it, the
        #: next offset to fetch, and the events read but held back (see ``_apply_bound``).
        self._read_up_to: dict[int, int] = {}
        self._fetched: dict[int, int] = {}
        #: (accepted, offset, decoded, ingested_at) per partition.
        self._held: dict[int, list[tuple[int, int, Decoded, int | None]]] = {}
        self._epochs: set[str] = set()
        #: End of the epoch topic when catching up began, and the next epoch offset to read.
        self._epoch_end = 0
        self._epoch_next = 0
        self._stopping = False
        #: True while the snapshot of partitions taken over is being published (/readyz).
        self.snapshot_in_flight = False
        #: True between steps: every event applied has its outputs published, so the state
        #: and ``applied`` agree (a stop that interrupts a step leaves it False).
        self._settled = True

    # -- ownership (called by the faust app's rebalance signals) ----------------------------

    def assign(self, partitions: Iterable[int]) -> None:
        """The group gave this worker ``partitions``; snapshot the ones that are new."""
        new = frozenset(partitions)
        added = new - self.ownership.owned
        self.ownership.owned = new
        if not self.assigned:
            self.assigned = True
            self._resnapshot_all = True
        elif added:
            due = self._snapshot_due if self._snapshot_due is not None else set()
            self._snapshot_due = due | set(added)
        log.info("owning partitions %s of %s (new: %s)", sorted(new), TOPIC_INCIDENTS,
                 sorted(added))

    def revoke(self, partitions: Iterable[int]) -> None:
        """The group took ``partitions`` away: stop publishing their outputs at once."""
        self.ownership.owned = self.ownership.owned - frozenset(partitions)

    async def flush(self) -> None:
        """Wait for every output handed to the producer (before giving partitions up)."""
        if self._producer is not None:
            await self._producer.flush()

    # -- progress ---------------------------------------------------------------------------

    @property
    def caught_up(self) -> bool:
        return self.phase == "live"

    @property
    def publishing(self) -> bool:
        """Caught up and owning partitions: outputs are published, not only applied."""
        return self.phase == "live" and self.assigned

    def lag(self) -> dict[int, int]:
        """Per partition: end offset last seen minus the next offset applied."""
        return {
            p: max(0, end - self.applied.get(p, 0)) for p, end in sorted(self.end_offsets.items())
        }

    async def wait_applied(self, partition: int, offset: int, timeout: float) -> bool:
        """Wait until the record at ``offset`` of ``partition`` is applied and published."""
        async with self._applied_changed:
            try:
                await asyncio.wait_for(
                    self._applied_changed.wait_for(
                        lambda: self.applied.get(partition, 0) > offset or self._stopping
                    ),
                    timeout,
                )
            except TimeoutError:
                return False
        return True

    # -- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Read, apply and publish until :meth:`stop`."""
        servers = [f"{h}:{p}" for h, p in parse_bootstrap(self.settings.bootstrap)]
        await asyncio.to_thread(self._ensure_topics)
        self._producer = self._new_producer()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=servers,
            client_id=f"{self.client_id}-replica",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="none",
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=16 * 1024 * 1024,
            # The embedded broker answers a waiting fetch only when the wait ends, not when
            # records arrive: aiokafka's 500 ms default was a floor on every alert's latency.
            fetch_max_wait_ms=20,
        )
        await self._producer.start()
        await self._consumer.start()
        try:
            await self._assign_all()
            while not self._stopping:
                await self._step_to_its_end()
        finally:
            await self._consumer.stop()
            await self._producer.stop()
            await self._final_checkpoint()

    def stop(self) -> None:
        self._stopping = True

    async def _step_to_its_end(self) -> None:
        """One step. Cancelled meanwhile (the worker is stopping: faust cancels its tasks),
        the step still finishes, up to :data:`STEP_FINISH_S`, so that what it decided is
        published and the final checkpoint can hold it; a step that cannot finish in time
        (the broker does not answer) is cancelled, and no final checkpoint is written."""
        step = asyncio.ensure_future(self._step())
        try:
            await asyncio.shield(step)
        except asyncio.CancelledError:
            if not step.done():
                log.info("stopping: finishing the batch in hand (up to %.0f s)", STEP_FINISH_S)
                await asyncio.wait({step}, timeout=STEP_FINISH_S)
            if not step.done():
                step.cancel()
            (result,) = await asyncio.gather(step, return_exceptions=True)
            if isinstance(result, Exception):
                log.error("the batch in hand failed while stopping: %s", result)
            raise

    def _ensure_topics(self) -> None:
        ensure_all_topics(self.settings.bootstrap, self.settings.topic_partitions)

    async def _assign_all(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        partitions = None
        while not partitions:
            partitions = consumer.partitions_for_topic(TOPIC_INCIDENTS)
            if not partitions:
                await consumer.topics()  # refreshes the cluster metadata
                partitions = consumer.partitions_for_topic(TOPIC_INCIDENTS)
            if not partitions:
                await asyncio.sleep(0.5)
        if len(partitions) != self.ownership.partitions:
            log.warning(
                "%s has %d partitions, ASVAT_TOPIC_PARTITIONS says %d: owning by the topic's",
                TOPIC_INCIDENTS, len(partitions), self.ownership.partitions,
            )
            self.ownership = Ownership(len(partitions), self.ownership.owned)
        self._partitions = [TopicPartition(TOPIC_INCIDENTS, p) for p in sorted(partitions)]
        commands = consumer.partitions_for_topic(TOPIC_COMMANDS) or {0}
        self._command_tps = [TopicPartition(TOPIC_COMMANDS, p) for p in sorted(commands)]
        consumer.assign([*self._partitions, self._epoch_tp, *self._command_tps])
        await consumer.seek_to_beginning(*self._partitions, self._epoch_tp, *self._command_tps)
        if self._checkpoints is not None:
            await self._restore(len(partitions))
        await self._start_catching_up()

    async def _restore(self, partitions: int) -> None:
        """Start from the last checkpoint, if there is a usable one: its state, and each
        partition from the offset it had reached (commands are read from the start: applying
        one twice changes nothing)."""
        assert self._consumer is not None and self._checkpoints is not None
        found = await asyncio.to_thread(
            restore, self._checkpoints.store, self.policy, partitions
        )
        if found is None:
            return
        detector, checkpoint = found
        self.detector = detector
        self._epochs = checkpoint.epochs
        self._from_checkpoint = True
        self.restored = {k: checkpoint.meta.get(k) for k in (
            "written_at", "offsets", "epochs", "retained_incidents", "size")}
        offsets = {p: o for p, o in checkpoint.offsets.items() if p < partitions}
        for partition, offset in offsets.items():
            self._consumer.seek(TopicPartition(TOPIC_INCIDENTS, partition), offset)
            self._fetched[partition] = offset
        async with self._applied_changed:
            self.applied = offsets
            self._applied_changed.notify_all()

    async def _start_catching_up(self) -> None:
        """Note the end offsets now: the replica is caught up once it has read that far
        (the epoch topic included: a checkpoint's offsets hold only on its broker epoch)."""
        self._catch_up_to = await self._end_offsets()
        consumer = self._consumer
        assert consumer is not None
        start = (await consumer.beginning_offsets([self._epoch_tp]))[self._epoch_tp]
        end = (await consumer.end_offsets([self._epoch_tp]))[self._epoch_tp]
        # Nothing left to read (Kafka's retention deleted an old epoch record): don't wait.
        self._epoch_end = end if end > start else 0

    async def _end_offsets(self) -> dict[int, int]:
        assert self._consumer is not None
        ends = await self._consumer.end_offsets(self._partitions)
        self.end_offsets = {tp.partition: offset for tp, offset in ends.items()}
        return dict(self.end_offsets)

    async def refresh_end_offsets(self) -> None:
        """For lag and readiness, and to see a new broker epoch; called periodically."""
        if self._consumer is not None and self._partitions:
            try:
                await self._end_offsets()
                await self._read_the_epoch_again()
            except KafkaError as exc:
                log.warning("could not read end offsets of %s: %s", TOPIC_INCIDENTS, exc)

    async def _read_the_epoch_again(self) -> None:
        """Fetch the newest epoch record again (:meth:`_see_epochs` ignores a known one).

        A restarted embedded broker begins every topic at offset 0 again, and this
        consumer's positions are those it reached on the broker before. The new epoch is
        written at offset 0, which the epoch position has already passed, so it would never
        be fetched; and once the broker is refilled, the incidents topic may be no shorter
        than what was read, so no out-of-range error says so either. The replica would then
        go on reading from positions that mean nothing on the new broker, skipping the
        events published there first (seen in tests/e2e/test_faults.py: 139 incidents).
        """
        consumer = self._consumer
        assert consumer is not None
        end = (await consumer.end_offsets([self._epoch_tp]))[self._epoch_tp]
        if end > 0:
            consumer.seek(self._epoch_tp, end - 1)

    async def _step(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        try:
            batches = await consumer.getmany(timeout_ms=POLL_MS, max_records=BATCH_SIZE)
        except OffsetOutOfRangeError as exc:
            await self._broker_lost_records(exc)
            return
        except KafkaError as exc:
            log.warning("reading %s failed (%s); retrying", TOPIC_INCIDENTS, exc)
            await asyncio.sleep(RETRY_S)
            return
        self._settled = False
        pending = _Pending()
        epoch_messages = batches.pop(self._epoch_tp, [])
        new_epochs: list[str] = []
        if epoch_messages:
            self._epoch_next = max(self._epoch_next, epoch_messages[-1].offset + 1)
            new_epochs = self._see_epochs([m.value for m in epoch_messages])
            if new_epochs and self._from_checkpoint:
                # The broker lost its topics since the checkpoint was written: its offsets
                # mean nothing now. Keep the state, read everything again (this batch too).
                self._from_checkpoint = False
                log.warning("new broker epoch %s since the checkpoint: reading %s again from "
                            "the start", new_epochs[-1], TOPIC_INCIDENTS)
                await self._read_again()
                return
        was_live = self.phase == "live"
        for tp in self._command_tps:
            for message in batches.pop(tp, []):
                self._command(message.value, pending)
        # Events of all partitions in the order ingest accepted them: the engine's lateness
        # rule reads a watermark over every partition, and applying one partition's years
        # before another's would set aside, as late, events the live run applied.
        for tp, messages in batches.items():
            held = self._held.setdefault(tp.partition, [])
            for message, result in zip(
                messages, decode_incidents([m.value for m in messages]), strict=True
            ):
                accepted, ingested, result = _acceptance(result)
                held.append((accepted, message.offset, result, ingested))
                if accepted > self._read_up_to.get(tp.partition, -1):
                    self._read_up_to[tp.partition] = accepted
            if messages:
                self._fetched[tp.partition] = messages[-1].offset + 1
        bound = self._apply_bound()
        ready: list[tuple[int, int, int, Decoded, int | None]] = []
        for partition, held in self._held.items():
            cut = 0
            while cut < len(held) and held[cut][0] <= bound:
                cut += 1
            ready.extend((a, partition, o, r, i) for a, o, r, i in held[:cut])
            del held[:cut]
        ready.sort(key=lambda item: item[0])
        positions = pending.positions
        for _accepted, partition, offset, result, ingested in ready:
            self._apply(result, ingested, pending)
            # Each partition's released events are a prefix of what it holds, so all up to
            # its highest offset are applied now. Sorted by acceptance they may come out of
            # offset order (a record published twice, the second time later): the last one
            # applied is not always the highest.
            if offset >= positions.get(partition, 0):
                positions[partition] = offset + 1
        self._throttle_held()
        if self.phase == "rebuilding" and self._is_caught_up(pending.positions):
            self.phase = "live"
            log.info(
                "replica caught up: %d incidents retained, watermark %s",
                self.detector.retained_incidents, self.detector.watermark,
            )
            # A checkpoint at once after a rebuild from the start; after a restore, at the
            # usual interval.
            delay = self.settings.worker_checkpoint_seconds if self._from_checkpoint else 0.0
            self._next_checkpoint = time.monotonic() + delay
            self._from_checkpoint = False
        snapshot = self._take_snapshot() if self.publishing else None
        self.snapshot_in_flight = snapshot is not None
        try:
            await self._publish(pending, snapshot)
        finally:
            self.snapshot_in_flight = False
        if new_epochs and was_live:
            # An ingest republished its durable log to a broker that had lost it: read the
            # incidents topic again from the start (the republished events may sit below
            # the positions already read) and publish a full snapshot once caught up.
            log.warning("new broker epoch %s: reading %s again from the start", new_epochs[-1],
                        TOPIC_INCIDENTS)
            await self._read_again()
        if self._checkpoints is not None:
            self._checkpoint()
        self._settled = True

    def _see_epochs(self, values: list[bytes]) -> list[str]:
        """The epochs named in ``values`` not seen before (now seen). Seen while rebuilding
        from the start, a new epoch changes nothing: everything is being read anyway."""
        new = []
        for value in values:
            try:
                epoch = str(json.loads(value)["epoch"])
            except (ValueError, KeyError, TypeError):
                log.error("unreadable record on %s: %r", TOPIC_EPOCH, value[:200])
                continue
            if epoch not in self._epochs:
                self._epochs.add(epoch)
                new.append(epoch)
        return new

    def _apply_bound(self) -> float:
        """The latest acceptance time that may be applied now. A partition with records
        still unread (while rebuilding: below the end offsets read at the start; live: below
        its last known high watermark) may yet hold events accepted just after what it has
        delivered, so nothing later than its newest delivered event (plus
        :data:`IN_STEP_US`) is applied from any partition: the partitions are merged in
        about the order ingest accepted their events, as a live run saw them."""
        if self.phase == "live":
            # Live, a burst (a replay, a backlog after an outage) can fill one partition's
            # fetches before another's just the same: the partitions' high watermarks
            # (known from the last fetch responses, no request) say which still hold
            # records. When all are read, the usual case, nothing waits.
            consumer = self._consumer
            assert consumer is not None
            # Only partitions that have delivered: one that never has (empty, or its records
            # past retention) gives no position to compare, and must not hold the others.
            unread = []
            for tp in self._partitions:
                end = consumer.highwater(tp)
                fetched = self._fetched.get(tp.partition)
                if end is not None and fetched is not None and fetched < end:
                    unread.append(tp.partition)
        else:
            target = self._catch_up_to or {}
            unread = [p for p, end in target.items() if self._fetched.get(p, 0) < end]
        if not unread:
            return float("inf")
        return min(self._read_up_to.get(p, -1) for p in unread) + IN_STEP_US

    def _throttle_held(self) -> None:
        """Stop fetching a partition whose held-back events fill a batch (it is ahead of
        the others); fetch it again once they are applied."""
        consumer = self._consumer
        assert consumer is not None
        for tp in self._partitions:
            if len(self._held.get(tp.partition, ())) >= BATCH_SIZE:
                consumer.pause(tp)
            else:
                consumer.resume(tp)

    def _is_caught_up(self, positions: dict[int, int]) -> bool:
        target = self._catch_up_to or {}
        reached = {**self.applied, **positions}
        return self._epoch_next >= self._epoch_end and all(
            reached.get(p, 0) >= end for p, end in target.items()
        )

    async def _broker_lost_records(self, exc: OffsetOutOfRangeError) -> None:
        """The topic is shorter than what was read: the broker lost its records (an embedded
        broker restarted). Read it again from the start, and publish a full snapshot once
        caught up: the outputs published before may be lost with it."""
        consumer = self._consumer
        assert consumer is not None
        self.broker_resets += 1
        self.metrics.broker_resets.inc()
        log.warning(
            "%s is shorter than already read (%s): the broker lost records; reading it again "
            "from the start and re-publishing a snapshot", TOPIC_INCIDENTS, exc,
        )
        await asyncio.to_thread(self._ensure_topics_quietly)
        await self._read_again()

    async def _read_again(self) -> None:
        """Read every partition again from the start. The detector keeps its state (what it
        reads again is duplicates, ignored); nothing is published until caught up, then a
        snapshot of everything owned."""
        consumer = self._consumer
        assert consumer is not None
        await consumer.seek_to_beginning(*self._partitions, self._epoch_tp, *self._command_tps)
        async with self._applied_changed:
            self.applied = {}
            self._applied_changed.notify_all()
        self._read_up_to, self._fetched, self._held = {}, {}, {}
        self._epoch_next = 0
        consumer.resume(*self._partitions)
        self.phase = "rebuilding"
        self._resnapshot_all = True
        await self._start_catching_up()

    def _apply(self, decoded: Decoded, ingested: int | None, pending: _Pending) -> None:
        """Apply one decoded event; ``ingested``: its ``ingested_at`` (escalations raised
        by it count their deadlines from then; None: now)."""
        metrics = self.metrics
        counted = pending.events
        try:
            if isinstance(decoded, Exception):
                raise decoded
            data, event = decoded
            at = ingested if ingested is not None else now_micros()
        except (ValueError, KeyError, TypeError) as exc:
            counted["unreadable"] += 1
            log.error("unreadable incident message (%s); sent to the late topic", exc)
            payload = late_message(f"unreadable: {exc}", "rejected", None, None)
            self._late("", dumps_json(payload), pending)
            metrics.late.labels("unreadable").inc()
            return
        try:
            outcome = self.detector.apply(event, at=at)
        except Exception as exc:  # a bug, not bad data: keep the event, say why
            log.exception(
                "engine failed on incident_id=%s event_id=%s", event.incident_id, event.event_id,
                extra={"incident_id": event.incident_id, "event_id": event.event_id},
            )
            counted["engine_error"] += 1
            payload = late_message(
                f"engine error: {type(exc).__name__}: {exc}", "rejected", None, data
            )
            self._late(event.incident_id, dumps_json(payload), pending)
            metrics.late.labels("engine_error").inc()
            return
        if outcome.duplicate:
            counted["duplicate"] += 1
            return
        if outcome.superseded:
            counted["superseded"] += 1
            return
        if outcome.not_applied is not None:
            counted[outcome.not_applied.kind] += 1
            payload = not_applied_message(outcome.not_applied, data)
            self._late(event.incident_id, dumps_json(payload), pending)
            metrics.late.labels(outcome.not_applied.kind).inc()
            return
        counted["applied"] += 1
        self._changed = True
        if self.publishing:
            self._outputs(outcome, pending, self.ownership.owns, self.ownership.owns)

    def _command(self, raw: bytes, pending: _Pending) -> None:
        """A command from a person (``schemas/command.v1.json``): applied by every replica;
        what it raises is published by the subject's owner."""
        try:
            command = json.loads(raw)
            if command.get("command") != "escalation.close":
                raise ValueError(f"unknown command {command.get('command')!r}")
            outcome = self.detector.close(
                str(command["escalation_id"]),
                str(command["subject_type"]),
                str(command["subject_key"]),
                at=parse_timestamp(str(command["at"])),
            )
        except (ValueError, KeyError, TypeError) as exc:
            log.error("unusable record on %s (%s); ignored", TOPIC_COMMANDS, exc)
            return
        self._changed = True
        if self.publishing:
            self._outputs(outcome, pending, self.ownership.owns, self.ownership.owns)

    def _late(self, incident_id: str, value: bytes, pending: _Pending) -> None:
        """Late and rejected events are published by their incident's owner; while
        rebuilding (owner not yet known) they are kept for the first snapshot."""
        if self.publishing:
            if self.ownership.owns(incident_id):
                pending.records.append((TOPIC_LATE, incident_id, value))
        else:
            self._late_while_rebuilding.append((incident_id, value))

    def _outputs(
        self,
        outcome: DetectorOutcome,
        pending: _Pending,
        owns_incident: Callable[[str], bool],
        owns_subject: Callable[[str], bool],
    ) -> None:
        now = pending.now
        records = pending.records
        for assessment in outcome.assessments:
            if not owns_incident(assessment.incident_id):
                continue
            records.append(
                (TOPIC_ASSESSMENTS, assessment.incident_id,
                 dumps_json(assessment_message(assessment, now)))
            )
            level = level_of(assessment)
            for rule in assessment.rules_met or (NO_RULE,):
                pending.assessments[level, rule] += 1
        for escalation in outcome.escalations:
            if not owns_subject(escalation.subject_key):
                continue
            records.append(
                (TOPIC_ESCALATIONS, escalation.subject_key,
                 dumps_json(escalation_message(escalation, now)))
            )
            for rule in [r.rule_id for r in escalation.reasons if r.rule_id] or [NO_RULE]:
                pending.escalations[escalation.level, rule] += 1
            # DEBUG: at INFO, this line (its incident id through the phone-number redaction)
            # cost more than publishing the escalation; _publish says how many were published.
            log.debug(
                "escalation %s: %s %s level=%s incident_id=%s",
                escalation.event, escalation.subject_type, escalation.escalation_id[:12],
                escalation.level, escalation.incident_id,
                extra={"incident_id": escalation.incident_id,
                       "escalation_id": escalation.escalation_id},
            )
        for met in outcome.case_reviews:
            if owns_subject(met.subject_key):
                records.append(
                    (TOPIC_CASE_REVIEWS, met.subject_key, dumps_json(case_review_message(met, now)))
                )
        for finding in outcome.integrity:
            if owns_incident(finding.incident_id):
                records.append(
                    (
                        TOPIC_INTEGRITY,
                        finding.incident_id,
                        dumps_json(integrity_message(finding, now)),
                    )
                )

    def _take_snapshot(self) -> _Snapshot | None:
        """The snapshot due now (see the module docstring), or None. Taken at once, with
        the state as this batch left it; published by :meth:`_publish_snapshot`."""
        if self._resnapshot_all:
            chosen: frozenset[int] | None = None
        elif self._snapshot_due:
            chosen = frozenset(self._snapshot_due) & self.ownership.owned
        else:
            return None
        owns = self.ownership.owns if chosen is None else self.ownership.within(chosen)
        late, self._late_while_rebuilding = self._late_while_rebuilding, []
        self._resnapshot_all = False
        self._snapshot_due = None
        self.snapshots += 1
        self.metrics.snapshots.inc()
        return _Snapshot(
            label="all owned" if chosen is None else str(sorted(chosen)),
            owns=owns,
            outcome=self.detector.snapshot(owns, owns),
            late=[(incident_id, value) for incident_id, value in late if owns(incident_id)],
        )

    async def _publish_snapshot(self, snapshot: _Snapshot) -> None:
        """Publish a snapshot :data:`SNAPSHOT_CHUNK` records at a time. Built whole, the
        messages of a national year's snapshot (hundreds of thousands of open escalations
        and assessments) took more than a GiB at once, which the worker then kept."""
        total = 0
        for part in _chunks(snapshot.outcome, SNAPSHOT_CHUNK):
            chunk = _Pending()
            self._outputs(part, chunk, snapshot.owns, snapshot.owns)
            await self._send(chunk.records)
            self._count(chunk)
            total += len(chunk.records)
        # Already messages, kept while rebuilding: nothing to build, so one send.
        late: list[Record] = [(TOPIC_LATE, key, value) for key, value in snapshot.late]
        await self._send(late)
        total += len(late)
        log.info("published a snapshot of partitions %s: %d records", snapshot.label, total)

    async def _publish(self, pending: _Pending, snapshot: _Snapshot | None = None) -> None:
        """Send every record (then the snapshot's, if any) and wait for the broker to
        acknowledge all of them, retrying until it does; only then do the positions count
        as applied."""
        await self._send(pending.records)
        self._count(pending)
        if snapshot is not None:
            await self._publish_snapshot(snapshot)
        if pending.positions or pending.records or snapshot is not None:
            self.last_progress = time.time()
        if pending.positions:
            async with self._applied_changed:
                self.applied.update(pending.positions)
                self._applied_changed.notify_all()
        self.metrics.retained.set(self.detector.retained_incidents)
        self.metrics.last_batch.set(time.time())

    async def _send(self, records: list[Record]) -> None:
        """Send ``records`` and wait for the broker to acknowledge them all, retrying (with
        a new producer) until it does."""
        while records:
            try:
                await asyncio.wait_for(self._send_all(records), PUBLISH_TIMEOUT_S)
                break
            except (KafkaError, TimeoutError) as exc:
                # After a broker restart Tansu may refuse the first batches of a partition
                # ("UnknownError") and the producer's state can be stale: start a new one.
                log.warning(
                    "publishing %d records failed (%s: %s); retrying with a new producer",
                    len(records), type(exc).__name__, exc,
                )
                await self._restart_producer()
                await asyncio.sleep(RETRY_S)
                await asyncio.to_thread(self._ensure_topics_quietly)
        if records:
            log.info(published_summary(records), extra={"count": len(records)})

    def _count(self, pending: _Pending) -> None:
        """Add a batch's counts to the metrics (one ``inc`` per label set, not per record)."""
        metrics = self.metrics
        for result, count in pending.events.items():
            metrics.events.labels(result).inc(count)
        for (level, rule), count in pending.assessments.items():
            metrics.assessments.labels(level, rule).inc(count)
        for (level, rule), count in pending.escalations.items():
            metrics.escalations.labels(level, rule).inc(count)
        pending.events.clear()
        pending.assessments.clear()
        pending.escalations.clear()

    async def _send_all(self, records: list[Record]) -> None:
        """Send ``records`` and return once the broker acknowledged every one (acks=all),
        each on the partition ``producer.send`` would choose, as record batches
        (:func:`~asvat.record_batches.send_batches`; each key hashed once, by the
        ownership)."""
        assert self._producer is not None
        await send_batches(self._producer, records, self.ownership.key_hash)

    async def _restart_producer(self) -> None:
        old = self._producer
        assert old is not None
        try:
            await asyncio.wait_for(old.stop(), 10)
        except (KafkaError, TimeoutError) as exc:
            log.info("old producer did not stop cleanly: %s", exc)
        self._producer = self._new_producer()
        await self._producer.start()

    def _new_producer(self) -> AIOKafkaProducer:
        # Its max_batch_size bounds the record batches _send_all builds (create_batch).
        return AIOKafkaProducer(
            bootstrap_servers=[f"{h}:{p}" for h, p in parse_bootstrap(self.settings.bootstrap)],
            client_id=f"{self.client_id}-out",
            acks="all",
            linger_ms=5,
            enable_idempotence=False,
            max_batch_size=256 * 1024,
            request_timeout_ms=15_000,
        )

    def _ensure_topics_quietly(self) -> None:
        try:
            self._ensure_topics()
        except Exception as exc:  # the broker may still be away: the next retry tries again
            log.info("topics not (re)created yet: %s", exc)

    # -- checkpoints ------------------------------------------------------------------------

    def _checkpoint(self) -> None:
        """Collect a finished checkpoint writer; start the next when one is due. Called
        at the end of a step: every applied event's outputs are published, nothing else
        is being decided (the review lock), so the state and ``applied`` agree."""
        writer = self._checkpoints
        assert writer is not None
        report = writer.poll()
        if report is not None:
            self._checkpoint_written(report)
        if (
            self.phase != "live"
            or writer.writing
            or self._output_lock.locked()
            or time.monotonic() < self._next_checkpoint
        ):
            return
        self._next_checkpoint = time.monotonic() + self.settings.worker_checkpoint_seconds
        if not self._changed and self.last_checkpoint is not None:
            return
        self._changed = False
        writer.start(self.detector, self._checkpoint_meta())

    async def _final_checkpoint(self) -> None:
        """On a stop between steps, write what changed since the last checkpoint, so that
        a restart reads nothing again. Waits up to :data:`FINAL_CHECKPOINT_S` (a periodic
        write under way first); past that, or after a stop in the middle of a step, the
        last checkpoint stands and the restart reads what came after it."""
        writer = self._checkpoints
        if writer is None or self.phase != "live":
            return
        if not self._settled or self._output_lock.locked():
            log.info("stopped in the middle of a batch: no final checkpoint (the last one, "
                     "written at %s, stands)", (self.last_checkpoint or {}).get("written_at"))
            return
        deadline = time.monotonic() + FINAL_CHECKPOINT_S

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        if writer.writing:
            report = await asyncio.to_thread(writer.wait, left())
            if report is not None:
                self._checkpoint_written(report)
        if writer.writing or (not self._changed and self.last_checkpoint is not None):
            return
        self._changed = False
        writer.start(self.detector, self._checkpoint_meta())
        report = await asyncio.to_thread(writer.wait, left())
        if report is None:
            log.warning("the final checkpoint was not written within %.0f s; the last one "
                        "stands", FINAL_CHECKPOINT_S)
            return
        self._checkpoint_written(report)

    def _checkpoint_meta(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "offsets": {str(p): o for p, o in sorted(self.applied.items())},
            "epochs": sorted(self._epochs),
            "partitions": len(self._partitions),
            "policy": self._policy_digest,
            "code": self._code_digest,
            "written_at": format_timestamp(now_micros()),
            "retained_incidents": self.detector.retained_incidents,
            "watermark": self.detector.watermark,
        }

    def _checkpoint_written(self, report: dict[str, Any]) -> None:
        meta = report["meta"]
        if report.get("ok"):
            self.last_checkpoint = {**meta, "size": report.get("size"),
                                    "seconds": round(float(report.get("seconds", 0)), 3),
                                    "private_bytes": report.get("private_bytes")}
            self.metrics.checkpoints.labels("written").inc()
            self.metrics.last_checkpoint.set(time.time())
            self.metrics.checkpoint_seconds.set(float(report.get("seconds", 0)))
            self.metrics.checkpoint_bytes.set(float(report.get("size", 0)))
            log.info(
                "checkpoint written: %d incidents, offsets %s, %d bytes in %.1f s (the writer "
                "took %s MiB of its own)", meta["retained_incidents"], meta["offsets"],
                report.get("size", 0), report.get("seconds", 0),
                "?" if report.get("private_bytes") is None
                else f"{report['private_bytes'] / 2**20:,.0f}",
            )
        else:
            self._changed = True  # try again at the next interval
            self.metrics.checkpoints.labels("failed").inc()
            log.error("checkpoint not written: %s", report.get("error"))

    # -- reviews ----------------------------------------------------------------------------

    async def announce_reviews(self) -> None:
        """Publish the review notices now due (each once). No checkpoint is taken while
        they are decided but not yet published."""
        async with self._output_lock:
            records = self.reviews_due()
            if records:
                self._changed = True
                await self.publish_records(records)

    def reviews_due(self) -> list[Record]:
        """Review notices now due for the subjects this worker owns."""
        if not self.publishing:
            return []
        records = []
        for review in self.detector.reviews_due(now_micros(), self.ownership.owns):
            value = dumps_json(review_message(review))
            records.append((TOPIC_REVIEWS, review.escalation_id, value))
            self.metrics.reviews.labels(review.event).inc()
        return records

    async def publish_records(self, records: list[Record]) -> None:
        await self._publish(_Pending(records=records))
