"""Sweeps (issue 14): a sweep row (stored inputs, shared config, the dense baseline) and its points' jobs.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Creates sweeps (listed per tenant, newest first) and sweep_points (one job each, deleted with it)."""
    op.create_table(
        "sweeps",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("model_id", sa.String(36), nullable=False),
        sa.Column("dataset_id", sa.String(36), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("baseline", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_sweeps_tenant_created", "sweeps", ["tenant", "created_at", "id"])
    op.create_table(
        "sweep_points",
        sa.Column("sweep_id", sa.String(36), sa.ForeignKey("sweeps.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("position", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.String(36), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("target", sa.JSON(), nullable=False),
        sa.UniqueConstraint("job_id", name="uq_sweep_points_job"),
    )


def downgrade() -> None:
    """Drops both tables (the points' jobs stay, as plain jobs)."""
    op.drop_table("sweep_points")
    op.drop_index("ix_sweeps_tenant_created", table_name="sweeps")
    op.drop_table("sweeps")
