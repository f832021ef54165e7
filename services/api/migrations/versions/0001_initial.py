"""The first schema: current assessment per incident, and escalations as raised.

This is what ``metadata.create_all`` made before migrations: a database made that way is
stamped with this revision at its first migration (see ``services/api/migrate.py``).

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from services.api.models import JsonType, UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "assessments",
        sa.Column("incident_id", sa.String(), primary_key=True),
        sa.Column("assessment_id", sa.String(64), nullable=False),
        sa.Column("in_scope", sa.Boolean(), nullable=False),
        sa.Column("classification", sa.String(16), nullable=False),
        sa.Column("occurred_at", UtcDateTime(), nullable=False),
        sa.Column("victim_key", sa.String(64), nullable=True),
        sa.Column("location_key", sa.String(), nullable=True),
        sa.Column("rules_met", JsonType, nullable=False),
        sa.Column("payload", JsonType, nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_assessments_victim_occurred", "assessments", ["victim_key", "occurred_at"])
    op.create_index(
        "ix_assessments_location_occurred", "assessments", ["location_key", "occurred_at"]
    )
    op.create_index("ix_assessments_occurred", "assessments", ["occurred_at"])
    op.create_table(
        "escalations",
        sa.Column("escalation_id", sa.String(64), primary_key=True),
        sa.Column("subject_type", sa.String(16), nullable=False),
        sa.Column("subject_key", sa.String(), nullable=False),
        sa.Column("rule_id", sa.String(), nullable=False),
        sa.Column("incident_id", sa.String(), nullable=False),
        sa.Column("occurred_at", UtcDateTime(), nullable=False),
        sa.Column("raised_at", UtcDateTime(), nullable=False),
        sa.Column("received_at", UtcDateTime(), nullable=False),
        sa.Column("payload", JsonType, nullable=False),
    )
    op.create_index("ix_escalations_raised", "escalations", ["raised_at", "escalation_id"])
    op.create_index(
        "ix_escalations_type_raised", "escalations", ["subject_type", "raised_at", "escalation_id"]
    )
    op.create_index("ix_escalations_subject", "escalations", ["subject_type", "subject_key"])


def downgrade() -> None:
    op.drop_table("escalations")
    op.drop_table("assessments")
