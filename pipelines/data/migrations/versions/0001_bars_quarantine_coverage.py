"""Bars, quarantine and ingest coverage.

On PostgreSQL, ``bars`` becomes a TimescaleDB hypertable with a compression policy when the
extension is available, and a natively range-partitioned table (monthly partitions, created on
demand by the store) otherwise.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def _ts() -> sa.types.TypeEngine:  # type: ignore[type-arg]
    return (
        sa.DateTime(timezone=True)
        if op.get_bind().dialect.name == "postgresql"
        else sa.BigInteger()
    )


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        _bars_postgres(bind)
    else:
        op.create_table(
            "bars",
            *_bar_columns(),
            sa.PrimaryKeyConstraint("timeframe", "symbol", "ts", name="bars_pkey"),
        )
    op.create_table(
        "quarantine",
        sa.Column("fingerprint", sa.String(64), primary_key=True),
        sa.Column("batch", sa.String(200), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("source_file", sa.Text, nullable=False),
        sa.Column("source_row", sa.BigInteger, nullable=False),
        sa.Column("symbol", sa.String(64)),
        sa.Column("ts", _ts()),
        sa.Column("rule", sa.String(40), nullable=False),
        sa.Column("detail", sa.Text),
        sa.Column("raw", sa.Text, nullable=False),
    )
    op.create_index("quarantine_batch_idx", "quarantine", ["batch"])
    op.create_index("quarantine_symbol_ts_idx", "quarantine", ["symbol", "ts"])
    op.create_table(
        "ingest_coverage",
        sa.Column("source", sa.String(64), primary_key=True),
        sa.Column("timeframe", sa.String(8), primary_key=True),
        sa.Column("symbol", sa.String(16), primary_key=True),
        sa.Column("start", _ts(), primary_key=True),
        sa.Column("end", _ts(), nullable=False),
        sa.Column("batch", sa.String(200), nullable=False),
    )


def _bar_columns() -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        sa.Column("timeframe", sa.String(8), nullable=False),
        sa.Column("symbol", sa.String(16), nullable=False),
        sa.Column("ts", _ts(), nullable=False),
        sa.Column("open", sa.Float(53), nullable=False),
        sa.Column("high", sa.Float(53), nullable=False),
        sa.Column("low", sa.Float(53), nullable=False),
        sa.Column("close", sa.Float(53), nullable=False),
        sa.Column("volume", sa.Float(53), nullable=False),
        sa.Column("vwap", sa.Float(53)),
        sa.Column("trade_count", sa.BigInteger),
        sa.Column("bar_count", sa.Integer, nullable=False),
        sa.Column("flags", sa.Integer, nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
    ]


def _bars_postgres(bind: sa.engine.Connection) -> None:
    has_timescale = bind.execute(
        sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")
    ).first()
    cols = """
        timeframe varchar(8) NOT NULL, symbol varchar(16) NOT NULL, ts timestamptz NOT NULL,
        open double precision NOT NULL, high double precision NOT NULL,
        low double precision NOT NULL, close double precision NOT NULL,
        volume double precision NOT NULL, vwap double precision, trade_count bigint,
        bar_count integer NOT NULL, flags integer NOT NULL, source varchar(64) NOT NULL,
        CONSTRAINT bars_pkey PRIMARY KEY (timeframe, symbol, ts)
    """
    if has_timescale:
        op.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        op.execute(f"CREATE TABLE bars ({cols})")
        op.execute(
            "SELECT create_hypertable('bars', 'ts', chunk_time_interval => interval '7 days')"
        )
        op.execute(
            "ALTER TABLE bars SET (timescaledb.compress, "
            "timescaledb.compress_segmentby = 'timeframe, symbol', "
            "timescaledb.compress_orderby = 'ts')"
        )
        op.execute("SELECT add_compression_policy('bars', interval '30 days')")
    else:
        op.execute(f"CREATE TABLE bars ({cols}) PARTITION BY RANGE (ts)")
