"""Areas, escalation handling, the alert feed, the audit trail, tokens, area counts, reviews.

* assessments: point, district and ward; risk, case review and integrity columns;
* escalations: level, status, handling (acknowledged, assigned, closed with an outcome),
  place, and ``rule_id`` optional (escalations by risk level carry none);
* escalation_events: the append-only, sequence-numbered feed of changes (live alerts);
* audit_log: append-only, enforced by triggers on both databases;
* api_tokens, area_counts (with its version in data_versions), reviews.

Rows that exist already keep working: their place is filled in at the API's next start
(``service.locate_unplaced``), which also recounts ``area_counts``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from services.api.models import JsonType, SeqType, UtcDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UNASSIGNED = sa.text("'unassigned'")


def upgrade() -> None:
    with op.batch_alter_table("assessments") as table:
        table.add_column(sa.Column("easting", sa.Integer(), nullable=True))
        table.add_column(sa.Column("northing", sa.Integer(), nullable=True))
        table.add_column(sa.Column("lat", sa.Float(), nullable=True))
        table.add_column(sa.Column("lon", sa.Float(), nullable=True))
        table.add_column(
            sa.Column("district_code", sa.String(32), nullable=False, server_default=UNASSIGNED)
        )
        table.add_column(
            sa.Column("ward_code", sa.String(32), nullable=False, server_default=UNASSIGNED)
        )
        table.add_column(sa.Column("risk_level", sa.String(16), nullable=True))
        table.add_column(sa.Column("risk_score", sa.Integer(), nullable=True))
        table.add_column(sa.Column("case_review_threshold_met", sa.Boolean(), nullable=True))
        table.add_column(
            sa.Column(
                "integrity_flag_count", sa.Integer(), nullable=False, server_default=sa.text("0")
            )
        )
        table.create_index("ix_assessments_district_occurred", ["district_code", "occurred_at"])
        table.create_index("ix_assessments_ward_occurred", ["ward_code", "occurred_at"])
        table.create_index("ix_assessments_grid", ["easting", "northing"])
        table.create_index(
            "ix_assessments_case_review", ["case_review_threshold_met", "occurred_at"]
        )
        table.create_index("ix_assessments_integrity", ["integrity_flag_count", "occurred_at"])

    with op.batch_alter_table("escalations") as table:
        table.alter_column("rule_id", existing_type=sa.String(), nullable=True)
        table.add_column(sa.Column("updated_at", UtcDateTime(), nullable=True))
        table.add_column(
            sa.Column("last_event", sa.String(16), nullable=False, server_default="raised")
        )
        table.add_column(sa.Column("level", sa.String(16), nullable=True))
        table.add_column(
            sa.Column("level_rank", sa.Integer(), nullable=False, server_default=sa.text("-1"))
        )
        table.add_column(sa.Column("risk_score", sa.Integer(), nullable=True))
        table.add_column(sa.Column("episode", sa.Integer(), nullable=True))
        table.add_column(sa.Column("status", sa.String(16), nullable=False, server_default="open"))
        table.add_column(sa.Column("acknowledged_at", UtcDateTime(), nullable=True))
        table.add_column(sa.Column("acknowledged_by", sa.String(200), nullable=True))
        table.add_column(sa.Column("assignee_type", sa.String(16), nullable=True))
        table.add_column(sa.Column("assignee", sa.String(200), nullable=True))
        table.add_column(sa.Column("closed_at", UtcDateTime(), nullable=True))
        table.add_column(sa.Column("closed_by", sa.String(200), nullable=True))
        table.add_column(sa.Column("outcome", sa.String(32), nullable=True))
        table.add_column(sa.Column("location_key", sa.String(), nullable=True))
        table.add_column(sa.Column("lat", sa.Float(), nullable=True))
        table.add_column(sa.Column("lon", sa.Float(), nullable=True))
        table.add_column(
            sa.Column("district_code", sa.String(32), nullable=False, server_default=UNASSIGNED)
        )
        table.add_column(
            sa.Column("ward_code", sa.String(32), nullable=False, server_default=UNASSIGNED)
        )
        table.add_column(
            sa.Column("last_seq", SeqType, nullable=False, server_default=sa.text("0"))
        )
    op.execute("UPDATE escalations SET updated_at = received_at WHERE updated_at IS NULL")
    with op.batch_alter_table("escalations") as table:
        table.alter_column("updated_at", existing_type=UtcDateTime(), nullable=False)
        table.create_index("ix_escalations_status_raised", ["status", "raised_at", "escalation_id"])
        table.create_index(
            "ix_escalations_level_raised", ["level_rank", "raised_at", "escalation_id"]
        )
        table.create_index(
            "ix_escalations_district_raised", ["district_code", "raised_at", "escalation_id"]
        )
        table.create_index(
            "ix_escalations_ward_raised", ["ward_code", "raised_at", "escalation_id"]
        )
        table.create_index(
            "ix_escalations_district_status_raised",
            ["district_code", "status", "raised_at", "escalation_id"],
        )
        table.create_index("ix_escalations_updated", ["updated_at", "escalation_id"])
        table.create_index("ix_escalations_incident", ["incident_id"])

    op.create_table(
        "escalation_events",
        sa.Column("seq", SeqType, primary_key=True, autoincrement=True),
        sa.Column("event_key", sa.String(64), nullable=False, unique=True),
        sa.Column("escalation_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.Column("actor", sa.String(200), nullable=True),
        sa.Column("subject_type", sa.String(16), nullable=False),
        sa.Column("level", sa.String(16), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("district_code", sa.String(32), nullable=False),
        sa.Column("ward_code", sa.String(32), nullable=False),
        sa.Column("data", JsonType, nullable=False),
    )
    op.create_index(
        "ix_escalation_events_escalation", "escalation_events", ["escalation_id", "seq"]
    )

    op.create_table(
        "audit_log",
        sa.Column("id", SeqType, primary_key=True, autoincrement=True),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("token_id", sa.String(32), nullable=True),
        sa.Column("role", sa.String(16), nullable=True),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("escalation_id", sa.String(64), nullable=True),
        sa.Column("subject_type", sa.String(16), nullable=True),
        sa.Column("subject_key", sa.String(), nullable=True),
        sa.Column("detail", JsonType, nullable=False),
        sa.Column("client_ip", sa.String(64), nullable=True),
        sa.Column("user_agent", sa.String(400), nullable=True),
    )
    op.create_index("ix_audit_escalation", "audit_log", ["escalation_id", "id"])
    op.create_index("ix_audit_subject", "audit_log", ["subject_type", "subject_key", "id"])
    op.create_index("ix_audit_at", "audit_log", ["at"])
    _forbid_changes("audit_log")

    op.create_table(
        "api_tokens",
        sa.Column("token_id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=True),
        sa.Column("revoked_at", UtcDateTime(), nullable=True),
        sa.Column("revoked_by", sa.String(200), nullable=True),
    )

    counts = [
        sa.Column(name, sa.Integer(), nullable=False, server_default=sa.text("0"))
        for name in (
            "incidents",
            "in_scope",
            "asb",
            "crime",
            "non_crime",
            "other",
            "cancelled",
            "repeats",
            "escalations",
        )
    ]
    op.create_table(
        "area_counts",
        sa.Column("area_level", sa.String(8), primary_key=True),
        sa.Column("period_kind", sa.String(8), primary_key=True),
        sa.Column("period", sa.String(10), primary_key=True),
        sa.Column("area_code", sa.String(32), primary_key=True),
        *counts,
    )

    op.create_table(
        "data_versions",
        sa.Column("name", sa.String(40), primary_key=True),
        sa.Column("version", SeqType, nullable=False, server_default=sa.text("0")),
    )
    op.execute("INSERT INTO data_versions (name, version) VALUES ('area_counts', 0)")

    op.create_table(
        "reviews",
        sa.Column("escalation_id", sa.String(64), primary_key=True),
        sa.Column("rank", sa.String(40), primary_key=True),
        sa.Column("every_seconds", sa.Integer(), nullable=False),
        sa.Column("due_at", UtcDateTime(), nullable=False),
        sa.Column("last_done_at", UtcDateTime(), nullable=True),
        sa.Column("last_done_by", sa.String(200), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
    )
    op.create_index("ix_reviews_due", "reviews", ["due_at"])


def _forbid_changes(table: str) -> None:
    """Triggers that make ``table`` append-only: UPDATE and DELETE fail."""
    message = f"{table} is append-only"
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"""
            CREATE FUNCTION {table}_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION '{message}';
            END $$;
            """
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_change BEFORE UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {table}_append_only()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {table}_append_only()"
        )
    else:
        for change in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_no_{change.lower()} BEFORE {change} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{message}'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TABLE audit_log")
        op.execute("DROP FUNCTION audit_log_append_only()")
    else:
        op.drop_table("audit_log")
    for name in ("reviews", "data_versions", "area_counts", "api_tokens", "escalation_events"):
        op.drop_table(name)
    with op.batch_alter_table("escalations") as table:
        for index in (
            "ix_escalations_status_raised",
            "ix_escalations_level_raised",
            "ix_escalations_district_raised",
            "ix_escalations_ward_raised",
            "ix_escalations_district_status_raised",
            "ix_escalations_updated",
            "ix_escalations_incident",
        ):
            table.drop_index(index)
        for column in (
            "updated_at",
            "last_event",
            "level",
            "level_rank",
            "risk_score",
            "episode",
            "status",
            "acknowledged_at",
            "acknowledged_by",
            "assignee_type",
            "assignee",
            "closed_at",
            "closed_by",
            "outcome",
            "location_key",
            "lat",
            "lon",
            "district_code",
            "ward_code",
            "last_seq",
        ):
            table.drop_column(column)
        table.alter_column("rule_id", existing_type=sa.String(), nullable=False)
    with op.batch_alter_table("assessments") as table:
        for index in (
            "ix_assessments_district_occurred",
            "ix_assessments_ward_occurred",
            "ix_assessments_grid",
            "ix_assessments_case_review",
            "ix_assessments_integrity",
        ):
            table.drop_index(index)
        for column in (
            "easting",
            "northing",
            "lat",
            "lon",
            "district_code",
            "ward_code",
            "risk_level",
            "risk_score",
            "case_review_threshold_met",
            "integrity_flag_count",
        ):
            table.drop_column(column)
