"""Grid cells on assessments: radius scans read the cells around their point.

* assessments: ``grid_cell``, the 100 m cell of (easting, northing) as one integer
  (``services/api/grid.py``), filled in here for the rows there are, and the index
  ``ix_assessments_cell_occurred`` (grid_cell, occurred_at, easting, northing): the cells
  around a point, optionally over a time window, with the point, so that rows outside the
  square around the circle are not read.

A location's radius scan (a plan's scanning and before-and-after counts, a location's
history) read a north-south strip of the force area by ``ix_assessments_grid``; it now
reads the few cells around the point. The backfill is the same arithmetic as
``grid.cell_of`` in SQL that SQLite and PostgreSQL run alike: each coordinate clamped into
the bounds, divided by the cell size (whole numbers, non-negative: the division is the
floor on both), the easting's cell times the stride plus the northing's. Written out here,
not imported, so that this revision keeps meaning what it meant if the code changes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

CELL_M = 100
E_MAX = 700_000
N_MAX = 1_300_000
STRIDE = 100_000


def _cell_of(column: str, high: int) -> str:
    clamped = f"CASE WHEN {column} < 0 THEN 0 WHEN {column} > {high} THEN {high} ELSE {column} END"
    return f"CAST(({clamped}) / {CELL_M} AS INTEGER)"


BACKFILL = (
    f"UPDATE assessments SET grid_cell = "
    f"{_cell_of('easting', E_MAX)} * {STRIDE} + {_cell_of('northing', N_MAX)} "
    "WHERE easting IS NOT NULL AND northing IS NOT NULL"
)


def upgrade() -> None:
    with op.batch_alter_table("assessments") as table:
        table.add_column(sa.Column("grid_cell", sa.Integer(), nullable=True))
    op.execute(BACKFILL)
    op.create_index(
        "ix_assessments_cell_occurred",
        "assessments",
        ["grid_cell", "occurred_at", "easting", "northing"],
    )


def downgrade() -> None:
    op.drop_index("ix_assessments_cell_occurred", table_name="assessments")
    with op.batch_alter_table("assessments") as table:
        table.drop_column("grid_cell")
