"""The kill switch and the risk events.

``kill_switch`` holds one row per switch name (``global`` by default): whether it is tripped,
why, by whom and since when. ``risk_events`` holds what the risk layer did: refused orders with
their rule and numbers, changes of trading state, kill-switch trips and resets, cancels.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def _ts() -> sa.types.TypeEngine:  # type: ignore[type-arg]
    return (
        sa.DateTime(timezone=True)
        if op.get_bind().dialect.name == "postgresql"
        else sa.BigInteger()
    )


def upgrade() -> None:
    op.create_table(
        "kill_switch",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("tripped", sa.Boolean, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("since", _ts()),
    )
    op.create_table(
        "risk_events",
        # INTEGER PRIMARY KEY is SQLite's rowid (autoincrementing); bigserial on PostgreSQL.
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("ts", _ts(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("rule", sa.Text, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("symbol", sa.Text),
        sa.Column("client_order_id", sa.Text),
        sa.Column("state_from", sa.String(10)),
        sa.Column("state_to", sa.String(10)),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("values_json", sa.Text, nullable=False),
    )
    op.create_index("risk_events_ts_idx", "risk_events", ["ts"])
    op.create_index("risk_events_kind_rule_idx", "risk_events", ["kind", "rule"])


def downgrade() -> None:
    op.drop_index("risk_events_kind_rule_idx", "risk_events")
    op.drop_index("risk_events_ts_idx", "risk_events")
    op.drop_table("risk_events")
    op.drop_table("kill_switch")
