"""Live, the replica merges partitions by acceptance time while one still has records to
read (a replay or a backlog arriving in a burst), so the global watermark cannot run past
``max_lateness`` ahead of a partition whose fetches came later; when every partition is
read, nothing waits. A stand-in consumer gives the high watermarks (unit level)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiokafka import TopicPartition

from asvat.domain.policy import default_policy
from asvat.settings import TOPIC_EPOCH, TOPIC_INCIDENTS
from services.repeat_detector.metrics import WorkerMetrics
from services.repeat_detector.replica import IN_STEP_US, Replica
from tests.conftest import make_settings


class HighWaters:
    def __init__(self, ends: dict[int, int | None]) -> None:
        self.ends = ends

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.ends[tp.partition]


def live_replica(tmp_path: Path, ends: dict[int, int | None]) -> Replica:
    settings = make_settings(tmp_path, topic_partitions=2)
    replica = Replica(settings, default_policy(), WorkerMetrics())
    replica.phase = "live"
    replica._consumer = HighWaters(ends)  # type: ignore[assignment]
    replica._partitions = [TopicPartition(TOPIC_INCIDENTS, p) for p in sorted(ends)]
    return replica


def test_live_and_every_partition_read_nothing_waits(tmp_path: Path) -> None:
    replica = live_replica(tmp_path, {0: 10, 1: 7})
    replica._fetched = {0: 10, 1: 7}
    replica._read_up_to = {0: 5_000, 1: 1_000}
    assert replica._apply_bound() == float("inf")


def test_live_a_partition_with_unread_records_bounds_the_others(tmp_path: Path) -> None:
    replica = live_replica(tmp_path, {0: 10, 1: 900})
    replica._fetched = {0: 10, 1: 400}  # partition 1 has 500 records still to fetch
    replica._read_up_to = {0: 9_000_000_000, 1: 1_000}
    assert replica._apply_bound() == 1_000 + IN_STEP_US


def test_live_a_partition_that_never_delivered_holds_nothing(tmp_path: Path) -> None:
    # Empty, or its records past retention (log start = high watermark > 0): no position
    # to compare, and waiting for it would stop the worker.
    replica = live_replica(tmp_path, {0: 10, 1: 500})
    replica._fetched = {0: 10}
    replica._read_up_to = {0: 9_000}
    assert replica._apply_bound() == float("inf")
    # and a partition whose high watermark is not known yet neither
    replica = live_replica(tmp_path, {0: 10, 1: None})
    replica._fetched = {0: 4, 1: 3}
    replica._read_up_to = {0: 9_000, 1: 2_000}
    assert replica._apply_bound() == 9_000 + IN_STEP_US


class Offsets:
    """A stand-in consumer's ``beginning_offsets``/``end_offsets``: ``(start, end)`` by topic."""

    def __init__(self, spans: dict[str, tuple[int, int]]) -> None:
        self.spans = spans

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.spans[tp.topic][0] for tp in tps}

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.spans[tp.topic][1] for tp in tps}


def catching_up(tmp_path: Path, epoch_span: tuple[int, int]) -> Replica:
    settings = make_settings(tmp_path, topic_partitions=1)
    replica = Replica(settings, default_policy(), WorkerMetrics())
    replica._consumer = Offsets(  # type: ignore[assignment]
        {TOPIC_INCIDENTS: (0, 5), TOPIC_EPOCH: epoch_span}
    )
    replica._partitions = [TopicPartition(TOPIC_INCIDENTS, 0)]
    asyncio.run(replica._start_catching_up())
    return replica


def test_caught_up_waits_for_the_epoch_records_the_topic_holds(tmp_path: Path) -> None:
    """A checkpoint's offsets hold only on its broker epoch: the epoch topic is read to its
    end before the replica counts itself caught up."""
    replica = catching_up(tmp_path, (0, 2))
    assert not replica._is_caught_up({0: 5})
    replica._epoch_next = 2
    assert replica._is_caught_up({0: 5})


def test_an_epoch_record_past_retention_holds_nothing(tmp_path: Path) -> None:
    """On Apache Kafka the epoch record expires with the topic's retention: the end offset
    stays, with nothing before it to read. Waiting for it would keep the worker from ever
    being ready."""
    replica = catching_up(tmp_path, (1, 1))
    assert replica._is_caught_up({0: 5})
    assert not replica._is_caught_up({0: 4})
