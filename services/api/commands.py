"""Closes made in the API, relayed to the workers as commands (``asvat.commands.v1``).

A person closes an escalation here; the workers keep the escalation lifecycle and must
know, or a victim whose escalation was closed would never be escalated again (the worker
would still hold it open at its level). The database is the record of the close; this
relay reads closed escalations from it and publishes one ``escalation.close`` command for
each (``schemas/command.v1.json``):

* every ``interval`` seconds it publishes the closes made since the last pass (with a
  minute of overlap), so a close made while Kafka was away is sent once it is back;
* on start it re-sends the closes of the last ``resend_days`` days, so a relay that died
  between a close and its publication loses nothing.

Commands are keyed by subject and have deterministic ids; workers ignore a close they have
applied (``Detector.close``), so re-sending is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from sqlalchemy import select
from sqlalchemy.orm import Session

from asvat.domain.assessment import content_id
from asvat.domain.timeutil import format_timestamp
from asvat.embedded.broker import parse_bootstrap
from asvat.settings import TOPIC_COMMANDS
from services.api.models import Escalation

log = logging.getLogger(__name__)

OVERLAP = timedelta(minutes=1)


def close_command(row: Any) -> dict[str, Any]:
    """The command for one closed escalation row."""
    closed_at = row.closed_at if row.closed_at.tzinfo else row.closed_at.replace(tzinfo=UTC)
    micros = int(closed_at.timestamp() * 1_000_000)
    return {
        "schema": "asvat.command.v1",
        "command_id": content_id("command", "escalation.close", row.escalation_id),
        "command": "escalation.close",
        "escalation_id": row.escalation_id,
        "subject_type": row.subject_type,
        "subject_key": row.subject_key,
        "at": format_timestamp(micros),
    }


def closed_since(session: Session, since: datetime) -> list[dict[str, Any]]:
    rows = session.execute(
        select(
            Escalation.escalation_id,
            Escalation.subject_type,
            Escalation.subject_key,
            Escalation.closed_at,
        )
        .where(Escalation.status == "closed", Escalation.closed_at >= since)
        .order_by(Escalation.closed_at)
    ).all()
    return [close_command(row) for row in rows if row.closed_at is not None]


class CloseRelay:
    """Publishes ``escalation.close`` commands for closes recorded in the database."""

    def __init__(
        self,
        bootstrap: str,
        session_factory: Callable[[], Session],
        *,
        interval: float = 5.0,
        resend_days: float = 30.0,
    ) -> None:
        self.bootstrap = bootstrap
        self.session_factory = session_factory
        self.interval = interval
        self.since = datetime.now(tz=UTC) - timedelta(days=resend_days)
        self.published = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="close-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            try:
                await self.relay_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Kafka or the database away: the next pass retries
                log.warning("close relay: %s: %s; retrying", type(exc).__name__, exc)
            await asyncio.sleep(self.interval)

    async def relay_once(self) -> int:
        """Publish the closes since the last pass; returns how many were sent."""
        started = datetime.now(tz=UTC)

        def read() -> list[dict[str, Any]]:
            with self.session_factory() as session:
                return closed_since(session, self.since - OVERLAP)

        commands = await asyncio.to_thread(read)
        if commands:
            await self._publish(commands)
            self.published += len(commands)
        self.since = started
        return len(commands)

    async def _publish(self, commands: list[dict[str, Any]]) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=[f"{h}:{p}" for h, p in parse_bootstrap(self.bootstrap)],
            client_id="asvat-api-commands",
            acks="all",
            enable_idempotence=False,
            request_timeout_ms=10_000,
        )
        await producer.start()
        try:
            futures = [
                await producer.send(
                    TOPIC_COMMANDS,
                    json.dumps(c, separators=(",", ":")).encode(),
                    key=c["subject_key"].encode(),
                )
                for c in commands
            ]
            await asyncio.wait_for(asyncio.gather(*futures), 30)
        except (KafkaError, TimeoutError) as exc:
            raise RuntimeError(f"publishing {len(commands)} close commands failed: {exc}") from exc
        finally:
            await producer.stop()
