"""Live, the replica merges partitions by acceptance time while one still has records to
read (a replay or a backlog arriving in a burst), so the global watermark cannot run past
``max_lateness`` ahead of a partition whose fetches came later; when every partition is
read, nothing waits. A stand-in consumer gives the high watermarks (unit level)."""

from __future__ import annotations

from pathlib import Path

from aiokafka import TopicPartition

from asvat.domain.policy import default_policy
from asvat.settings import TOPIC_INCIDENTS
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
