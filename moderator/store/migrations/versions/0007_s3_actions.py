"""S3 actions on decisions: per-object state and the log of every step tried.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "s3_action_state",
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("decision", sa.String(16), nullable=True),
        sa.Column("rule", sa.Text(), nullable=True),
        sa.Column("version_id", sa.String(1024), nullable=True),
        sa.Column("etag", sa.String(255), nullable=True),
        sa.Column("tags", Json, nullable=True),
        sa.Column("prior_tags", Json, nullable=True),
        sa.Column("moved_to", sa.Text(), nullable=True),
        sa.Column("moved_version_id", sa.String(1024), nullable=True),
        sa.Column("moved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_event_id", sa.String(64), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("uri", name=op.f("pk_s3_action_state")),
    )
    op.create_table(
        "s3_action_log",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("step", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_s3_action_log")),
    )
    op.create_index(op.f("ix_s3_action_log_event_id"), "s3_action_log", ["event_id"])
    op.create_index(op.f("ix_s3_action_log_outcome"), "s3_action_log", ["outcome", "created_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_s3_action_log_outcome"), table_name="s3_action_log")
    op.drop_index(op.f("ix_s3_action_log_event_id"), table_name="s3_action_log")
    op.drop_table("s3_action_log")
    op.drop_table("s3_action_state")
