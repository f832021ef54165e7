"""Readiness probes: does the database answer, does the broker answer?

Each probe returns None when healthy, else a short reason a person can act on.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import Engine, text

from asvat.embedded.broker import BrokerUnreachableError, ping_broker

PROBE_TIMEOUT_S = 2.0


async def check_database(engine: Engine, *, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None if the database answers ``SELECT 1`` within ``timeout`` seconds."""

    def select_one() -> None:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1")).scalar_one()

    try:
        await asyncio.wait_for(asyncio.to_thread(select_one), timeout)
    except TimeoutError:
        return f"no answer to SELECT 1 within {timeout:g} s"
    except Exception as exc:
        return f"SELECT 1 failed: {type(exc).__name__}: {_first_line(exc)}"
    return None


async def check_broker(bootstrap: str, *, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None if a broker in ``bootstrap`` answers a Metadata request within ``timeout`` seconds."""
    try:
        await asyncio.to_thread(ping_broker, bootstrap, timeout)
    except (BrokerUnreachableError, ValueError) as exc:
        return str(exc)
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:200]
