"""The worker's replica on a real broker: reading a long backlog, and publishing.

The engine's lateness rule compares each event with the newest occurrence time seen over
*every* partition. A replica that read one partition's years before another's would set
aside, as late, events the live run applied (found by bench/pipeline.py on a 2,000,000-event
replay: 940 incidents). It must apply a backlog in about the order ingest accepted it.

It publishes a batch's outputs as record batches it partitions itself: every record must land
on the partition ``producer.send`` would have chosen, in the same order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from kafka import KafkaProducer

from asvat.domain.policy import default_policy
from asvat.domain.timeutil import format_timestamp, parse_timestamp
from asvat.embedded.broker import EmbeddedBroker, ensure_topics
from asvat.settings import TOPIC_ASSESSMENTS, TOPIC_EPOCH, TOPIC_ESCALATIONS, TOPIC_INCIDENTS
from services.repeat_detector import replica as replica_module
from services.repeat_detector.checkpoint import CheckpointStore
from services.repeat_detector.metrics import WorkerMetrics
from services.repeat_detector.replica import Record, Replica, _Pending
from tests.conftest import consume_all, make_settings
from tests.e2e.test_up import free_port

DAY = 86_400 * 1_000_000
T0 = parse_timestamp("2022-01-01T00:00:00Z")
SPAN_DAYS = 900  # more than twice the default policy's max_lateness (400 d)
PER_PARTITION = 1500
MINUTE = 60_000_000


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    embedded = EmbeddedBroker(free_port(), log_path=tmp_path / "broker.log")
    embedded.start()
    try:
        ensure_topics(embedded.bootstrap, 2)
        yield embedded
    finally:
        embedded.stop()


def wire_event(n: int, occurred: int) -> bytes:
    stamp = format_timestamp(occurred)
    return json.dumps(
        {
            "event_id": f"B{n}-0",
            "incident_id": f"B{n}",
            "sequence": 0,
            "event_type": "opened",
            "occurred_at": stamp,
            "reported_at": stamp,
            "ingested_at": format_timestamp(occurred + 60_000_000),
            "source": "101",
            "opening_code": "ASBN",
            "closing_code": None,
            "victim_key": f"{n % 50:064x}",
            "key_id": "test",
            "location": {"lat": 54.97 + (n % 20) * 0.001, "lon": -1.61},
            "vulnerability": [],
        }
    ).encode()


def publish(broker: EmbeddedBroker, events: Iterable[tuple[int, int, int]]) -> None:
    """Events ``(n, occurred, partition)`` onto the incidents topic, in this order."""
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=20)
    for n, occurred, partition in events:
        producer.send(TOPIC_INCIDENTS, wire_event(n, occurred), partition=partition)
    producer.flush()
    producer.close()


def minute_events(first: int, count: int) -> list[tuple[int, int, int]]:
    """Events ``first`` … a minute apart, alternating between the two partitions."""
    return [(n, T0 + n * MINUTE, n % 2) for n in range(first, first + count)]


def write_epoch(broker: EmbeddedBroker, name: str) -> None:
    """An epoch record, as ingest writes one after refilling a broker."""
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    producer.send(TOPIC_EPOCH, json.dumps({"epoch": name}).encode(), partition=0)
    producer.flush()
    producer.close()


def new_replica(broker: EmbeddedBroker, tmp_path: Path) -> tuple[Replica, WorkerMetrics]:
    settings = make_settings(tmp_path, kafka_bootstrap=broker.bootstrap, topic_partitions=2)
    metrics = WorkerMetrics()
    return Replica(settings, default_policy(), metrics), metrics


def counted(metrics: WorkerMetrics, result: str) -> int:
    return int(metrics.events.labels(result)._value.get())


async def until(replica: Replica, condition: Callable[[], bool], seconds: float) -> bool:
    """Poll ``condition`` while the replica runs, reading end offsets as the worker's
    timer does."""
    for _ in range(int(seconds * 10)):
        if condition():
            return True
        await replica.refresh_end_offsets()
        await asyncio.sleep(0.1)
    return condition()


def rebuild(replica: Replica, condition: Callable[[], bool], seconds: float) -> None:
    """Run the replica until ``condition`` holds (or ``seconds`` pass), then stop it."""

    async def run() -> None:
        task = asyncio.create_task(replica.run())
        try:
            await until(replica, condition, seconds)
        finally:
            replica.stop()
            await asyncio.wait_for(task, 30)

    asyncio.run(run())


def test_a_backlog_over_years_in_two_partitions_sets_nothing_aside_as_late(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    total = 2 * PER_PARTITION
    step = SPAN_DAYS * DAY // total
    # Each partition holds its own, correctly ordered, 900 days of incidents.
    publish(broker, ((n, T0 + n * step, n % 2) for n in range(total)))
    replica, metrics = new_replica(broker, tmp_path)

    def done() -> bool:
        return counted(metrics, "applied") + counted(metrics, "late") >= total

    rebuild(replica, lambda: replica.caught_up and done(), 60)
    late = counted(metrics, "late")
    assert late == 0, f"{late} events set aside as late while rebuilding"
    assert counted(metrics, "applied") == total


def test_published_records_land_where_producer_send_puts_them_in_the_same_order(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """The same records through the replica's batched publishing and through one
    ``producer.send`` each (the way before): the same partition and order for every record.
    Five partitions, not the incidents topic's two: a record is partitioned among its own
    topic's partitions. 3,000 records of ~600 bytes: several record batches per partition."""
    batched, one_by_one = "asvat.test-batched.v1", "asvat.test-send.v1"
    ensure_topics(broker.bootstrap, 5, [batched, one_by_one])
    keys = [f"NB-2022-{n:07d}" for n in range(200)] + [f"{n:064x}" for n in range(50)] + [""]
    records: list[Record] = [
        (batched, keys[(n * 7919) % len(keys)], f"{n:06d}".encode() + b"x" * 600)
        for n in range(3000)
    ]
    settings = make_settings(tmp_path, kafka_bootstrap=broker.bootstrap, topic_partitions=2)
    replica = Replica(settings, default_policy(), WorkerMetrics())

    async def publish() -> None:
        replica._producer = replica._new_producer()
        await replica._producer.start()
        plain = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5)
        await plain.start()
        try:
            await replica._publish(_Pending(records=records))
            futures = [
                await plain.send(one_by_one, value, key=key.encode()) for _t, key, value in records
            ]
            await asyncio.gather(*futures)
        finally:
            await plain.stop()
            await replica._producer.stop()

    asyncio.run(publish())
    got = consume_all(broker.bootstrap, batched)
    reference = consume_all(broker.bootstrap, one_by_one)
    assert len(got) == len(records)
    assert [(r.partition, r.key, r.value) for r in got] == [
        (r.partition, r.key, r.value) for r in reference
    ]
    assert len({r.partition for r in got}) == 5


