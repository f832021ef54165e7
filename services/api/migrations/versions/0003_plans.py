"""Problem-solving plans (SARA): one per escalation, supervised, closed with an outcome.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from services.api.models import JsonType, UtcDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "plans",
        sa.Column("plan_id", sa.String(64), primary_key=True),
        sa.Column("escalation_id", sa.String(64), nullable=False, unique=True),
        sa.Column("subject_type", sa.String(16), nullable=False),
        sa.Column("subject_key", sa.String(), nullable=False),
        sa.Column("rule_id", sa.String(), nullable=True),
        sa.Column("radius_m", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("status", sa.String(16), nullable=False, server_default="draft"),
        sa.Column("district_code", sa.String(32), nullable=False, server_default="unassigned"),
        sa.Column("ward_code", sa.String(32), nullable=False, server_default="unassigned"),
        sa.Column("scanning", JsonType, nullable=False),
        sa.Column("problem_statement", sa.Text(), nullable=True),
        sa.Column("analysis", sa.Text(), nullable=True),
        sa.Column("responses", JsonType, nullable=False),
        sa.Column("success_measure", sa.Text(), nullable=True),
        sa.Column("evaluation_due", sa.String(10), nullable=True),
        sa.Column("opened_at", UtcDateTime(), nullable=False),
        sa.Column("opened_by", sa.String(200), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("submitted_at", UtcDateTime(), nullable=True),
        sa.Column("submitted_by", sa.String(200), nullable=True),
        sa.Column("signed_off_at", UtcDateTime(), nullable=True),
        sa.Column("signed_off_by", sa.String(200), nullable=True),
        sa.Column("review_due_at", UtcDateTime(), nullable=True),
        sa.Column("closed_at", UtcDateTime(), nullable=True),
        sa.Column("closed_by", sa.String(200), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.Column("evaluation", sa.Text(), nullable=True),
        sa.Column("incidents_before", sa.Integer(), nullable=True),
        sa.Column("incidents_after", sa.Integer(), nullable=True),
        sa.Column("before_after", JsonType, nullable=True),
    )
    op.create_index("ix_plans_status_opened", "plans", ["status", "opened_at", "plan_id"])
    op.create_index("ix_plans_district_opened", "plans", ["district_code", "opened_at"])
    op.create_index("ix_plans_opened", "plans", ["opened_at", "plan_id"])


def downgrade() -> None:
    op.drop_table("plans")
