"""Live alerts over a real HTTP server (uvicorn) on SQLite and PostgreSQL: Server-Sent
Events and WebSocket, filtered by area and level; a client that reconnects with the last
event id it saw receives exactly what it missed, in order."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
import websockets
from api_fixtures import NO_BROKER, sha256
from conftest import free_port, issue_tokens
from fastapi import FastAPI

from asvat.settings import Settings
from services.api import service
from services.api.app import create_app

pytestmark = pytest.mark.anyio

NEWCASTLE_POINT, SUNDERLAND_POINT = (424560, 564921), (439800, 556900)
NEWCASTLE, SUNDERLAND = "E08000021", "E08000024"


@dataclass
class Server:
    app: FastAPI
    url: str
    tokens: dict[str, str]

    def headers(self, role: str = "viewer", **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}", **extra}

    def store(self, *payloads: dict[str, Any]) -> None:
        """Escalation messages written as the consumer writes them."""
        with self.app.state.api.writer_factory.begin() as session:
            service.record_escalations(session=session, payloads=list(payloads))
        self.app.state.api.notifier.notify()


@pytest.fixture
def server(database_url: str, settings_factory: Callable[..., Settings]) -> Iterator[Server]:
    port = free_port()
    app = create_app(
        settings_factory(database_url=database_url, kafka_bootstrap=NO_BROKER),
        start_consumer=False,
    )
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=2
    )
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    tokens = issue_tokens(database_url, ["viewer", "operator", "ingest"])
    try:
        yield Server(app, f"127.0.0.1:{port}", tokens)
    finally:
        uv.should_exit = True
        thread.join(15)


def raised(n: int, level: str, point: tuple[int, int]) -> dict[str, Any]:
    return {
        "schema": "asvat.escalation.v1",
        "escalation_id": sha256(f"alert-{n}"),
        "event": "raised",
        "subject_type": "location",
        "subject_key": f"bng:{point[0]}:{point[1] + n}",
        "incident_id": f"A-{n}",
        "contributing_incident_ids": [f"A-{n}"],
        "occurred_at": "2024-03-01T21:00:00Z",
        "raised_at": "2024-03-01T21:00:05Z",
        "level": level,
        "risk_score": 10,
        "reasons": [{"factor": "rule", "weight": 5, "detail": "met"}],
    }


class Stream:
    """The lines of an open event stream, read across several waits."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.aiter_lines()

    def __aiter__(self) -> AsyncIterator[str]:
        return self.lines


async def sse_events(
    stream: Stream, want: int, timeout: float = 15.0
) -> list[tuple[int, dict[str, Any]]]:
    """The next ``want`` events of an open event stream: (id, data)."""
    found: list[tuple[int, dict[str, Any]]] = []
    event: dict[str, str] = {}

    async def read() -> None:
        async for line in stream:
            if line == "":
                if "data" in event:
                    found.append((int(event["id"]), json.loads(event["data"])))
                    if len(found) >= want:
                        return
                event.clear()
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                event[name] = value.removeprefix(" ")

    await asyncio.wait_for(read(), timeout)
    return found


async def quiet(stream: Stream, seconds: float) -> list[str]:
    """Data lines that arrive within ``seconds`` (should be none). Ends the stream."""
    lines: list[str] = []

    async def read() -> None:
        async for line in stream:
            if line.startswith("data:"):
                lines.append(line)

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(read(), seconds)
    return lines


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=30.0)) as c:
        yield c


async def test_sse_filters_and_resumes_without_gaps_or_repeats(
    server: Server, client: httpx.AsyncClient
) -> None:
    url = f"http://{server.url}/v1/alerts/stream"
    first = raised(1, "high", NEWCASTLE_POINT)
    async with client.stream(
        "GET", url, params={"level": "high", "district": NEWCASTLE}, headers=server.headers()
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = Stream(response)
        await asyncio.sleep(0.3)
        server.store(raised(2, "medium", NEWCASTLE_POINT), raised(3, "high", SUNDERLAND_POINT))
        server.store(first)
        [(seen, data)] = await sse_events(stream, 1)
        assert data["kind"] == "raised" and data["event_id"] == seen
        assert data["escalation"]["escalation_id"] == first["escalation_id"]
        assert data["escalation"]["level"] == "high"
        assert data["escalation"]["district"] == NEWCASTLE
        assert "payload" not in data["escalation"]

    # While disconnected: an acknowledgement, more escalations, some filtered out.
    ack = await client.post(
        f"http://{server.url}/v1/escalations/{first['escalation_id']}/acknowledge",
        headers=server.headers("operator"),
    )
    assert ack.status_code == 200
    missed = [raised(n, "high", NEWCASTLE_POINT) for n in (4, 5)]
    server.store(raised(6, "standard", NEWCASTLE_POINT), *missed)

    async with client.stream(
        "GET",
        url,
        params={"level": "high", "district": NEWCASTLE},
        headers=server.headers(**{"Last-Event-ID": str(seen)}),
    ) as response:
        stream = Stream(response)
        got = await sse_events(stream, 3)
        assert [d["kind"] for _, d in got] == ["acknowledged", "raised", "raised"]
        assert [d["escalation"]["escalation_id"] for _, d in got] == [
            first["escalation_id"],
            *(m["escalation_id"] for m in missed),
        ]
        ids = [i for i, _ in got]
        assert ids == sorted(ids) and ids[0] > seen and len(set(ids)) == 3
        assert got[0][1]["actor"] == "test operator"
        assert await quiet(stream, 1.0) == []  # nothing repeated, nothing more

    # From the start of the feed: everything, in order, once.
    async with client.stream(
        "GET", url, params={"last_event_id": 0}, headers=server.headers()
    ) as response:
        everything = await sse_events(Stream(response), 7)
        assert [i for i, _ in everything] == sorted({i for i, _ in everything})


async def test_websocket_authenticates_and_resumes(
    server: Server, client: httpx.AsyncClient
) -> None:
    stored = [raised(n, "high", NEWCASTLE_POINT) for n in range(10, 13)]
    server.store(*stored)
    url = f"ws://{server.url}/v1/alerts/ws?level=high&last_event_id=0"
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"token": server.tokens["viewer"]}))
        hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert hello == {"kind": "hello", "event_id": 0, "role": "viewer"}
        got = [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in stored]
    assert [g["escalation"]["escalation_id"] for g in got] == [s["escalation_id"] for s in stored]
    last = got[1]["event_id"]
    later = raised(13, "high", NEWCASTLE_POINT)
    server.store(later, raised(14, "medium", NEWCASTLE_POINT))
    # A header works too (for clients that can set one), and resumes after `last`.
    async with websockets.connect(
        f"ws://{server.url}/v1/alerts/ws?level=high&last_event_id={last}",
        additional_headers=server.headers(),
    ) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["kind"] == "hello"
        rest = [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(2)]
        assert [r["escalation"]["escalation_id"] for r in rest] == [
            stored[2]["escalation_id"],
            later["escalation_id"],
        ]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 1.0)

    for token, code in (("asvat_nonsense", 4401), (server.tokens["ingest"], 4403)):
        async with websockets.connect(f"ws://{server.url}/v1/alerts/ws") as ws:
            await ws.send(json.dumps({"token": token}))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == code

    response = await client.get(f"http://{server.url}/v1/alerts/stream")
    assert response.status_code == 401
    response = await client.get(
        f"http://{server.url}/v1/alerts/stream",
        params={"level": "severe"},
        headers=server.headers(),
    )
    assert response.status_code == 422
