"""Decision events: the outbox, webhook endpoints, deliveries; items.event_seq and previous_decision.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
When = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("previous_decision", sa.String(16), nullable=True))
        batch.add_column(sa.Column("event_seq", sa.Integer(), server_default="0", nullable=False))
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("events", Json, nullable=False),
        sa.Column("decisions", Json, nullable=False),
        sa.Column("policies", Json, nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_endpoints")),
    )
    op.create_table(
        "outbox_events",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("item_id", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("payload", Json, nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.Column("dispatched", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_events")),
        sa.UniqueConstraint("item_id", "seq", name=op.f("uq_outbox_events_item_id")),
    )
    op.create_index(op.f("ix_outbox_events_created_at"), "outbox_events", ["created_at"])
    op.create_index(op.f("ix_outbox_events_dispatched"), "outbox_events", ["dispatched"])
    op.create_table(
        "event_deliveries",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("target", sa.String(255), nullable=False),
        sa.Column("item_id", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", When, nullable=False),
        sa.Column("retry_since", When, nullable=False),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_expires", When, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("delivered_at", When, nullable=True),
        sa.Column("created_at", When, nullable=False),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["outbox_events.id"],
            name=op.f("fk_event_deliveries_event_id_outbox_events"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_deliveries")),
        sa.UniqueConstraint("event_id", "kind", "target", name=op.f("uq_event_deliveries_event_id")),
    )
    op.create_index(op.f("ix_event_deliveries_state"), "event_deliveries", ["state", "next_attempt_at"])
    op.create_index("ix_event_deliveries_order", "event_deliveries", ["kind", "target", "item_id", "seq"])


def downgrade() -> None:
    op.drop_index("ix_event_deliveries_order", table_name="event_deliveries")
    op.drop_index(op.f("ix_event_deliveries_state"), table_name="event_deliveries")
    op.drop_table("event_deliveries")
    op.drop_index(op.f("ix_outbox_events_dispatched"), table_name="outbox_events")
    op.drop_index(op.f("ix_outbox_events_created_at"), table_name="outbox_events")
    op.drop_table("outbox_events")
    op.drop_table("webhook_endpoints")
    with op.batch_alter_table("items") as batch:
        batch.drop_column("event_seq")
        batch.drop_column("previous_decision")
