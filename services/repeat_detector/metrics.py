"""Prometheus metrics of the repeat-detector worker, served on its web port at ``/metrics``.

Counted as events flow (events processed, assessments, escalations, late events, batch
time) and read at scrape time (consumer lag, event-time lag, retained state, last commit).

* **Consumer lag** per partition of ``asvat.incidents.v1`` is the broker's high watermark
  (as last seen in a fetch) minus the group's committed offset: the events not yet
  committed as processed. Before this worker's first commit on a partition, the offset
  committed when it was assigned is used. On the embedded Tansu broker the high watermark
  can be short (it reports the base offset of the last batch, plus one), so the lag there
  reads low; on Apache Kafka it is exact. Negative values are shown as 0.
* **Event-time lag** is wall-clock time minus the newest ``occurred_at`` the engine has
  applied (its watermark). It grows on a quiet night as well as when the worker falls
  behind; read it together with the consumer lag.
* **Last commit** is the Unix time of the last offset commit that advanced some
  partition; with lag above 0, an old value means the worker has stalled.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import faust
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from asvat.domain.timeutil import MICROS_PER_SECOND
from asvat.runtime import GC_PAUSES
from asvat.settings import TOPIC_INCIDENTS

#: Label value where a level does not exist (yet): assessments and escalations carry no
#: risk level until the domain's risk levels reach the worker's output.
NO_LEVEL = "none"
#: ``rule`` label of an assessment that meets no rule.
NO_RULE = "none"
#: Results an incident event can have in the worker (``asvat_worker_events_processed_total``).
EVENT_RESULTS = (
    "applied",
    "duplicate",
    "superseded",
    "late",
    "rejected",
    "unreadable",
    "engine_error",
)
#: Kinds of message put on the late topic (``asvat_worker_late_events_total``).
LATE_KINDS = ("late", "rejected", "unreadable", "engine_error")


def level_of(item: Any) -> str:
    """The risk level an assessment or escalation carries, or ``"none"`` if it has none."""
    level = getattr(item, "risk_level", None) or getattr(item, "level", None)
    return str(level) if level else NO_LEVEL


class WorkerMetrics:
    """The worker's metrics, in a registry of its own (one per app)."""

    def __init__(self, rules: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        #: Unix time of the last offset commit that advanced a partition (0: none yet).
        self.last_commit_at = 0.0
        r = self.registry
        r.register(GC_PAUSES)
        self.events = Counter(
            "asvat_worker_events_processed",
            "Incident events taken from asvat.incidents.v1, by result: applied, duplicate "
            "(event_id seen before), superseded (an older version of the incident), late or "
            "rejected (not applied: see asvat_worker_late_events_total), unreadable, "
            "engine_error.",
            ["result"],
            registry=r,
        )
        self.assessments = Counter(
            "asvat_worker_assessments_issued",
            "Assessments published on asvat.assessments.v1, by risk level and by rule met. "
            "An assessment meeting two rules counts once under each; one meeting none counts "
            'under rule="none".',
            ["level", "rule"],
            registry=r,
        )
        self.escalations = Counter(
            "asvat_worker_escalations_raised",
            "Escalations published on asvat.escalations.v1, by risk level and rule.",
            ["level", "rule"],
            registry=r,
        )
        self.reviews = Counter(
            "asvat_worker_reviews_announced",
            "Supervisory reviews of open escalations announced on asvat.reviews.v1, by event: "
            "review.due or review.overdue.",
            ["event"],
            registry=r,
        )
        for event in ("review.due", "review.overdue"):
            self.reviews.labels(event)
        self.late = Counter(
            "asvat_worker_late_events",
            "Messages put on asvat.incidents.late.v1 (not applied, with the reason), by kind: "
            "late (beyond max_lateness), rejected (the policy refuses it), unreadable, "
            "engine_error.",
            ["kind"],
            registry=r,
        )
        self.retained = Gauge(
            "asvat_worker_retained_incidents",
            "Incidents held in the engine's windows (the worker's state size).",
            registry=r,
        )
        self.batch_seconds = Histogram(
            "asvat_worker_batch_seconds",
            "Time to process one batch of events.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.last_batch = Gauge(
            "asvat_worker_last_batch_timestamp_seconds",
            "Unix time the last batch finished.",
            registry=r,
        )
        self.last_commit = Gauge(
            "asvat_worker_last_commit_timestamp_seconds",
            "Unix time of the last offset commit that advanced a partition (0: none yet).",
            registry=r,
        )
        self.snapshots = Counter(
            "asvat_worker_snapshots",
            "Snapshots published: the current outputs of partitions this worker took over "
            "(after a start, a rebalance or a broker that lost its records).",
            registry=r,
        )
        self.broker_resets = Counter(
            "asvat_worker_broker_resets",
            "Times asvat.incidents.v1 was found shorter than already read (the broker lost "
            "its records) and was read again from the start.",
            registry=r,
        )
        self.owned_partitions = Gauge(
            "asvat_worker_owned_partitions",
            "Partitions of asvat.incidents.v1 whose outputs this worker publishes.",
            registry=r,
        )
        self.caught_up = Gauge(
            "asvat_worker_caught_up",
            "1 once the worker's replica has read asvat.incidents.v1 up to its end since the "
            "last start or broker reset, else 0.",
            registry=r,
        )
        self.checkpoints = Counter(
            "asvat_worker_checkpoints",
            "Checkpoints of the worker's state, by result: written or failed (the log says "
            "why). A restarted worker loads the last one written and reads only what came "
            "after it.",
            ["result"],
            registry=r,
        )
        self.last_checkpoint = Gauge(
            "asvat_worker_last_checkpoint_timestamp_seconds",
            "Unix time the last checkpoint was written (0: none since this worker started).",
            registry=r,
        )
        self.checkpoint_seconds = Gauge(
            "asvat_worker_checkpoint_seconds",
            "Seconds the last checkpoint took to encode and write (in a forked child: the "
            "worker goes on publishing meanwhile).",
            registry=r,
        )
        self.checkpoint_bytes = Gauge(
            "asvat_worker_checkpoint_bytes",
            "Size of the state in the last checkpoint written.",
            registry=r,
        )
        for result in ("written", "failed"):
            self.checkpoints.labels(result)
        for result in EVENT_RESULTS:
            self.events.labels(result)
        for kind in LATE_KINDS:
            self.late.labels(kind)
        # Present at 0 from the start, so rate() and dashboards work before the first one.
        for rule in (*rules, NO_RULE):
            self.assessments.labels(NO_LEVEL, rule)
        for rule in rules:
            self.escalations.labels(NO_LEVEL, rule)
        self._scrape_time = _ScrapeTimeCollector(self)
        r.register(self._scrape_time)

    def observe(
        self,
        app: faust.App,
        watermark: Callable[[], int | None],
        replica_lag: Callable[[], dict[int, int]] = dict,
        state: Callable[[], dict[str, int]] = dict,
    ) -> None:
        """Read consumer lag from ``app``, the replica's lag, the event-time watermark (µs)
        and the detector's state sizes at scrape time, and record the time of each offset
        commit that advances a partition."""
        self._scrape_time.app = app
        self._scrape_time.watermark = watermark
        self._scrape_time.replica_lag = replica_lag
        self._scrape_time.state = state
        app.sensors.add(_CommitSensor(app, self))


class _CommitSensor(faust.Sensor):  # type: ignore[misc]
    """Sets the last-commit gauge after a commit that advanced some partition's offset.

    faust calls every sensor around each periodic commit, whether or not there was
    anything to commit; the offsets actually committed are the ones its monitor records.
    """

    def __init__(self, app: faust.App, metrics: WorkerMetrics, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.metrics = metrics
        self.seen: dict[Any, int] = {}

    def on_commit_completed(self, consumer: Any, state: Any) -> None:
        committed = dict(self.app.monitor.tp_committed_offsets or {})
        if committed != self.seen:
            self.seen = committed
            now = time.time()
            self.metrics.last_commit.set(now)
            self.metrics.last_commit_at = now


class _ScrapeTimeCollector(Collector):
    """Consumer lag and event-time lag, computed when Prometheus scrapes."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics
        self.app: faust.App | None = None
        self.watermark: Callable[[], int | None] = lambda: None
        self.replica_lag: Callable[[], dict[int, int]] = dict
        self.state: Callable[[], dict[str, int]] = dict

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield from self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        lag, newest, event_lag, replica, state = self._families()
        for partition, value in self._consumer_lag():
            lag.add_metric([str(partition)], value)
        for partition, behind in sorted(self.replica_lag().items()):
            replica.add_metric([str(partition)], float(behind))
        watermark = self.watermark()
        if watermark is not None:
            seconds = watermark / MICROS_PER_SECOND
            newest.add_metric([], seconds)
            event_lag.add_metric([], max(0.0, time.time() - seconds))
        for part, entries in sorted(self.state().items()):
            state.add_metric([part], float(entries))
        yield from (lag, newest, event_lag, replica, state)

    @staticmethod
    def _families() -> tuple[
        GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily,
        GaugeMetricFamily,
    ]:
        return (
            GaugeMetricFamily(
                "asvat_worker_consumer_lag_messages",
                f"Messages on {TOPIC_INCIDENTS} not yet committed by the worker group, per "
                "partition assigned to this worker (high watermark minus committed offset).",
                labels=["partition"],
            ),
            GaugeMetricFamily(
                "asvat_worker_newest_occurred_timestamp_seconds",
                "Unix time of the newest occurred_at the engine has applied (its watermark).",
            ),
            GaugeMetricFamily(
                "asvat_worker_event_time_lag_seconds",
                "Wall-clock time minus the newest occurred_at applied.",
            ),
            GaugeMetricFamily(
                "asvat_worker_replica_lag_messages",
                f"Messages on {TOPIC_INCIDENTS} not yet applied and published by this "
                "worker's replica, per partition (every partition: each worker reads all).",
                labels=["partition"],
            ),
            GaugeMetricFamily(
                "asvat_worker_state_entries",
                "Entries in each part of the detection state. All but escalation_episodes "
                "(one per subject ever escalated) and closes (people's closes) are bounded "
                "by the retention (longest window plus max_lateness).",
                labels=["part"],
            ),
        )

    def _consumer_lag(self) -> list[tuple[int, float]]:
        app = self.app
        consumer = getattr(app, "_consumer", None) if app is not None else None
        if app is None or consumer is None:
            return []
        try:
            assigned = [tp for tp in consumer.assignment() if tp.topic == TOPIC_INCIDENTS]
        except Exception:  # not started yet, or stopping: nothing assigned to report
            return []
        # Offsets this worker committed, else those committed when it was assigned.
        committed_here = dict(app.monitor.tp_committed_offsets or {})
        at_assignment = getattr(consumer, "_committed_offset", {})
        lags = []
        for tp in sorted(assigned, key=lambda t: t.partition):
            try:
                highwater = consumer.highwater(tp)
            except Exception:
                highwater = None
            if highwater is None:
                continue  # nothing fetched from this partition yet
            committed = committed_here.get(tp)
            if committed is None:
                committed = at_assignment.get(tp) or 0
            lags.append((tp.partition, float(max(0, highwater - committed))))
        return lags
