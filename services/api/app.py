"""The API application: one factory wires settings, database, consumer and routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy.exc import OperationalError

from asvat.settings import Settings
from services.api.consumer import ApiConsumer
from services.api.db import make_engine, make_session_factory
from services.api.metrics import ApiMetrics, RequestMetricsMiddleware
from services.api.models import metadata
from services.api.views import ApiState, router


def create_app(settings: Settings, *, start_consumer: bool = True) -> FastAPI:
    """Build the API. Tables are created at start-up; the consumer runs while the app does.

    ``start_consumer=False`` serves the database only (tests, read replicas).
    """
    engine = make_engine(settings.resolved_database_url)
    state = ApiState(
        engine=engine,
        session_factory=make_session_factory(engine),
        metrics=ApiMetrics(),
        bootstrap=settings.bootstrap,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Alembic migrations will replace this; create_all only adds missing tables.
        try:
            metadata.create_all(engine)
        except OperationalError as exc:
            where = engine.url.render_as_string(hide_password=True)
            why = " ".join(str(exc.orig).split())
            raise RuntimeError(
                f"the API database {where} does not answer ({why}); "
                "start it, or set ASVAT_DATABASE_URL (unset: SQLite in ASVAT_DATA_DIR)"
            ) from exc
        consumer: ApiConsumer | None = None
        if start_consumer:
            consumer = ApiConsumer(
                bootstrap=settings.bootstrap,
                group_id=settings.api_consumer_group,
                session_factory=state.session_factory,
                metrics=state.metrics,
            )
            consumer.start()
        try:
            yield
        finally:
            if consumer is not None:
                await consumer.stop()
            engine.dispose()

    app = FastAPI(
        title="ASVAT API",
        description="Repeat-victim and repeat-location assessments and escalations.",
        version="1",
        lifespan=lifespan,
    )
    app.state.api = state
    app.add_middleware(RequestMetricsMiddleware, metrics=state.metrics)
    app.include_router(router)
    return app
