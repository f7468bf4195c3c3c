"""Initial schema: jobs, items, embeddings, results.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
WHEN = sa.DateTime(timezone=True)
ENUM = sa.String(16)  # StrEnum values (tables._str_enum)


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("created_at", WHEN, nullable=False),
        sa.Column("updated_at", WHEN, nullable=False),
        sa.Column("state", ENUM, nullable=False),
        sa.Column("targets", JSON, nullable=False),
        sa.Column("policies", JSON, nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=True),
        sa.Column("done", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("skipped", sa.BigInteger(), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index(op.f("ix_jobs_created_at"), "jobs", ["created_at"])

    op.create_table(
        "items",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("fingerprint", sa.String(255), nullable=True),
        sa.Column("status", ENUM, nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("meta", JSON, nullable=False),
        sa.Column("decision", ENUM, nullable=True),
        sa.Column("job_id", sa.String(36), nullable=True),
        sa.Column("created_at", WHEN, nullable=False),
        sa.Column("updated_at", WHEN, nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_items_job_id_jobs"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_items")),
        sa.UniqueConstraint("uri", name=op.f("uq_items_uri")),
    )
    op.create_index(op.f("ix_items_sha256"), "items", ["sha256"])
    op.create_index(op.f("ix_items_decision"), "items", ["decision"])
    op.create_index(op.f("ix_items_job_id"), "items", ["job_id"])
    op.create_index(op.f("ix_items_updated_at"), "items", ["updated_at"])

    op.create_table(
        "embeddings",
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("model_id", sa.String(255), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("frames", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", WHEN, nullable=False),
        sa.PrimaryKeyConstraint("sha256", "model_id", name=op.f("pk_embeddings")),
    )

    op.create_table(
        "results",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("item_id", BIG_ID, nullable=False),
        sa.Column("policy", sa.String(255), nullable=False),
        sa.Column("policy_version", sa.String(128), nullable=False),
        sa.Column("scorer", sa.String(255), nullable=False),
        sa.Column("model_id", sa.String(255), nullable=False),
        sa.Column("action", ENUM, nullable=False),
        sa.Column("scores", JSON, nullable=False),
        sa.Column("fired", JSON, nullable=False),
        sa.Column("tags", JSON, nullable=False),
        sa.Column("created_at", WHEN, nullable=False),
        sa.ForeignKeyConstraint(["item_id"], ["items.id"], name=op.f("fk_results_item_id_items"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_results")),
        sa.UniqueConstraint("item_id", "policy", name=op.f("uq_results_item_id")),
    )
    op.create_index(op.f("ix_results_policy"), "results", ["policy"])


def downgrade() -> None:
    op.drop_table("results")
    op.drop_table("embeddings")
    op.drop_table("items")
    op.drop_table("jobs")
