"""Embeddings in insertion order (seq), for the on-disk search index's O(1) freshness (issue 17).

PostgreSQL: an identity column; adding it numbers the existing rows. SQLite only
auto-increments a primary key, so the column defaults to 0 and a trigger sets each new
row's seq to its rowid (rowids only grow while the largest row is kept, and embeddings
are only ever inserted); existing rows get their rowid. Index (model_id, seq): the
freshness probe max(seq) and the catch-up read `seq > watermark` of one model.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

TRIGGER = "embeddings_seq"


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.add_column("embeddings", sa.Column("seq", sa.BigInteger(), nullable=False, server_default="0"))
        op.execute("UPDATE embeddings SET seq = rowid")
        op.execute(
            f"CREATE TRIGGER {TRIGGER} AFTER INSERT ON embeddings FOR EACH ROW WHEN NEW.seq = 0 "
            "BEGIN UPDATE embeddings SET seq = NEW.rowid WHERE rowid = NEW.rowid; END"
        )
    else:
        op.add_column("embeddings", sa.Column("seq", sa.BigInteger(), sa.Identity(), nullable=False))
    op.create_index("ix_embeddings_model_id", "embeddings", ["model_id", "seq"])


def downgrade() -> None:
    op.drop_index("ix_embeddings_model_id", table_name="embeddings")
    if op.get_bind().dialect.name == "sqlite":
        op.execute(f"DROP TRIGGER IF EXISTS {TRIGGER}")
        with op.batch_alter_table("embeddings") as batch:
            batch.drop_column("seq")
    else:
        op.drop_column("embeddings", "seq")
