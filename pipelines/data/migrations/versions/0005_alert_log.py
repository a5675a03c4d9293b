"""The alert log: every alert sent, and every one held back by the rate limit.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def _ts() -> sa.types.TypeEngine:  # type: ignore[type-arg]
    return (
        sa.DateTime(timezone=True)
        if op.get_bind().dialect.name == "postgresql"
        else sa.BigInteger()
    )


def upgrade() -> None:
    op.create_table(
        "alert_log",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("at", _ts(), nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("severity", sa.String(8), nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("sinks", sa.Text, nullable=False),
    )
    op.create_index("alert_log_key_at_idx", "alert_log", ["key", "at"])
    op.create_index("alert_log_at_idx", "alert_log", ["at"])


def downgrade() -> None:
    op.drop_index("alert_log_at_idx", "alert_log")
    op.drop_index("alert_log_key_at_idx", "alert_log")
    op.drop_table("alert_log")
