"""Prometheus metrics of one API app: its own registry, so two apps in a process never clash.

Counted as requests and messages flow: requests and their latency by route and status,
messages consumed and set aside, how long a batch takes to store and how late a message is
stored (from its Kafka timestamp), live-alert clients connected.

Read from the database when Prometheus scrapes (at most every :data:`DB_STATS_TTL_S`
seconds, each query bounded by :data:`DB_STATS_TIMEOUT_S`): open escalations by level,
subject type and area; unacknowledged high-risk escalations and the age of the oldest;
reviews due and overdue. These read the columns the API's schema has; a column that is not
there yet (no ``level`` before risk levels, no ``acknowledged_at`` before acknowledgement,
no ``reviews`` table before reviews) gives the value it implies: level ``none``, nothing
high-risk, no review due. ``asvat_api_database_stats_up`` says whether the last reading
worked.

Columns read (``escalations``): ``level``, ``district_code`` (the area), ``status``
(``closed`` is not open) or ``closed_at`` (set: not open), ``acknowledged_at`` (null:
unacknowledged), ``raised_at``; (``reviews``): ``escalation_id``, ``due_at``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from time import perf_counter
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, and_, column, func, inspect, literal, select, table, true
from sqlalchemy.sql.elements import ColumnClause, ColumnElement
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from asvat.runtime import GC_PAUSES
from asvat.settings import TOPIC_ASSESSMENTS, TOPIC_ESCALATIONS
from services.api.models import UtcDateTime

log = logging.getLogger(__name__)

#: Route label of requests that matched no route (kept to one label value: no cardinality
#: explosion from scanners probing random paths).
UNMATCHED_ROUTE = "<unmatched>"
#: How long a database reading is reused, and how long one may take.
DB_STATS_TTL_S = 5.0
DB_STATS_TIMEOUT_S = 2.0
#: Level label where escalations have no level (yet), and area label where none is known.
NO_LEVEL = "none"
NO_AREA = "unassigned"
HIGH = "high"
#: Reviews due within this long count as due (``asvat_api_reviews_due``).
REVIEW_DUE_HORIZON = timedelta(days=7)
#: Timestamp columns read here (stored as the API stores them: see ``UtcDateTime``).
TIMESTAMP_COLUMNS = frozenset({"raised_at", "acknowledged_at", "closed_at", "due_at"})
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Buckets of the consumer's timings: alerts are expected within a few hundred ms.
DELIVERY_BUCKETS = (
    0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0
)


class ApiMetrics:
    """The API's metrics and the registry that exposes them."""

    def __init__(self, engine: Engine | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "asvat_api_requests_total",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "asvat_api_request_seconds",
            "Time to answer an HTTP request, by route template and status code.",
            ["route", "status"],
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.messages_consumed = Counter(
            "asvat_api_messages_consumed_total",
            "Kafka messages read and handled (stored, or set aside as invalid), by topic.",
            ["topic"],
            registry=self.registry,
        )
        self.messages_invalid = Counter(
            "asvat_api_messages_invalid_total",
            "Kafka messages set aside because they were not valid JSON, broke their schema "
            "or could not be stored, by topic.",
            ["topic"],
            registry=self.registry,
        )
        self.batch_store_seconds = Histogram(
            "asvat_api_batch_store_seconds",
            "Time to decode and store one batch of consumed messages (one transaction).",
            buckets=DELIVERY_BUCKETS,
            registry=self.registry,
        )
        self.message_delay_seconds = Histogram(
            "asvat_api_message_delay_seconds",
            "From a message's Kafka timestamp (when the worker sent it) to its being stored "
            "here and the live alert streams woken, by topic: how late the dashboards are.",
            ["topic"],
            buckets=DELIVERY_BUCKETS,
            registry=self.registry,
        )
        self.live_alert_clients = Gauge(
            "asvat_api_live_alert_clients",
            "Clients connected to the live alert feed now.",
            registry=self.registry,
        )
        for topic in (TOPIC_ASSESSMENTS, TOPIC_ESCALATIONS):
            # Present from the start at 0, so rate() and alerts work before the first message.
            self.messages_consumed.labels(topic=topic)
            self.messages_invalid.labels(topic=topic)
            self.message_delay_seconds.labels(topic=topic)
        self.registry.register(GC_PAUSES)
        self.database = DatabaseCollector()
        self.registry.register(self.database)
        if engine is not None:
            self.bind_database(engine)

    def bind_database(self, engine: Engine) -> None:
        """Read pool use and escalation gauges from ``engine`` at scrape time."""
        self.database.engine = engine

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RequestMetricsMiddleware:
    """Counts and times every HTTP request by its route template (``/v1/incidents/{id}/…``).

    It also hands the app's database engine (``app.state.api.engine``) to the metrics the
    first time it sees the app (at start-up), for the scrape-time database gauges.
    """

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.metrics.database.engine is None:
            state = getattr(getattr(scope.get("app"), "state", None), "api", None)
            engine = getattr(state, "engine", None)
            if isinstance(engine, Engine):
                self.metrics.bind_database(engine)
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = perf_counter()
        status = 500  # what the client sees if the app raises before answering

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            # The router records the matched route in the (shared) scope.
            route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
            self.metrics.requests.labels(
                route=route, method=scope["method"], status=str(status)
            ).inc()
            self.metrics.request_seconds.labels(route=route, status=str(status)).observe(
                perf_counter() - started
            )


@dataclass
class DatabaseReading:
    """What one scrape-time reading of the database found."""

    open_escalations: dict[tuple[str, str, str], int] = field(default_factory=dict)
    oldest_open: dict[str, float] = field(default_factory=dict)  # level -> raised_at (epoch s)
    unacknowledged_high: int = 0
    oldest_unacknowledged_high: float | None = None  # raised_at, epoch seconds
    reviews_due: int = 0
    reviews_overdue: int = 0
    oldest_overdue_review: float | None = None  # due_at, epoch seconds


class DatabaseCollector(Collector):
    """Pool use and escalation gauges, read from the database at scrape time."""

    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(tz=UTC)) -> None:
        self.engine: Engine | None = None
        self.clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, DatabaseReading | None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asvat-metrics")
        self._pending: Any = None

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield from self._pool_families()
        yield from self._escalation_families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self.engine is None:
            return
        yield from self._pool(self.engine)
        now = self.clock()
        reading = self._reading()
        open_, oldest_open, unack, unack_age, due, overdue, overdue_age, up = (
            self._escalation_families()
        )
        up.add_metric([], 1.0 if reading is not None else 0.0)
        yield up
        if reading is None:
            return
        for (level, subject_type, area), count in sorted(reading.open_escalations.items()):
            open_.add_metric([level, subject_type, area], count)
        for level, raised in sorted(reading.oldest_open.items()):
            oldest_open.add_metric([level], max(0.0, now.timestamp() - raised))
        unack.add_metric([], reading.unacknowledged_high)
        unack_age.add_metric([], _age(now, reading.oldest_unacknowledged_high))
        due.add_metric([], reading.reviews_due)
        overdue.add_metric([], reading.reviews_overdue)
        overdue_age.add_metric([], _age(now, reading.oldest_overdue_review))
        yield from (open_, oldest_open, unack, unack_age, due, overdue, overdue_age)

    # ------------------------------------------------------------------ reading

    def _reading(self) -> DatabaseReading | None:
        """The last reading if fresh, else a new one (None if the database did not answer)."""
        with self._lock:
            if self._cached is not None and time.monotonic() - self._cached[0] < DB_STATS_TTL_S:
                return self._cached[1]
            if self._pending is None or self._pending.done():
                self._pending = self._executor.submit(self.read, self.clock())
            pending = self._pending
            try:
                reading: DatabaseReading | None = pending.result(timeout=DB_STATS_TIMEOUT_S)
            except FutureTimeout:
                log.warning("database gauges: no answer within %g s", DB_STATS_TIMEOUT_S)
                reading = None
            except Exception as exc:
                log.warning("database gauges: %s: %s", type(exc).__name__, exc)
                reading = None
            self._cached = (time.monotonic(), reading)
            return reading

    def read(self, now: datetime) -> DatabaseReading:
        """Query the database (whatever columns its schema has) at wall-clock ``now``."""
        assert self.engine is not None
        reading = DatabaseReading()
        schema = inspect(self.engine)
        tables = set(schema.get_table_names())
        if "escalations" not in tables:
            return reading
        columns = {c["name"] for c in schema.get_columns("escalations")}
        esc = table("escalations", *(_column(name) for name in sorted(columns)))
        is_open = _open_condition(esc, columns)
        has_level, has_area = "level" in columns, "district_code" in columns
        groups = [esc.c.subject_type]
        groups += [esc.c.level] if has_level else []
        groups += [esc.c.district_code] if has_area else []
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(*groups, func.count(), func.min(esc.c.raised_at))
                .where(is_open)
                .group_by(*groups)
            ).all()
            for row in rows:
                subject_type = str(row[0])
                level = str(row[1] or NO_LEVEL) if has_level else NO_LEVEL
                area = str(row[-3] or NO_AREA) if has_area else NO_AREA
                key = (level, subject_type, area)
                reading.open_escalations[key] = reading.open_escalations.get(key, 0) + row[-2]
                raised = _epoch(row[-1])
                if raised is not None:
                    known = reading.oldest_open.get(level)
                    reading.oldest_open[level] = raised if known is None else min(known, raised)
            if has_level:
                unacknowledged = and_(is_open, esc.c.level == HIGH)
                if "acknowledged_at" in columns:
                    unacknowledged = and_(unacknowledged, esc.c.acknowledged_at.is_(None))
                count, raised = connection.execute(
                    select(func.count(), func.min(esc.c.raised_at)).where(unacknowledged)
                ).one()
                reading.unacknowledged_high = int(count)
                reading.oldest_unacknowledged_high = _epoch(raised)
            review_columns = (
                {c["name"] for c in schema.get_columns("reviews")} if "reviews" in tables else set()
            )
            if {"escalation_id", "due_at"} <= review_columns:
                rev = table("reviews", _column("escalation_id"), _column("due_at"))
                joined = rev.join(esc, rev.c.escalation_id == esc.c.escalation_id)
                base = select(func.count(), func.min(rev.c.due_at)).select_from(joined)
                count, _ = connection.execute(
                    base.where(
                        is_open, rev.c.due_at > now, rev.c.due_at <= now + REVIEW_DUE_HORIZON
                    )
                ).one()
                reading.reviews_due = int(count)
                count, due = connection.execute(base.where(is_open, rev.c.due_at <= now)).one()
                reading.reviews_overdue = int(count)
                reading.oldest_overdue_review = _epoch(due)
        return reading

    # ------------------------------------------------------------------ families

    @staticmethod
    def _pool_families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "asvat_api_db_pool_connections",
                "Database connections of the API's pool, by state: in_use (checked out) or "
                "idle (pooled, ready).",
                labels=["state"],
            ),
            GaugeMetricFamily(
                "asvat_api_db_pool_max_connections",
                "Most connections the pool will open (pool size plus overflow).",
            ),
        )

    def _pool(self, engine: Engine) -> Iterator[GaugeMetricFamily]:
        connections, limit = self._pool_families()
        pool: Any = engine.pool
        try:
            in_use, idle = float(pool.checkedout()), float(pool.checkedin())
            size = float(pool.size())
            overflow = float(getattr(pool, "_max_overflow", 0))
        except (AttributeError, NotImplementedError):  # a pool without counters
            return
        connections.add_metric(["in_use"], in_use)
        connections.add_metric(["idle"], idle)
        limit.add_metric([], size + overflow if overflow >= 0 else float("inf"))
        yield from (connections, limit)

    @staticmethod
    def _escalation_families() -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(
                "asvat_api_escalations_open",
                "Escalations not closed, by risk level (none: no level), subject type and "
                "area (district code; unassigned: none).",
                labels=["level", "subject_type", "area"],
            ),
            GaugeMetricFamily(
                "asvat_api_oldest_open_escalation_age_seconds",
                "Age (now minus raised_at) of the oldest escalation not closed, by risk level.",
                labels=["level"],
            ),
            GaugeMetricFamily(
                "asvat_api_unacknowledged_high_risk_escalations",
                "High-risk escalations not closed and not acknowledged.",
            ),
            GaugeMetricFamily(
                "asvat_api_oldest_unacknowledged_high_risk_escalation_age_seconds",
                "Age (now minus raised_at) of the oldest unacknowledged high-risk escalation; "
                "0 when there is none.",
            ),
            GaugeMetricFamily(
                "asvat_api_reviews_due",
                "Supervisory reviews of open escalations due within the next 7 days.",
            ),
            GaugeMetricFamily(
                "asvat_api_reviews_overdue",
                "Supervisory reviews of open escalations whose due time has passed.",
            ),
            GaugeMetricFamily(
                "asvat_api_oldest_overdue_review_age_seconds",
                "How long the most overdue review has been overdue; 0 when none is.",
            ),
            GaugeMetricFamily(
                "asvat_api_database_stats_up",
                "1 if the last scrape-time reading of the database worked, else 0.",
            ),
        )


def _column(name: str) -> ColumnClause[Any]:
    """A column of the API's tables, typed where the type matters for reading it here."""
    return column(name, UtcDateTime()) if name in TIMESTAMP_COLUMNS else column(name)


def _open_condition(esc: Any, columns: set[str]) -> ColumnElement[bool]:
    conditions: list[ColumnElement[bool]] = []
    if "closed_at" in columns:
        conditions.append(esc.c.closed_at.is_(None))
    if "status" in columns:
        conditions.append(func.coalesce(esc.c.status, literal("open")) != "closed")
    return and_(true(), *conditions)


def _epoch(value: Any) -> float | None:
    """Epoch seconds of a (UTC) timestamp the database gave back."""
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return float(value.timestamp())


def _age(now: datetime, since: float | None) -> float:
    return 0.0 if since is None else max(0.0, now.timestamp() - since)
