"""Synchronous verdicts (POST /api/moderate): an item's error reason and external id, who submitted it.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from moderator.store.tables import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("error_reason", sa.String(64), nullable=True))
        batch.add_column(sa.Column("external_id", sa.String(255), nullable=True))
        batch.create_index(op.f("ix_items_external_id"), ["external_id"])
    op.create_table(
        "item_submissions",
        sa.Column("id", BigId, nullable=False, autoincrement=True),
        sa.Column("item_id", BigId, nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("external_id", sa.String(255), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["item_id"], ["items.id"], name=op.f("fk_item_submissions_item_id_items"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_item_submissions_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_item_submissions")),
        sa.UniqueConstraint("item_id", "user_id", name=op.f("uq_item_submissions_item_id")),
    )
    op.create_index(op.f("ix_item_submissions_user_id"), "item_submissions", ["user_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_item_submissions_user_id"), table_name="item_submissions")
    op.drop_table("item_submissions")
    with op.batch_alter_table("items") as batch:
        batch.drop_index(op.f("ix_items_external_id"))
        batch.drop_column("external_id")
        batch.drop_column("error_reason")
