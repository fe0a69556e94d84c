"""Stored inputs (issue 14): a tenant's reusable models and datasets, and the jobs that use them or rerun others.

`input_files` holds one row per distinct file a tenant uploaded to `POST /models` or `POST /datasets`
(content-addressed: unique on tenant, kind and sha256). A job made from stored ids names them in
`jobs.model_id` / `jobs.dataset_id`; a rerun names its original in `jobs.rerun_of`.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_JOB_COLUMNS = ("model_id", "dataset_id", "rerun_of")


def upgrade() -> None:
    """Creates input_files and adds the stored-input and rerun references to jobs (nullable: old jobs)."""
    op.create_table(
        "input_files",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('model', 'dataset')", name="ck_input_files_kind"),
        sa.UniqueConstraint("tenant", "kind", "sha256", name="uq_input_files_tenant_kind_sha256"),
    )
    op.create_index("ix_input_files_tenant_kind_created", "input_files", ["tenant", "kind", "created_at", "id"])
    for name in _JOB_COLUMNS:
        op.add_column("jobs", sa.Column(name, sa.String(36), nullable=True))
        op.create_index(f"ix_jobs_{name}", "jobs", [name])


def downgrade() -> None:
    """Drops the job references (batch mode: SQLite rebuilds the table) and input_files."""
    for name in _JOB_COLUMNS:
        op.drop_index(f"ix_jobs_{name}", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        for name in _JOB_COLUMNS:
            batch.drop_column(name)
    op.drop_index("ix_input_files_tenant_kind_created", table_name="input_files")
    op.drop_table("input_files")
