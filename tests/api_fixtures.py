"""Fixtures for the API's tests (a plugin of ``tests/conftest.py``): a fresh database on
SQLite and on PostgreSQL, and the app behind an in-process HTTP client with a token per
role. Helpers (``example``, ``Api``) are imported from here by name.

PostgreSQL must be running on 127.0.0.1:5432 with trust authentication (database ``test``);
each test gets its own schema, dropped afterwards. If it is not running, the tests fail
with the command that starts it.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from conftest import issue_tokens
from fastapi import FastAPI
from psycopg import sql

from asvat.settings import Settings
from services.api.app import create_app

#: Payloads in the first shape of the contracts (see tests/fixtures/api/README.md).
EXAMPLES = Path(__file__).resolve().parent / "fixtures" / "api"
#: The contracts' current examples.
CURRENT_EXAMPLES = Path(__file__).resolve().parents[1] / "schemas" / "examples"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
PG_START = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
#: Nothing listens here: the broker the HTTP tests run without.
NO_BROKER = "127.0.0.1:9"
ROLES = ("viewer", "operator", "supervisor", "admin", "ingest")


def connect_postgres() -> psycopg.Connection[Any]:
    """An autocommit connection to the test database, or a failure saying how to start it."""
    problem = ""
    try:
        return psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        problem = " ".join(str(exc).split())
    pytest.fail(
        f"PostgreSQL is not reachable at {PG_ADMIN} ({problem}). Start it with: {PG_START}",
        pytrace=False,
    )


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'api.db'}"
        return
    with postgres_schema() as url:
        yield url


class postgres_schema:
    """A PostgreSQL schema of its own for the ``with`` block; its URL."""

    def __enter__(self) -> str:
        self.admin = connect_postgres()
        self.schema = f"asvat_test_{uuid.uuid4().hex[:12]}"
        self.admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))
        return (
            "postgresql+psycopg://postgres@127.0.0.1:5432/test"
            f"?options=-csearch_path%3D{self.schema}"
        )

    def __exit__(self, *_: object) -> None:
        try:
            self.admin.execute(
                sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(self.schema))
            )
        finally:
            self.admin.close()


def example(name: str) -> dict[str, Any]:
    """A payload of the first shape (``assessment.v1/victim-repeat.json`` …)."""
    payload: dict[str, Any] = json.loads((EXAMPLES / name).read_text(encoding="utf-8"))
    return payload


def current_examples(kind: str) -> list[dict[str, Any]]:
    """The current examples of a contract (``escalation.v1`` …), in file name order."""
    return [
        json.loads(path.read_text(encoding="utf-8"))
        for path in sorted((CURRENT_EXAMPLES / kind).glob("*.json"))
    ]


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Api:
    """The app and a client; ``as_(role)`` gives the headers of a token of that role."""

    app: FastAPI
    client: httpx.AsyncClient
    tokens: dict[str, str]
    database_url: str

    def as_(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


@pytest.fixture
async def api(
    database_url: str, settings_factory: Callable[..., Settings]
) -> AsyncIterator[Api]:
    """The app without its consumer, lifespan run; a token of every role."""
    app = create_app(
        settings_factory(database_url=database_url, kafka_bootstrap=NO_BROKER),
        start_consumer=False,
    )
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(app.router.lifespan_context(app))
        # Tests read their own writes at once; serving the previous answer for a moment
        # while the new one is made is tested on its own (tests/unit/test_pages.py).
        app.state.api.pages.stale_s = 0.0
        tokens = issue_tokens(database_url, list(ROLES))
        client = await stack.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")
        )
        yield Api(app, client, tokens, database_url)
