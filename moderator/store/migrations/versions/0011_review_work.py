"""Appeals, review leases and undos (issue 18).

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from moderator.store.tables import UTCDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "review_leases",
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("acquired_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_review_leases")),
    )
    op.create_index(op.f("ix_review_leases_expires_at"), "review_leases", ["expires_at"])
    op.create_table(
        "appeals",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("item_id", BigId, nullable=False),
        sa.Column("item_uri", sa.Text(), nullable=False),
        sa.Column("item_sha256", sa.String(64), nullable=True),
        sa.Column("opened_by", sa.String(64), nullable=False),
        sa.Column("opened_by_id", sa.Integer(), nullable=True),
        sa.Column("statement", sa.Text(), nullable=False),
        sa.Column("appealed_review_id", sa.Integer(), nullable=True),
        sa.Column("appealed_decision", sa.String(16), nullable=False),
        sa.Column("appealed_reviewer", sa.String(64), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("decided_by", sa.String(64), nullable=True),
        sa.Column("decision_review_id", sa.Integer(), nullable=True),
        sa.Column("decision", sa.String(16), nullable=True),
        sa.Column("reasons", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("decided_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["opened_by_id"], ["users.id"], name=op.f("fk_appeals_opened_by_id_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["appealed_review_id"], ["reviews.id"], name=op.f("fk_appeals_appealed_review_id_reviews")
        ),
        sa.ForeignKeyConstraint(
            ["decision_review_id"], ["reviews.id"], name=op.f("fk_appeals_decision_review_id_reviews")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_appeals")),
    )
    op.create_index(op.f("ix_appeals_item_id"), "appeals", ["item_id"])
    op.create_index("ix_appeals_state", "appeals", ["state", "id"])
    op.create_table(
        "review_undos",
        sa.Column("review_id", sa.Integer(), nullable=False),
        sa.Column("undo_review_id", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["review_id"], ["reviews.id"], name=op.f("fk_review_undos_review_id_reviews")),
        sa.ForeignKeyConstraint(
            ["undo_review_id"], ["reviews.id"], name=op.f("fk_review_undos_undo_review_id_reviews")
        ),
        sa.PrimaryKeyConstraint("review_id", name=op.f("pk_review_undos")),
        sa.UniqueConstraint("undo_review_id", name=op.f("uq_review_undos_undo_review_id")),
    )


def downgrade() -> None:
    op.drop_table("review_undos")
    op.drop_index("ix_appeals_state", table_name="appeals")
    op.drop_index(op.f("ix_appeals_item_id"), table_name="appeals")
    op.drop_table("appeals")
    op.drop_index(op.f("ix_review_leases_expires_at"), table_name="review_leases")
    op.drop_table("review_leases")
