"""Tables of the trading database (SQLAlchemy Core).

The schema itself is created and changed only by the versioned migrations in
``pipelines/data/migrations``; these definitions are what the code reads and writes. Text that
comes from outside (symbols, source and file names, batch names) is unbounded ``text``, so that
whatever a source sends can be stored or quarantined alike on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.types import TypeDecorator, TypeEngine


class UtcTimestamp(TypeDecorator[Any]):
    """A UTC instant: ``timestamptz`` on PostgreSQL, integer microseconds since the epoch on
    SQLite (which has no timestamp type; integers keep order, range queries and exactness)."""

    impl = BigInteger
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(DateTime(timezone=True))
        return dialect.type_descriptor(BigInteger())


metadata = MetaData()

bars = Table(
    "bars",
    metadata,
    Column("timeframe", String(8), primary_key=True),
    Column("symbol", Text, primary_key=True),
    Column("ts", UtcTimestamp(), primary_key=True),
    Column("open", Float(53), nullable=False),
    Column("high", Float(53), nullable=False),
    Column("low", Float(53), nullable=False),
    Column("close", Float(53), nullable=False),
    Column("volume", Float(53), nullable=False),
    Column("vwap", Float(53)),
    Column("trade_count", BigInteger),
    Column("bar_count", Integer, nullable=False),
    Column("flags", Integer, nullable=False),
    Column("source", Text, nullable=False),
)

quarantine = Table(
    "quarantine",
    metadata,
    Column("fingerprint", String(64), primary_key=True),
    Column("batch", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("source_file", Text, nullable=False),
    Column("source_row", BigInteger, nullable=False),
    Column("symbol", Text),
    Column("ts", UtcTimestamp()),
    Column("rule", String(40), nullable=False),
    Column("detail", Text),
    Column("raw", Text, nullable=False),
    # The interval [fetch_start, fetch_end) of the fetch that quarantined the row: a later fetch
    # of a window containing it supersedes the row even when its own time could not be parsed.
    Column("fetch_start", UtcTimestamp()),
    Column("fetch_end", UtcTimestamp()),
)

ingest_coverage = Table(
    "ingest_coverage",
    metadata,
    Column("source", Text, primary_key=True),
    Column("timeframe", String(8), primary_key=True),
    Column("symbol", Text, primary_key=True),
    Column("start", UtcTimestamp(), primary_key=True),
    Column("end", UtcTimestamp(), nullable=False),
    Column("batch", Text, nullable=False),
)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class UtcInstant(UtcTimestamp):
    """A :class:`UtcTimestamp` that binds and returns tz-aware ``datetime`` values itself
    (integer microseconds on SQLite), so that code using it needs no per-dialect conversion."""

    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise ValueError(f"{value!r} is not a tz-aware datetime; pass UTC instants")
        if dialect.name == "postgresql":
            return value
        return (value - _EPOCH) // _MICROSECOND

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, int):
            return _EPOCH + value * _MICROSECOND
        return value.astimezone(UTC)  # type: ignore[no-any-return]


# The kill switch of the trading path, one row per name ("global" unless a deployment runs
# several): tripped by a limit, a person or the live session; reset only by a person.
kill_switch = Table(
    "kill_switch",
    metadata,
    Column("name", Text, primary_key=True),
    Column("tripped", Boolean, nullable=False),
    Column("reason", Text, nullable=False),
    Column("actor", Text, nullable=False),
    Column("since", UtcInstant()),
)

# Alerts sent (outcome ``sent``, with the sinks that took them) and held back by the rate
# limit (``rate_limited``); duplicates within the de-duplication window are not logged.
alert_log = Table(
    "alert_log",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column("at", UtcInstant(), nullable=False),
    Column("key", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("severity", String(8), nullable=False),
    Column("summary", Text, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("sinks", Text, nullable=False),
    Column("details", Text, nullable=True),  # kept to send again what no sink delivered
)

# What the risk layer did, one row per pipelines.risk.events.RiskEvent: refusals, changes of
# trading state, kill-switch trips and resets, cancels. ``values_json`` holds its numbers.
risk_events = Table(
    "risk_events",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column("ts", UtcInstant(), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("rule", Text, nullable=False),
    Column("detail", Text, nullable=False),
    Column("symbol", Text),
    Column("client_order_id", Text),
    Column("state_from", String(10)),
    Column("state_to", String(10)),
    Column("actor", Text, nullable=False),
    Column("values_json", Text, nullable=False),
)

# The live session's record (pipelines.live): everything it saw and did, per session (the New
# York date, ISO text). Times are UTC instants; prices of fills are exact decimal strings.

# One row per session attempt: the run driving it and when it last showed it was alive.
live_heartbeat = Table(
    "live_heartbeat",
    metadata,
    Column("session", String(10), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("run_id", Text, nullable=False),
    Column("beat_at", UtcInstant(), nullable=False),
    Column("phase", String(16), nullable=False),
    Column("last_bar", UtcInstant()),
    Column("state", String(10), nullable=False),
)

# Every minute bar received (stream, REST backfill or a correction), first version kept in
# ``open``..``volume`` and the newest correction counted in ``updates``.
live_minute_bars = Table(
    "live_minute_bars",
    metadata,
    Column("symbol", Text, primary_key=True),
    Column("ts", UtcInstant(), primary_key=True),
    Column("session", String(10), nullable=False),
    Column("open", Float(53), nullable=False),
    Column("high", Float(53), nullable=False),
    Column("low", Float(53), nullable=False),
    Column("close", Float(53), nullable=False),
    Column("volume", Float(53), nullable=False),
    Column("source", Text, nullable=False),
    Column("received_at", UtcInstant(), nullable=False),
    Column("late", Boolean, nullable=False),
    Column("updates", Integer, nullable=False),
)

# One row per decided bar: the path's state after it (JSON, PathState.to_dict), the SHA-256 of
# the feature rows the model saw, the predictions, what was intended and sent.
live_decisions = Table(
    "live_decisions",
    metadata,
    Column("strategy", Text, primary_key=True),
    Column("bar_ts", UtcInstant(), primary_key=True),
    Column("session", String(10), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("decided_at", UtcInstant(), nullable=False),
    Column("features_sha256", String(64), nullable=False),
    Column("state", String(10), nullable=False),
    Column("equity", Float(53), nullable=False),
    Column("path_state", Text, nullable=False),
    Column("predictions", Text, nullable=False),
    Column("intended", Text, nullable=False),
    Column("orders", Text, nullable=False),
    Column("cancels", Text, nullable=False),
    Column("positions", Text, nullable=False),
)

# Every order the session meant to send, written before it is sent: ``status`` pending (not yet
# acknowledged), then the broker's; ``filled_qty`` the most the broker has reported filled.
live_orders = Table(
    "live_orders",
    metadata,
    Column("client_order_id", String(64), primary_key=True),
    Column("strategy", Text, nullable=False),
    Column("session", String(10), nullable=False),
    Column("symbol", Text, nullable=False),
    Column("bar_ts", UtcInstant(), nullable=False),
    Column("intent", Text, nullable=False),
    Column("side", String(4), nullable=False),
    Column("qty", BigInteger, nullable=False),
    Column("created_at", UtcInstant(), nullable=False),
    Column("broker_id", Text),
    Column("status", String(24), nullable=False),
    Column("filled_qty", BigInteger, nullable=False),
    Column("filled_avg_price", Text),
    Column("updated_at", UtcInstant(), nullable=False),
    Column("reason", Text),
)

# Executions, once each (the stream's execution id, or the order's id and cumulative quantity
# when a fill is learnt from REST).
live_fills = Table(
    "live_fills",
    metadata,
    Column("execution_id", Text, primary_key=True),
    Column("client_order_id", String(64), nullable=False),
    Column("symbol", Text, nullable=False),
    Column("side", String(4), nullable=False),
    Column("qty", BigInteger, nullable=False),
    Column("price", Text, nullable=False),
    Column("ts", UtcInstant(), nullable=False),
    Column("source", String(8), nullable=False),
)

# The broker's positions as read at each reconciliation.
live_positions = Table(
    "live_positions",
    metadata,
    Column("session", String(10), primary_key=True),
    Column("ts", UtcInstant(), primary_key=True),
    Column("symbol", Text, primary_key=True),
    Column("qty", BigInteger, nullable=False),
    Column("expected", BigInteger, nullable=False),
)
