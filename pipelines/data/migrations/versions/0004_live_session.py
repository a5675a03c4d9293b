"""The live session's record: heartbeat, minute bars, decisions, orders, fills, positions.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def _ts() -> sa.types.TypeEngine:  # type: ignore[type-arg]
    return (
        sa.DateTime(timezone=True)
        if op.get_bind().dialect.name == "postgresql"
        else sa.BigInteger()
    )


def _price() -> sa.types.TypeEngine:  # type: ignore[type-arg]
    return sa.Float(53)


def upgrade() -> None:
    op.create_table(
        "live_heartbeat",
        sa.Column("session", sa.String(10), primary_key=True),
        sa.Column("attempt", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Text, nullable=False),
        sa.Column("beat_at", _ts(), nullable=False),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("last_bar", _ts()),
        sa.Column("state", sa.String(10), nullable=False),
    )
    op.create_table(
        "live_minute_bars",
        sa.Column("symbol", sa.Text, primary_key=True),
        sa.Column("ts", _ts(), primary_key=True),
        sa.Column("session", sa.String(10), nullable=False),
        *(sa.Column(c, _price(), nullable=False) for c in ("open", "high", "low", "close")),
        sa.Column("volume", sa.Float(53), nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("received_at", _ts(), nullable=False),
        sa.Column("late", sa.Boolean, nullable=False),
        sa.Column("updates", sa.Integer, nullable=False),
    )
    op.create_index("live_minute_bars_session_idx", "live_minute_bars", ["session"])
    op.create_table(
        "live_decisions",
        sa.Column("strategy", sa.Text, primary_key=True),
        sa.Column("bar_ts", _ts(), primary_key=True),
        sa.Column("session", sa.String(10), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("decided_at", _ts(), nullable=False),
        sa.Column("features_sha256", sa.String(64), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("equity", sa.Float(53), nullable=False),
        *(
            sa.Column(c, sa.Text, nullable=False)
            for c in ("path_state", "predictions", "intended", "orders", "cancels", "positions")
        ),
    )
    op.create_index("live_decisions_session_idx", "live_decisions", ["session"])
    op.create_table(
        "live_orders",
        sa.Column("client_order_id", sa.String(64), primary_key=True),
        sa.Column("strategy", sa.Text, nullable=False),
        sa.Column("session", sa.String(10), nullable=False),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("bar_ts", _ts(), nullable=False),
        sa.Column("intent", sa.Text, nullable=False),
        sa.Column("side", sa.String(4), nullable=False),
        sa.Column("qty", sa.BigInteger, nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("broker_id", sa.Text),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("filled_qty", sa.BigInteger, nullable=False),
        sa.Column("filled_avg_price", sa.Text),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.Column("reason", sa.Text),
    )
    op.create_index("live_orders_session_idx", "live_orders", ["session"])
    op.create_table(
        "live_fills",
        sa.Column("execution_id", sa.Text, primary_key=True),
        sa.Column("client_order_id", sa.String(64), nullable=False),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("side", sa.String(4), nullable=False),
        sa.Column("qty", sa.BigInteger, nullable=False),
        sa.Column("price", sa.Text, nullable=False),
        sa.Column("ts", _ts(), nullable=False),
        sa.Column("source", sa.String(8), nullable=False),
    )
    op.create_table(
        "live_positions",
        sa.Column("session", sa.String(10), primary_key=True),
        sa.Column("ts", _ts(), primary_key=True),
        sa.Column("symbol", sa.Text, primary_key=True),
        sa.Column("qty", sa.BigInteger, nullable=False),
        sa.Column("expected", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "live_positions",
        "live_fills",
        "live_orders",
        "live_decisions",
        "live_minute_bars",
        "live_heartbeat",
    ):
        op.drop_table(table)