def test_records_published_twice_are_applied_once_and_read_past(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """A publish retried after its acknowledgement was lost leaves a record twice in a
    partition, the second copy after newer events. Applied in acceptance order, the copy
    comes before them: the partition's position must still end past it, or the replica
    never counts itself caught up (and the worker never commits those offsets)."""
    events = [(n, T0 + n * MINUTE, n % 2) for n in range(200)]
    publish(broker, events + events[:40])
    replica, metrics = new_replica(broker, tmp_path)
    rebuild(replica, lambda: replica.caught_up, 30)
    assert replica.caught_up
    assert replica.applied == {0: 120, 1: 120}
    assert counted(metrics, "applied") == 200
    assert counted(metrics, "duplicate") == 40


def test_a_refilled_broker_is_read_from_its_start_though_no_offset_is_out_of_range(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """The broker restarts empty and is refilled before the replica fetches again, so its
    old positions are all within the new logs: only the new epoch record says that they
    mean nothing there, and that record sits at offset 0, which the replica had passed on
    the broker before. Found by tests/e2e/test_faults.py, where the events ingest published
    to the new broker before its refill were never applied."""
    per_partition, doubled, early, later = 200, 60, 20, 40

    old = minute_events(0, 2 * per_partition)
    # The old logs hold records twice (a publish retried after its acknowledgement was lost):
    # each partition's position ends beyond the distinct events republished below.
    publish(broker, old + old[: 2 * doubled])
    write_epoch(broker, "epoch-1")
    replica, metrics = new_replica(broker, tmp_path)

    async def scenario() -> None:
        task = asyncio.create_task(replica.run())
        try:
            live = await until(
                replica, lambda: replica.caught_up and counted(metrics, "applied") == len(old), 60
            )
            assert live, (replica.phase, counted(metrics, "applied"), replica.applied)
            consumer = replica._consumer
            assert consumer is not None
            consumer.pause(*consumer.assignment())  # fetch nothing until the refill is done
            broker.stop()
            broker.start()
            ensure_topics(broker.bootstrap, 2)
            accepted_before = minute_events(len(old), 2 * early)
            accepted_after = minute_events(len(old) + 2 * early, 2 * later)
            # As ingest does it: events accepted before the refill, the refill (the durable
            # log: the old events, then those), later events, and the new epoch.
            publish(broker, accepted_before + old + accepted_before + accepted_after)
            write_epoch(broker, "epoch-2")
            consumer.resume(*consumer.assignment())
            want = len(old) + len(accepted_before) + len(accepted_after)
            await until(replica, lambda: counted(metrics, "applied") == want, 30)
        finally:
            replica.stop()
            await asyncio.wait_for(task, 30)

    asyncio.run(scenario())
    assert counted(metrics, "applied") == 2 * (per_partition + early + later)
    assert counted(metrics, "late") == 0


def checkpointed_replica(
    broker: EmbeddedBroker, data_dir: Path, **overrides: Any
) -> tuple[Replica, WorkerMetrics]:
    settings = make_settings(
        data_dir, kafka_bootstrap=broker.bootstrap, topic_partitions=2, **overrides
    )
    metrics = WorkerMetrics()
    return Replica(settings, default_policy(), metrics), metrics


def test_a_restarted_replica_reads_only_what_came_after_its_checkpoint(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """A worker writes a checkpoint once caught up; restarted, it loads it, reads only the
    events published since, and holds exactly the state a rebuild from the start holds."""
    first, then = minute_events(0, 400), minute_events(400, 200)
    publish(broker, first)
    writer, _ = checkpointed_replica(broker, tmp_path / "worker")
    rebuild(writer, lambda: writer.last_checkpoint is not None, 60)
    assert writer.last_checkpoint is not None
    assert writer.last_checkpoint["offsets"] == {"0": 200, "1": 200}
    publish(broker, then)

    restarted, metrics = checkpointed_replica(broker, tmp_path / "worker")
    rebuild(restarted, lambda: restarted.caught_up, 60)
    assert restarted.restored is not None
    assert restarted.restored["offsets"] == {"0": 200, "1": 200}
    assert counted(metrics, "applied") == len(then)  # the first 400 were not read again

    scratch, full = checkpointed_replica(broker, tmp_path / "scratch", worker_checkpoint_seconds=0)
    rebuild(scratch, lambda: scratch.caught_up, 60)
    assert scratch.restored is None and counted(full, "applied") == len(first) + len(then)
    assert restarted.detector.export_state() == scratch.detector.export_state()
    assert restarted.applied == scratch.applied == {0: 300, 1: 300}


def test_a_clean_stop_writes_a_final_checkpoint_and_the_restart_reads_nothing_again(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """The periodic checkpoint (an hour apart here) was written once caught up; a stop
    after more events writes them too, so the restarted worker applies nothing again and
    holds what a rebuild from the start holds."""
    first, then = minute_events(0, 100), minute_events(100, 150)
    publish(broker, first)
    writer, _ = checkpointed_replica(broker, tmp_path / "worker", worker_checkpoint_seconds=3600)

    async def run() -> None:
        task = asyncio.create_task(writer.run())
        try:
            assert await until(writer, lambda: writer.last_checkpoint is not None, 60)
            assert writer.last_checkpoint is not None
            assert writer.last_checkpoint["offsets"] == {"0": 50, "1": 50}
            await asyncio.to_thread(publish, broker, then)
            assert await until(writer, lambda: writer.applied == {0: 125, 1: 125}, 60)
        finally:
            writer.stop()
            await asyncio.wait_for(task, 60)

    asyncio.run(run())
    assert writer.last_checkpoint is not None
    assert writer.last_checkpoint["offsets"] == {"0": 125, "1": 125}

    restarted, metrics = checkpointed_replica(broker, tmp_path / "worker")
    rebuild(restarted, lambda: restarted.caught_up, 60)
    assert restarted.restored is not None
    assert restarted.restored["offsets"] == {"0": 125, "1": 125}
    assert counted(metrics, "applied") == 0
    scratch, _ = checkpointed_replica(broker, tmp_path / "scratch", worker_checkpoint_seconds=0)
    rebuild(scratch, lambda: scratch.caught_up, 60)
    assert restarted.detector.export_state() == scratch.detector.export_state()


def cancel_while_publishing(
    broker: EmbeddedBroker, writer: Replica, publish_takes: float | None
) -> None:
    """Run ``writer`` until caught up and checkpointed, publish 20 more events, and cancel
    it (as faust stops its tasks) while the step that applied them publishes, which takes
    ``publish_takes`` seconds (None: never ends)."""

    async def run() -> None:
        task = asyncio.create_task(writer.run())
        assert await until(writer, lambda: writer.last_checkpoint is not None, 60)
        publishing = asyncio.Event()
        real_publish = writer._publish

        async def slow_publish(pending: _Pending, *args: Any) -> None:
            if pending.records:  # the step that applied the new events
                publishing.set()
                if publish_takes is None:
                    await asyncio.Event().wait()
                await asyncio.sleep(publish_takes)
            await real_publish(pending, *args)

        writer._publish = slow_publish  # type: ignore[method-assign]
        await asyncio.to_thread(publish, broker, minute_events(100, 20))
        await asyncio.wait_for(publishing.wait(), 30)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)

    asyncio.run(run())


def test_a_stop_during_a_step_lets_it_finish_and_then_checkpoints(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """Under a steady stream a stop nearly always lands in a step: the step in hand is
    let finish (its outputs published), then the final checkpoint holds it."""
    publish(broker, minute_events(0, 100))
    writer, _ = checkpointed_replica(broker, tmp_path / "worker", worker_checkpoint_seconds=3600)
    writer.assign([0, 1])  # publishes: the new events' step has outputs to send
    cancel_while_publishing(broker, writer, publish_takes=1.0)
    assert writer.applied == {0: 60, 1: 60}
    found = CheckpointStore(writer.settings.resolved_checkpoint_dir).read()
    assert found is not None and found.offsets == {0: 60, 1: 60}
    assert found.meta["retained_incidents"] == 120


def test_a_step_that_cannot_finish_leaves_the_last_checkpoint_standing(
    broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outputs decided but not yet published must not be in a checkpoint: a step whose
    publish does not end within STEP_FINISH_S is cancelled, and no final one is written."""
    monkeypatch.setattr(replica_module, "STEP_FINISH_S", 0.5)
    publish(broker, minute_events(0, 100))
    writer, _ = checkpointed_replica(broker, tmp_path / "worker", worker_checkpoint_seconds=3600)
    writer.assign([0, 1])
    cancel_while_publishing(broker, writer, publish_takes=None)
    assert writer.detector.retained_incidents == 120  # applied, never published
    assert writer.last_checkpoint is not None
    assert writer.last_checkpoint["offsets"] == {"0": 50, "1": 50}
    found = CheckpointStore(writer.settings.resolved_checkpoint_dir).read()
    assert found is not None and found.offsets == {0: 50, 1: 50}
    # Not the state with the 20 unpublished events at the offsets before them: restored,
    # it would take them for duplicates and never publish their outputs.
    assert found.meta["retained_incidents"] == 100


def test_a_checkpoint_from_before_the_broker_lost_its_topics_is_read_past(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """The checkpoint's offsets are of a broker since restarted and refilled (a new epoch):
    the restored worker keeps the state but reads the new logs from their start. Were it to
    seek to the old offsets, it would skip the events the new broker took before the
    refill (they sit below those offsets)."""

    old = minute_events(0, 300)
    publish(broker, old)
    write_epoch(broker, "epoch-1")
    writer, _ = checkpointed_replica(broker, tmp_path / "worker")
    rebuild(writer, lambda: writer.last_checkpoint is not None, 60)
    assert writer.last_checkpoint is not None and writer.last_checkpoint["epochs"] == ["epoch-1"]

    broker.stop()
    broker.start()
    ensure_topics(broker.bootstrap, 2)
    accepted_before = minute_events(300, 40)
    publish(broker, accepted_before + old + minute_events(340, 60))  # as ingest refills it
    write_epoch(broker, "epoch-2")

    restarted, metrics = checkpointed_replica(broker, tmp_path / "worker")
    rebuild(restarted, lambda: restarted.caught_up, 60)
    assert restarted.restored is not None
    assert counted(metrics, "applied") == 100  # the 300 old ones are duplicates of its state
    assert counted(metrics, "duplicate") == 300
    scratch, _ = checkpointed_replica(broker, tmp_path / "scratch", worker_checkpoint_seconds=0)
    rebuild(scratch, lambda: scratch.caught_up, 60)
    assert restarted.detector.export_state() == scratch.detector.export_state()


def test_the_replica_says_while_its_snapshot_is_being_published(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """/readyz waits for the snapshot of partitions taken over: caught up is not enough
    (a national year's snapshot takes seconds, and new events wait behind it)."""
    publish(broker, minute_events(0, 60))
    replica, _ = new_replica(broker, tmp_path)
    replica.assign([0, 1])
    seen: list[tuple[bool, bool]] = []  # (caught up, snapshot in flight) as each send starts
    real_send = replica._send

    async def watched_send(records: list[Record]) -> None:
        seen.append((replica.caught_up, replica.snapshot_in_flight))
        await real_send(records)

    replica._send = watched_send  # type: ignore[method-assign]
    rebuild(replica, lambda: replica.snapshots == 1 and not replica.snapshot_in_flight, 60)
    assert (True, True) in seen  # caught up, and the snapshot still going out
    assert not replica.snapshot_in_flight


def test_a_snapshot_larger_than_a_chunk_is_published_whole_and_in_order(
    broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot goes out SNAPSHOT_CHUNK records at a time (built whole, a national year's
    took GiBs): every record of it still reaches the broker, in the order it had."""
    monkeypatch.setattr(replica_module, "SNAPSHOT_CHUNK", 7)
    publish(broker, minute_events(0, 120))  # 50 callers: repeat victims, escalations
    replica, _ = new_replica(broker, tmp_path)
    replica.assign([0, 1])  # owns everything: publishes a snapshot of all once caught up
    rebuild(replica, lambda: replica.caught_up and replica.snapshots == 1, 60)
    expected = replica.detector.snapshot(lambda _: True, lambda _: True)
    assert len(expected.assessments) == 120 and len(expected.escalations) > 7

    assessments = consume_all(broker.bootstrap, TOPIC_ASSESSMENTS)
    escalations = consume_all(broker.bootstrap, TOPIC_ESCALATIONS)
    assert sorted(json.loads(r.value)["assessment_id"] for r in assessments) == sorted(
        a.assessment_id for a in expected.assessments
    )
    assert sorted(json.loads(r.value)["escalation_id"] for r in escalations) == sorted(
        e.escalation_id for e in expected.escalations
    )
    # Within each partition, in the snapshot's order.
    order = {a.assessment_id: i for i, a in enumerate(expected.assessments)}
    for partition in {r.partition for r in assessments}:
        ids = [json.loads(r.value)["assessment_id"] for r in assessments
               if r.partition == partition]
        assert ids == sorted(ids, key=order.__getitem__)
