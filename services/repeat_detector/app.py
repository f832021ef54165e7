"""The repeat-detector worker: a faust-streaming app around a replica of the detection state.

Data flow: ``asvat.incidents.v1`` → :class:`~services.repeat_detector.replica.Replica` (a
:class:`~asvat.domain.detector.Detector` over *every* partition) → ``asvat.assessments.v1``,
``asvat.escalations.v1``, ``asvat.case-reviews.v1``, ``asvat.integrity.v1``,
``asvat.incidents.late.v1`` and, on a timer, ``asvat.reviews.v1``.

faust's part: the consumer group. The agent below subscribes to ``asvat.incidents.v1`` in
the group ``ASVAT_CONSUMER_GROUP``; the partitions the group gives this worker are the ones
whose outputs it publishes (``ownership.py``), and the agent acknowledges each event only
once the replica has applied and published it, so the group's committed offsets (and the
lag any Kafka tool shows for the group) mean "published". faust also serves ``/healthz``,
``/readyz`` and ``/metrics`` and runs the review timer. Why a replica and not partitioned
tables: see ``replica.py`` and the README's "Partitioning and recovery".
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import faust
from prometheus_client import generate_latest

from asvat import native
from asvat.domain.policy import Policy
from asvat.settings import TOPIC_INCIDENTS, Settings
from services.repeat_detector.health import Progress, verdict
from services.repeat_detector.metrics import WorkerMetrics
from services.repeat_detector.replica import Replica

log = logging.getLogger("asvat.worker")

#: Events the agent takes per batch, and the longest wait to fill one.
BATCH_SIZE = 2000
BATCH_WITHIN_S = 0.05
#: How often open escalations are checked for reviews coming due or overdue.
REVIEW_CHECK_INTERVAL_S = 60.0
#: How often end offsets are read for lag and readiness.
END_OFFSETS_INTERVAL_S = 5.0
#: No progress for this long while work waits: not ready.
STALL_AFTER_S = 60.0


def create_app(
    settings: Settings, policy: Policy, *, stall_after: float = STALL_AFTER_S
) -> tuple[faust.App, Replica, WorkerMetrics]:
    """Build the faust app, the replica, the agent and the health pages."""
    data = settings.data_path / "worker"
    data.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.consumer_group,
        broker=f"kafka://{settings.bootstrap}",
        store="memory://",  # no faust tables: the state is the replica's (replica.py)
        datadir=str(data),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=1,
        web_enabled=True,
        web_host=settings.worker_host,
        web_bind=settings.worker_host,
        web_port=settings.worker_port,
        web_in_thread=False,
        # The defaults (session 60 s, rebalance 60 s) make a group join take ~30 s on the
        # embedded broker; these bring it to a few seconds (ENGINEERING.md). The embedded
        # broker holds a join open for half the session timeout, and 6 s is the least
        # Apache Kafka accepts (group.min.session.timeout.ms): joins take 3 s, and a dead
        # worker's partitions pass to another after 6 s. It also bounds a restart on the
        # embedded broker, whose first generation is 0: aiokafka sends no LeaveGroup for
        # it, so a stopped worker stays a member until its session expires (with 10 s, a
        # restarted worker waited on it and was ready after 21 s instead of 6).
        broker_session_timeout=6,
        broker_heartbeat_interval=1,
        broker_rebalance_timeout=10,
        broker_commit_every=BATCH_SIZE,
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_linger_ms=5,
    )
    metrics = WorkerMetrics(rules=[rule.id for rule in policy.rules])
    replica = Replica(settings, policy, metrics, client_id=settings.consumer_group)
    metrics.observe(
        app, lambda: replica.detector.watermark, replica.lag, replica.detector.state_counts
    )
    incidents = app.topic(TOPIC_INCIDENTS, key_type=bytes, value_type=bytes, value_serializer="raw")
    assigned_at = time.time()

    def owned(tps: Any) -> list[int]:
        return sorted(tp.partition for tp in tps if tp.topic == TOPIC_INCIDENTS)

    @app.on_partitions_revoked.connect  # type: ignore[misc,arg-type]
    async def on_revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
        replica.revoke(owned(revoked))
        # What was decided for those partitions reaches the broker before the next owner
        # takes them (its snapshot must come after, not before, these records).
        await replica.flush()
        metrics.owned_partitions.set(len(replica.ownership.owned))

    @app.on_partitions_assigned.connect  # type: ignore[misc,arg-type]
    async def on_assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
        nonlocal assigned_at
        assigned_at = time.time()
        replica.assign(owned(assigned))
        metrics.owned_partitions.set(len(replica.ownership.owned))

    @app.task  # type: ignore[misc]
    async def run_replica() -> None:
        try:
            await replica.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the worker is useless without it: stop, say why
            log.exception("the replica failed; stopping the worker")
            await app.crash(exc)

    @app.timer(interval=END_OFFSETS_INTERVAL_S)  # type: ignore[misc]
    async def read_end_offsets() -> None:
        await replica.refresh_end_offsets()
        metrics.caught_up.set(1 if replica.caught_up else 0)

    @app.timer(interval=REVIEW_CHECK_INTERVAL_S)  # type: ignore[misc]
    async def announce_reviews() -> None:
        """Reviews of open escalations coming due or overdue (each announced once)."""
        await replica.announce_reviews()

    @app.agent(incidents)  # type: ignore[misc]
    async def acknowledge(stream: Any) -> None:
        """Let faust commit an event's offset once the replica has applied and published it."""
        async for batch in stream.take_events(BATCH_SIZE, within=BATCH_WITHIN_S):
            started = time.perf_counter()
            newest: dict[int, int] = {}
            for event in batch:
                message = event.message
                if message.offset > newest.get(message.partition, -1):
                    newest[message.partition] = message.offset
            for partition, offset in newest.items():
                while not await replica.wait_applied(partition, offset, timeout=5.0):
                    log.debug("waiting for the replica to reach %d:%d", partition, offset)
            metrics.batch_seconds.observe(time.perf_counter() - started)

    def progress() -> Progress:
        now = time.time()
        committed_here = {
            tp.partition: offset
            for tp, offset in (app.monitor.tp_committed_offsets or {}).items()
            if tp.topic == TOPIC_INCIDENTS
        }
        consumer = getattr(app, "_consumer", None)
        at_assignment = {
            tp.partition: offset
            for tp, offset in (getattr(consumer, "_committed_offset", None) or {}).items()
            if tp.topic == TOPIC_INCIDENTS and offset is not None
        }
        commit_lag = 0
        for partition in replica.ownership.owned:
            committed = committed_here.get(partition, at_assignment.get(partition, 0))
            commit_lag += max(0, replica.applied.get(partition, 0) - committed)
        last_commit = max(metrics.last_commit_at, assigned_at)
        return Progress(
            caught_up=replica.caught_up,
            owned_partitions=len(replica.ownership.owned),
            snapshot_in_flight=replica.snapshot_in_flight,
            replica_lag=sum(replica.lag().values()),
            seconds_since_progress=now - replica.last_progress,
            commit_lag=commit_lag,
            seconds_since_commit=now - last_commit,
        )

    @app.page("/healthz")  # type: ignore[misc]
    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    @app.page("/readyz")  # type: ignore[misc]
    async def readyz(web: Any, request: Any) -> Any:
        state = progress()
        reasons = verdict(state, stall_after)
        body = {
            "ready": not reasons,
            "reasons": reasons,
            "phase": replica.phase,
            "owned_partitions": sorted(replica.ownership.owned),
            "assigned_partitions": len(replica.ownership.owned),
            "replica_lag": state.replica_lag,
            "commit_lag": state.commit_lag,
            "seconds_since_progress": round(state.seconds_since_progress, 1),
            "retained_incidents": replica.detector.retained_incidents,
            "snapshots": replica.snapshots,
            "broker_resets": replica.broker_resets,
            "checkpoint": {"restored": replica.restored, "last_written": replica.last_checkpoint},
            "domain_core": "compiled" if native.status().compiled else "interpreted",
        }
        return web.json(body, status=200 if not reasons else 503)

    @app.page("/metrics")  # type: ignore[misc]
    async def metrics_page(web: Any, request: Any) -> Any:
        return web.bytes(
            generate_latest(metrics.registry), content_type="text/plain; version=0.0.4"
        )

    return app, replica, metrics
