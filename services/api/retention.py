"""Retention: purge personal data older than the policy's ``retention:`` periods.

What goes, per the policy (``asvat/policy/default.yaml`` documents the MoPI defaults):

* ``incidents`` — ``assessments`` rows (one per incident: its stored record and
  assessment) whose incident occurred before the cutoff;
* ``escalations`` — *closed* escalations last changed before the cutoff, with their
  ``escalation_events`` and ``reviews``; open ones are kept, whatever their age, and
  counted as ``open_kept`` (a person closes them);
* problem-solving ``plans`` follow their escalation: a *closed* plan last changed before
  the escalations' cutoff goes, and so does an untouched draft (``status`` ``draft``) of an
  escalation that goes in the same run; a plan still in hand (draft worked on, submitted,
  signed off) is kept and counted as ``open_plans_kept`` (a person closes it);
* ``audit`` — ``audit_log`` entries written before the cutoff. The audit trail is
  append-only (database triggers refuse UPDATE and DELETE): the purge lifts that guard for
  its own DELETE inside its transaction only, so no other session ever sees it lifted.

Every run that is not a dry run appends one ``retention.purge`` entry to the audit trail
with the cutoffs and the number of rows removed from each table — never their content.
``area_counts`` (counts per area and period) hold no personal data and are kept.
The API runs :func:`purge` on a timer (:class:`RetentionJob`); ``asvat retention run
[--dry-run]`` runs it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, CursorResult, Delete, Result, Select, delete, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from asvat.domain.policy import RetentionPolicy
from services.api.models import (
    Assessment,
    AuditEntry,
    Escalation,
    EscalationEvent,
    Plan,
    Review,
)
from services.api.service import audit

log = logging.getLogger(__name__)

ACTION = "retention.purge"
#: Tables in the order they are purged (children of escalations first).
TABLES = ("assessments", "escalation_events", "reviews", "plans", "escalations", "audit_log")


@dataclass(frozen=True)
class PurgeReport:
    """What one run removed (or, in a dry run, would remove)."""

    at: datetime
    cutoffs: dict[str, datetime]
    removed: dict[str, int]
    open_kept: int
    dry_run: bool
    open_plans_kept: int = 0

    def as_detail(self) -> dict[str, Any]:
        """The audit entry's detail: cutoffs and counts only."""
        return {
            "cutoffs": {name: when.isoformat() for name, when in self.cutoffs.items()},
            "removed": dict(self.removed),
            "open_escalations_kept": self.open_kept,
            "open_plans_kept": self.open_plans_kept,
        }

    def summary(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        counts = ", ".join(f"{table} {n}" for table, n in self.removed.items())
        cutoffs = ", ".join(f"{k} < {v:%Y-%m-%d %H:%M:%S}Z" for k, v in self.cutoffs.items())
        return (
            f"retention: {verb} {counts} (cutoffs {cutoffs}); "
            f"{self.open_kept} open escalations and {self.open_plans_kept} plans in hand "
            "past the cutoff kept"
        )


def cutoffs(retention: RetentionPolicy, now: datetime) -> dict[str, datetime]:
    """The oldest time kept, per retention period."""
    return {
        name: now - timedelta(microseconds=getattr(retention, name))
        for name in ("incidents", "escalations", "audit")
    }


def purge(
    *,
    session_factory: sessionmaker[Session],
    retention: RetentionPolicy,
    now: datetime | None = None,
    dry_run: bool = False,
    actor: str = "retention job",
) -> PurgeReport:
    """Remove (or with ``dry_run`` only count) what is past retention, in one transaction,
    and record the run in the audit trail. ``session_factory``: a writer factory."""
    at = now or datetime.now(tz=UTC)
    cut = cutoffs(retention, at)
    closed_old = (Escalation.status == "closed") & (Escalation.updated_at < cut["escalations"])
    old_escalations = select(Escalation.escalation_id).where(closed_old)
    # A plan goes when closed and old, or when it is a draft of an escalation that goes:
    # one no one worked on (submitted, signed off or edited: updated after it was opened).
    old_plan = Plan.updated_at < cut["escalations"]
    plan_goes = old_plan & (
        (Plan.status == "closed")
        | (
            (Plan.status == "draft")
            & (Plan.updated_at == Plan.opened_at)
            & Plan.escalation_id.in_(old_escalations)
        )
    )
    statements: dict[str, Delete] = {
        "assessments": delete(Assessment).where(Assessment.occurred_at < cut["incidents"]),
        "escalation_events": delete(EscalationEvent).where(
            EscalationEvent.escalation_id.in_(old_escalations)
        ),
        "reviews": delete(Review).where(Review.escalation_id.in_(old_escalations)),
        "plans": delete(Plan).where(plan_goes),
        "escalations": delete(Escalation).where(closed_old),
        "audit_log": delete(AuditEntry).where(AuditEntry.at < cut["audit"]),
    }
    counts: dict[str, Select[Any]] = {
        "assessments": select(func.count())
        .select_from(Assessment)
        .where(Assessment.occurred_at < cut["incidents"]),
        "escalation_events": select(func.count())
        .select_from(EscalationEvent)
        .where(EscalationEvent.escalation_id.in_(old_escalations)),
        "reviews": select(func.count())
        .select_from(Review)
        .where(Review.escalation_id.in_(old_escalations)),
        "plans": select(func.count()).select_from(Plan).where(plan_goes),
        "escalations": select(func.count()).select_from(Escalation).where(closed_old),
        "audit_log": select(func.count())
        .select_from(AuditEntry)
        .where(AuditEntry.at < cut["audit"]),
    }
    open_kept_query = (
        select(func.count())
        .select_from(Escalation)
        .where(Escalation.status != "closed", Escalation.updated_at < cut["escalations"])
    )
    plans_kept_query = select(func.count()).select_from(Plan).where(old_plan & ~plan_goes)
    removed: dict[str, int] = {}
    with session_factory.begin() as session:
        open_kept = int(session.execute(open_kept_query).scalar_one())
        # Counted before the purge: a plan kept now is kept after it too.
        plans_kept = int(session.execute(plans_kept_query).scalar_one())
        for table in TABLES:
            if dry_run:
                removed[table] = int(session.execute(counts[table]).scalar_one())
            elif table == "audit_log":
                with _audit_guard_lifted(session.connection()):
                    removed[table] = _rowcount(session.execute(statements[table]))
            else:
                removed[table] = _rowcount(session.execute(statements[table]))
        report = PurgeReport(at, cut, removed, open_kept, dry_run, plans_kept)
        if not dry_run:
            audit(session, actor=actor, action=ACTION, detail=report.as_detail(), at=at)
    return report


def _rowcount(result: Result[Any]) -> int:
    return int(cast(CursorResult[Any], result).rowcount)


@contextlib.contextmanager
def _audit_guard_lifted(connection: Connection) -> Iterator[None]:
    """Within the caller's transaction, let ``audit_log`` rows be deleted, then put the
    append-only triggers back (migration 0002). DDL is transactional on both databases,
    and PostgreSQL's ALTER TABLE locks the table until commit: no one else sees the gap."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_change"))
        yield
        connection.execute(text("ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_change"))
        return
    found = connection.execute(
        text("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = :name"),
        {"name": "audit_log_no_delete"},
    ).scalar_one_or_none()
    if found is not None:
        connection.execute(text("DROP TRIGGER audit_log_no_delete"))
    yield
    if found is not None:
        connection.execute(text(found))


class RetentionJob:
    """Runs :func:`purge` in the API process: first after ``start_delay_s``, then every
    ``retention.every``. A failed run is logged and retried at the next interval."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        retention: RetentionPolicy,
        *,
        start_delay_s: float,
    ) -> None:
        self.session_factory = session_factory
        self.retention = retention
        self.start_delay_s = start_delay_s
        self.runs = 0
        self.last: PurgeReport | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        await asyncio.sleep(self.start_delay_s)
        every_s = self.retention.every / 1_000_000
        while True:
            try:
                report = await asyncio.to_thread(
                    purge, session_factory=self.session_factory, retention=self.retention
                )
            except Exception:  # the database may be down for a while: try again later
                log.exception("retention run failed; next try in %.0f s", every_s)
            else:
                self.runs += 1
                self.last = report
                log.info(report.summary())
            await asyncio.sleep(every_s)
