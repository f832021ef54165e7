"""Live alerts: the escalation feed over Server-Sent Events and WebSocket.

The feed is the ``escalation_events`` table read in ``seq`` order; ``seq`` is each event's
id. A client that reconnects with the last id it saw (SSE ``Last-Event-ID`` header or
``last_event_id`` parameter; WebSocket ``last_event_id`` parameter) receives every later
event that matches its filters, once and in order: no gap, no repeat, because ``seq`` grows
in commit order (see :func:`services.api.service.lock_feed`). Without an id a client starts
at the present (``backlog`` asks for the last few events first).

New events wake the streams of this process at once (:class:`FeedNotifier`); events
written by another API process are found by a poll every :data:`POLL_S` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from asvat.auth import allows, bearer_token
from services.api.models import EscalationEvent
from services.api.security import Viewer, authenticate
from services.api.service import LEVELS, Level

POLL_S = 2.0
HEARTBEAT_S = 15.0
BATCH = 200
MAX_BACKLOG = 500
WS_AUTH_TIMEOUT_S = 10.0


class FeedNotifier:
    """Wakes waiting streams when this process has appended to the feed."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event = asyncio.Event()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def notify(self) -> None:
        """Safe from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake()
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    def next_change(self) -> asyncio.Event:
        """What the next :meth:`notify` sets. Take it *before* reading the feed: a notify
        that comes while the read runs (in a thread) then still wakes the reader, which
        would otherwise wait for the notify after that, up to its whole poll interval."""
        return self._event

    @staticmethod
    async def wait(change: asyncio.Event, timeout: float) -> None:
        """Until ``change`` (from :meth:`next_change`) is set, or ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(change.wait(), timeout)


@dataclass(frozen=True, slots=True)
class FeedFilter:
    districts: tuple[str, ...] = ()
    wards: tuple[str, ...] = ()
    levels: tuple[str, ...] = ()
    subject_type: str | None = None


def feed_position(session: Session) -> int:
    """The newest event id (0 when the feed is empty)."""
    return int(session.scalar(select(func.coalesce(func.max(EscalationEvent.seq), 0))) or 0)


def _matching(query: Select[Any], where: FeedFilter) -> Select[Any]:
    """``query`` narrowed to the events ``where`` asks for (one place for both readers)."""
    if where.districts:
        query = query.where(EscalationEvent.district_code.in_(where.districts))
    if where.wards:
        query = query.where(EscalationEvent.ward_code.in_(where.wards))
    if where.levels:
        query = query.where(EscalationEvent.level.in_(where.levels))
    if where.subject_type:
        query = query.where(EscalationEvent.subject_type == where.subject_type)
    return query


def events_after(
    session: Session, after: int, where: FeedFilter, limit: int = BATCH
) -> Sequence[EscalationEvent]:
    query = _matching(select(EscalationEvent).where(EscalationEvent.seq > after), where)
    return session.scalars(query.order_by(EscalationEvent.seq).limit(limit)).all()


def backlog_start(session: Session, where: FeedFilter, backlog: int) -> int:
    """The id after which the last ``backlog`` matching events begin."""
    position = feed_position(session)
    if backlog <= 0:
        return position
    query = _matching(select(EscalationEvent.seq), where)
    seqs = session.scalars(query.order_by(EscalationEvent.seq.desc()).limit(backlog)).all()
    return (min(seqs) - 1) if seqs else position


def message(event: EscalationEvent) -> dict[str, Any]:
    """What a client receives for one event."""
    data = dict(event.data or {})
    escalation = dict(data.get("escalation") or {})
    escalation.pop("payload", None)
    escalation["event_id"] = event.seq
    return {
        "event_id": event.seq,
        "kind": event.kind,
        "at": event.at.isoformat(),
        "actor": event.actor,
        "escalation": escalation,
        "detail": data.get("detail") or {},
    }


