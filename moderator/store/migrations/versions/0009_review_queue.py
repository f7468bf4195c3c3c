"""The indexed review queue, one row per content, and decisions per content (issues 17, 18).

Backfilled from the store as it is: a content's latest review becomes its decision, then the
queue is built from the flagged items (store/queue_index.rebuild, the same SQL the refresh
runs), and the new tables are analysed.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

PlaceUri = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")

# The latest review of each content (reviews are append-only: the highest id is the latest);
# its place is the item the review named (NULL when that item is gone).
BACKFILL_DECISIONS = """
INSERT INTO content_decisions (sha256, decision, verdict, review_id, item_id, reviewer, decided_at)
SELECT r.item_sha256, r.new_decision, r.verdict, r.id,
       (SELECT MIN(i.id) FROM items i WHERE i.uri = r.item_uri), r.reviewer, r.created_at
FROM reviews r
WHERE r.item_sha256 IS NOT NULL
  AND r.id = (SELECT MAX(r2.id) FROM reviews r2 WHERE r2.item_sha256 = r.item_sha256)
"""


def upgrade() -> None:
    op.create_table(
        "queue_contents",
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("severity", sa.Integer(), nullable=False),
        sa.Column("top_score", sa.Float(), nullable=False),
        sa.Column("item_id", sa.BigInteger(), nullable=False),
        sa.Column("items", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_queue_contents")),
    )
    op.create_index("ix_queue_contents_order", "queue_contents", ["severity", "top_score", "item_id"])
    op.create_index(op.f("ix_queue_contents_updated_at"), "queue_contents", ["updated_at"])
    op.create_table(
        "queue_facets",
        sa.Column("facet", sa.String(320), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("severity", sa.Integer(), nullable=False),
        sa.Column("top_score", sa.Float(), nullable=False),
        sa.Column("item_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("facet", "sha256", name=op.f("pk_queue_facets")),
    )
    op.create_index("ix_queue_facets_order", "queue_facets", ["facet", "severity", "top_score", "item_id"])
    op.create_index(op.f("ix_queue_facets_sha256"), "queue_facets", ["sha256"])
    op.create_table(
        "queue_places",
        sa.Column("item_id", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("uri", PlaceUri, nullable=False),
        sa.PrimaryKeyConstraint("item_id", name=op.f("pk_queue_places")),
    )
    op.create_index(op.f("ix_queue_places_sha256"), "queue_places", ["sha256", "item_id"])
    op.create_index(op.f("ix_queue_places_uri"), "queue_places", ["uri"])
    op.create_table(
        "content_decisions",
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("review_id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.BigInteger(), nullable=True),
        sa.Column("reviewer", sa.String(64), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["review_id"], ["reviews.id"], name=op.f("fk_content_decisions_review_id_reviews")),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_content_decisions")),
    )
    op.create_index(op.f("ix_content_decisions_review_id"), "content_decisions", ["review_id"])

    from moderator.store import queue_index

    conn = op.get_bind()
    conn.exec_driver_sql(BACKFILL_DECISIONS)
    queue_index.rebuild(conn)
    queue_index.analyze(conn)


def downgrade() -> None:
    op.drop_table("content_decisions")
    op.drop_table("queue_places")
    op.drop_table("queue_facets")
    op.drop_table("queue_contents")
