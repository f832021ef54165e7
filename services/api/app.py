"""The API application: one factory wires settings, database, consumer and routes."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import OperationalError

from asvat.domain.policy import RetentionPolicy
from asvat.settings import Settings
from services.api import alerts, migrate, statistics
from services.api.alerts import FeedNotifier
from services.api.areas import AreaIndex
from services.api.commands import CloseRelay
from services.api.consumer import ApiConsumer
from services.api.db import make_engine, make_session_factory, make_writer_factory
from services.api.metrics import ApiMetrics, RequestMetricsMiddleware
from services.api.retention import RetentionJob
from services.api.views import ApiState, ops, router

log = logging.getLogger(__name__)
DASHBOARD = Path(__file__).resolve().parent / "dashboard"
#: The retention job's first run, this long after start-up (then every retention.every).
RETENTION_FIRST_RUN_DELAY_S = 60.0


def create_app(
    settings: Settings,
    *,
    start_consumer: bool = True,
    retention: RetentionPolicy | None = None,
    retention_delay_s: float = RETENTION_FIRST_RUN_DELAY_S,
) -> FastAPI:
    """Build the API. The database is migrated at start-up (Alembic); the consumer runs
    while the app does.

    ``start_consumer=False`` serves the database only (tests, read replicas).
    The retention job (:mod:`services.api.retention`) purges what is past the policy's
    ``retention:`` periods (``retention``; default: the policy of ``ASVAT_POLICY``), first
    ``retention_delay_s`` after start-up, then every ``retention.every``.
    """
    if retention is None:
        from asvat.policy import load_policy

        retention = load_policy(settings.policy).retention
    engine = make_engine(settings.resolved_database_url)
    areas = AreaIndex.from_settings(settings.districts_geojson, settings.wards_geojson)
    state = ApiState(
        engine=engine,
        session_factory=make_session_factory(engine),
        writer_factory=make_writer_factory(engine),
        metrics=ApiMetrics(),
        bootstrap=settings.bootstrap,
        areas=areas,
        notifier=FeedNotifier(),
        stopping=asyncio.Event(),
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        state.notifier.bind(asyncio.get_running_loop())
        try:
            await asyncio.to_thread(migrate.upgrade, engine)
        except OperationalError as exc:
            where = engine.url.render_as_string(hide_password=True)
            why = " ".join(str(exc.orig).split())
            raise RuntimeError(
                f"the API database {where} does not answer ({why}); "
                "start it, or set ASVAT_DATABASE_URL (unset: SQLite in ASVAT_DATA_DIR)"
            ) from exc
        await asyncio.to_thread(_place_old_rows, state)
        # What start-up made (modules, boundaries, the ORM's metadata: ~200,000 objects)
        # lives as long as the process: out of the collector's sight, a full collection no
        # longer stops every request for the hundreds of ms it took to walk them.
        gc.collect()
        gc.freeze()
        consumer: ApiConsumer | None = None
        if start_consumer:
            consumer = ApiConsumer(
                bootstrap=settings.bootstrap,
                group_id=settings.api_consumer_group,
                session_factory=state.writer_factory,
                metrics=state.metrics,
                areas=areas,
                on_stored=state.notifier.notify,
            )
            consumer.start()
        relay: CloseRelay | None = None
        if start_consumer:  # a read-only API (tests, replicas) leaves closes to the writer
            relay = CloseRelay(settings.bootstrap, state.session_factory)
            relay.start()
        retention_job = RetentionJob(
            state.writer_factory, retention, start_delay_s=retention_delay_s
        )
        retention_job.start()
        _app.state.retention = retention_job
        try:
            yield
        finally:
            state.stopping.set()
            state.notifier.notify()
            await retention_job.stop()
            if relay is not None:
                await relay.stop()
            if consumer is not None:
                await consumer.stop()
            engine.dispose()

    app = FastAPI(
        title="ASVAT API",
        description="Repeat-victim and repeat-location assessments and escalations, their "
        "handling and audit trail, areas, statistics, hotspots and live alerts. Every route "
        "but /healthz and /readyz needs a bearer token (`asvat token create --role ROLE`); "
        "roles: viewer < operator < supervisor < admin. The dashboard is at /dashboard/.",
        version="1",
        lifespan=lifespan,
    )
    app.state.api = state
    app.add_middleware(RequestMetricsMiddleware, metrics=state.metrics)
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:  # closed unless configured: the dashboard is served from the same origin
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        )
    app.include_router(router)
    app.include_router(alerts.router)
    app.include_router(ops)
    app.mount("/dashboard", StaticFiles(directory=DASHBOARD, html=True), name="dashboard")

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("/dashboard/")

    return app


def _place_old_rows(state: ApiState) -> None:
    """Rows stored before places were kept get theirs (once, after the upgrade)."""
    with state.writer_factory.begin() as session:
        placed = statistics.locate_unplaced(session, state.areas)
    if placed:
        log.info("placed %d assessments stored before areas were kept; recounted", placed)
