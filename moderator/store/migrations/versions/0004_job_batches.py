"""The batch ledger of queued jobs, and the policies a job's workers could not run.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "job_batches",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("queue", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("items", Json, nullable=True),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("sends", sa.Integer(), nullable=False),
        sa.Column("deliveries", sa.Integer(), nullable=False),
        sa.Column("retry", sa.Integer(), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_batches_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_batches")),
    )
    op.create_index(op.f("ix_job_batches_job_id"), "job_batches", ["job_id"])
    op.create_index(op.f("ix_job_batches_state"), "job_batches", ["state", "sent_at"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("policies_not_run", Json, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("policies_not_run")
    op.drop_index(op.f("ix_job_batches_state"), table_name="job_batches")
    op.drop_index(op.f("ix_job_batches_job_id"), table_name="job_batches")
    op.drop_table("job_batches")