class Feed:
    """Reads the feed for one client, waiting for more when it is exhausted."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        notifier: FeedNotifier,
        stopping: asyncio.Event,
        where: FeedFilter,
        after: int,
    ) -> None:
        self.sessions = sessions
        self.notifier = notifier
        self.stopping = stopping
        self.where = where
        self.after = after

    def _read(self) -> list[dict[str, Any]]:
        with self.sessions() as session:
            return [message(e) for e in events_after(session, self.after, self.where)]

    async def next_batch(self, wait: float) -> list[dict[str, Any]]:
        """The next events (possibly none, after ``wait`` seconds or a shutdown)."""
        change = self.notifier.next_change()
        batch = await run_in_threadpool(self._read)
        if not batch and not self.stopping.is_set():
            await self.notifier.wait(change, wait)
            batch = await run_in_threadpool(self._read)
        if batch:
            self.after = batch[-1]["event_id"]
        return batch


router = APIRouter(tags=["alerts"])


def _filter(
    district: list[str] | None,
    ward: list[str] | None,
    level: list[Level] | None,
    subject_type: str | None,
) -> FeedFilter:
    return FeedFilter(
        districts=tuple(district or ()),
        wards=tuple(ward or ()),
        levels=tuple(level or ()),
        subject_type=subject_type,
    )


DistrictQ = Annotated[
    list[str] | None, Query(description="Only events in these districts (codes).")
]
WardQ = Annotated[list[str] | None, Query(description="Only events in these wards (codes).")]
LevelQ = Annotated[list[Level] | None, Query(description="Only escalations at these levels.")]
SubjectQ = Annotated[
    str | None, Query(pattern="^(victim|location)$", description="Only victims or locations.")
]
BacklogQ = Annotated[
    int,
    Query(ge=0, le=MAX_BACKLOG, description="Without a last event id: send the last N first."),
]
LastIdQ = Annotated[
    int | None,
    Query(ge=0, description="Resume after this event id (as the Last-Event-ID header)."),
]


@router.get(
    "/v1/alerts/stream",
    summary="Live escalation events (Server-Sent Events)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "An event stream."}},
)
async def stream(
    request: Request,
    caller: Viewer,
    district: DistrictQ = None,
    ward: WardQ = None,
    level: LevelQ = None,
    subject_type: SubjectQ = None,
    backlog: BacklogQ = 0,
    last_event_id: LastIdQ = None,
    last_event_id_header: Annotated[
        str | None, Header(alias="Last-Event-ID", include_in_schema=False)
    ] = None,
) -> StreamingResponse:
    """Each event: ``id`` (its event id), ``event: escalation``, ``data`` (JSON: the event's
    kind, time, actor, the escalation's summary then, and details). Reconnect with
    ``Last-Event-ID`` to receive what was missed. A comment line every 15 s keeps the
    connection open through proxies."""
    state = request.app.state.api
    where = _filter(district, ward, level, subject_type)
    resume = last_event_id
    if resume is None and last_event_id_header and last_event_id_header.strip().isdigit():
        resume = int(last_event_id_header.strip())
    if resume is None:
        with state.session_factory() as session:
            resume = await run_in_threadpool(backlog_start, session, where, backlog)
    feed = Feed(state.session_factory, state.notifier, state.stopping, where, resume)

    async def body() -> AsyncIterator[bytes]:
        state.metrics.live_alert_clients.inc()
        try:
            yield b"retry: 2000\n: connected\n\n"
            quiet = 0.0
            while not state.stopping.is_set():
                batch = await feed.next_batch(POLL_S)
                for item in batch:
                    data = json.dumps(item, separators=(",", ":"))
                    yield f"id: {item['event_id']}\nevent: escalation\ndata: {data}\n\n".encode()
                quiet = 0.0 if batch else quiet + POLL_S
                if quiet >= HEARTBEAT_S:
                    quiet = 0.0
                    yield b": keep-alive\n\n"
        finally:
            state.metrics.live_alert_clients.dec()

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.websocket("/v1/alerts/ws")
async def websocket_alerts(
    websocket: WebSocket,
    district: DistrictQ = None,
    ward: WardQ = None,
    level: LevelQ = None,
    subject_type: SubjectQ = None,
    backlog: BacklogQ = 0,
    last_event_id: LastIdQ = None,
) -> None:
    """The same events as JSON messages. Authenticate with an ``Authorization: Bearer``
    header, or (browsers cannot set one) with a first message ``{"token": "…"}`` within
    10 s. Closes with 4401 for a missing or bad token, 4403 for a role without access."""
    state = websocket.app.state.api
    await websocket.accept()
    token = bearer_token(websocket.headers.get("authorization"))
    if token is None:
        try:
            first = await asyncio.wait_for(websocket.receive_json(), WS_AUTH_TIMEOUT_S)
        except (TimeoutError, ValueError, WebSocketDisconnect, KeyError):
            await _close(websocket, 4401, 'send {"token": "…"} first')
            return
        token = first.get("token") if isinstance(first, dict) else None
    try:
        principal = await authenticate(state.engine, token if isinstance(token, str) else None)
    except Exception as exc:  # HTTPException: 401 or 503
        code = 4401 if getattr(exc, "status_code", 0) == 401 else 1011
        await _close(websocket, code, str(getattr(exc, "detail", exc)))
        return
    if not allows(principal.role, "viewer"):
        await _close(websocket, 4403, f"role {principal.role!r} cannot read alerts")
        return
    where = _filter(district, ward, level, subject_type)
    resume = last_event_id
    if resume is None:
        with state.session_factory() as session:
            resume = await run_in_threadpool(backlog_start, session, where, backlog)
    feed = Feed(state.session_factory, state.notifier, state.stopping, where, resume)
    await websocket.send_json({"kind": "hello", "event_id": resume, "role": principal.role})

    async def drain() -> None:
        # Messages from the client are not used; reading them notices a disconnect.
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            while True:
                await websocket.receive_text()

    reader = asyncio.create_task(drain())
    state.metrics.live_alert_clients.inc()
    try:
        while not state.stopping.is_set() and not reader.done():
            for item in await feed.next_batch(POLL_S):
                await websocket.send_json(item)
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        state.metrics.live_alert_clients.dec()
        reader.cancel()
        with contextlib.suppress(Exception):
            await websocket.close()


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):
        await websocket.close(code=code, reason=reason[:120])


__all__ = ["LEVELS", "FeedNotifier", "router"]
