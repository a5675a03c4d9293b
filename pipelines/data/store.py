"""The trading database: bars, quarantine and ingest coverage, through SQLAlchemy Core.

SQLite is the embedded default; a ``postgresql+psycopg://`` URL selects PostgreSQL, where bulk
loads go through ``COPY`` into a temporary table and one ``INSERT ... ON CONFLICT`` upsert. Every
write is idempotent: writing the same bars again changes no row, and the functions say how many
rows they changed. Prices are IEEE doubles in both databases and read back bit for bit.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import psycopg
import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.dialects import postgresql, sqlite

from pipelines.data.schema import STORED_BAR_SCHEMA
from pipelines.data.tables import bars as bars_table
from pipelines.data.tables import ingest_coverage, quarantine
from pipelines.secrets import redact_uri

MIGRATIONS = Path(__file__).parent / "migrations"
_BAR_COLS = [c.name for c in bars_table.columns]
_VALUE_COLS = [c for c in _BAR_COLS if c not in ("timeframe", "symbol", "ts")]
_Q_COLS = [c.name for c in quarantine.columns]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class StoreError(RuntimeError):
    """The trading database refused an operation; the message says which and how to fix it."""


def _micros(ts: datetime) -> int:
    if ts.tzinfo is None:
        raise ValueError(f"timestamp {ts} has no time zone; pass UTC instants")
    delta = ts - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass(frozen=True)
class WriteCounts:
    """Rows written by one call: ``bars_changed`` counts inserted or changed bars (0 when the
    same bars are written again); ``quarantine_added`` counts new quarantine rows."""

    bars_changed: int = 0
    quarantine_added: int = 0


def _alembic_config(connection: sa.Connection) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


class BarStore:
    """Read and write bars, quarantine rows and ingest coverage.

    Example: ``store = BarStore("sqlite:///.quantdag/trading.db"); store.migrate()``.
    """

    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///"):
            path = url.removeprefix("sqlite:///")
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
        self.engine = sa.create_engine(url)
        self.url = url

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    # -- schema ----------------------------------------------------------------------------
    def migrate(self) -> str:
        """Bring the schema to the newest migration; return its revision."""
        with self.engine.begin() as conn:
            command.upgrade(_alembic_config(conn), "head")
        return self.schema_version() or ""

    def schema_version(self) -> str | None:
        with self.engine.connect() as conn:
            return MigrationContext.configure(
                conn, opts={"version_table": "trading_schema_version"}
            ).get_current_revision()

    def require_schema(self) -> None:
        head = ScriptDirectory.from_config(_alembic_config(None)).get_current_head()  # type: ignore[arg-type]
        current = self.schema_version()
        if current != head:
            raise StoreError(
                f"the trading database at {redact_uri(self.url)} is at schema {current}, the code "
                f"needs {head}: run BarStore.migrate() (the assets do this at start)"
            )

    # -- bars ------------------------------------------------------------------------------
    def _ensure_partitions(self, conn: sa.Connection, frame: pl.DataFrame) -> None:
        kind = conn.execute(
            sa.text("SELECT c.relkind FROM pg_class c WHERE c.oid = to_regclass('bars')")
        ).scalar()
        if kind != "p":
            return
        months = frame.select(pl.col("ts").dt.truncate("1mo").unique()).to_series().to_list()
        for m in months:
            nxt = datetime(m.year + (m.month == 12), m.month % 12 + 1, 1, tzinfo=UTC)
            name = f"bars_p{m.year:04d}{m.month:02d}"
            conn.exec_driver_sql(
                f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF bars FOR VALUES FROM "
                f"('{m.isoformat()}') TO ('{nxt.isoformat()}')"
            )

    def upsert_bars(
        self, bars: pl.DataFrame, *, timeframe: str, source: str, conn: sa.Connection | None = None
    ) -> int:
        """Insert or update ``bars`` (stored schema) for ``timeframe``; return rows changed."""
        if bars.height == 0:
            return 0
        frame = bars.select(
            pl.lit(timeframe).alias("timeframe"),
            *(pl.col(c).cast(t) for c, t in STORED_BAR_SCHEMA.items()),
            pl.lit(source).alias("source"),
        ).select(_BAR_COLS)
        if conn is None:
            with self.engine.begin() as c:
                return self._upsert(c, frame)
        return self._upsert(conn, frame)

    def _upsert(self, conn: sa.Connection, frame: pl.DataFrame) -> int:
        cols = ", ".join(f'"{c}"' for c in _BAR_COLS)
        changed = " OR ".join(
            f'bars."{c}" IS DISTINCT FROM excluded."{c}"'
            if self.dialect == "postgresql"
            else f'bars."{c}" IS NOT excluded."{c}"'
            for c in _VALUE_COLS
        )
        sets = ", ".join(f'"{c}" = excluded."{c}"' for c in _VALUE_COLS)
        conflict = f"ON CONFLICT (timeframe, symbol, ts) DO UPDATE SET {sets} WHERE {changed}"
        if self.dialect == "postgresql":
            self._ensure_partitions(conn, frame)
            conn.exec_driver_sql(
                "CREATE TEMP TABLE IF NOT EXISTS bars_load "
                "(LIKE bars INCLUDING DEFAULTS) ON COMMIT DROP"
            )
            self._copy(conn, "bars_load", frame)
            result = conn.exec_driver_sql(
                f"INSERT INTO bars ({cols}) SELECT {cols} FROM bars_load {conflict}"
            )
            conn.exec_driver_sql("DROP TABLE bars_load")
            return int(result.rowcount)
        rows = frame.with_columns(pl.col("ts").dt.epoch("us")).rows()
        marks = ", ".join("?" for _ in _BAR_COLS)
        cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cur.executemany(f"INSERT INTO bars ({cols}) VALUES ({marks}) {conflict}", rows)
            return int(cur.rowcount)
        finally:
            cur.close()

    @staticmethod
    def _copy(conn: sa.Connection, table: str, frame: pl.DataFrame, chunk: int = 100_000) -> None:
        # CSV keeps every double exact (shortest round-trip text); chunks bound the memory.
        cols = ", ".join(f'"{c}"' for c in frame.columns)
        raw = conn.connection.dbapi_connection
        with (
            raw.cursor() as cur,  # type: ignore[union-attr]
            cur.copy(f"COPY {table} ({cols}) FROM STDIN (FORMAT csv)") as copy,
        ):
            for part in frame.iter_slices(chunk):
                copy.write(
                    part.write_csv(
                        include_header=False,
                        datetime_format="%Y-%m-%d %H:%M:%S%.6f+00",
                        null_value="",
                    )
                )

    def read_bars(
        self,
        *,
        timeframe: str,
        start: datetime,
        end: datetime,
        symbols: Sequence[str] | None = None,
    ) -> pl.DataFrame:
        """Bars of ``timeframe`` with ``start <= ts < end`` (UTC), sorted by symbol and time."""
        cols = [c for c in STORED_BAR_SCHEMA if c != "ts"]
        where = "timeframe = :tf AND ts >= :start AND ts < :end"
        params: dict[str, Any] = {"tf": timeframe}
        if symbols is not None:
            where += " AND symbol IN :symbols"
            params["symbols"] = tuple(symbols)
        return self._read(
            f"SELECT {', '.join(cols)}, {{ts}} AS ts FROM bars WHERE {where} ORDER BY symbol, ts",
            params,
            start,
            end,
            {**{c: STORED_BAR_SCHEMA[c] for c in cols}, "ts": pl.Int64()},
        ).select(list(STORED_BAR_SCHEMA))

    def _read(
        self,
        sql: str,
        params: dict[str, Any],
        start: datetime,
        end: datetime,
        schema: dict[str, pl.DataType],
    ) -> pl.DataFrame:
        if self.dialect == "postgresql":
            return self._read_postgres(sql, params | {"start": start, "end": end}, schema)
        sql = sql.replace("{ts}", "ts")
        params |= {"start": _micros(start), "end": _micros(end)}
        stmt = sa.text(sql)
        if "symbols" in params:
            stmt = stmt.bindparams(sa.bindparam("symbols", expanding=True))
        frames = []
        with self.engine.connect() as conn:
            result = conn.execute(stmt, params)
            while rows := result.fetchmany(100_000):
                frames.append(pl.DataFrame(rows, schema=schema, orient="row"))
        frame = pl.concat(frames) if frames else pl.DataFrame(schema=schema)
        return frame.with_columns(pl.col("ts").cast(pl.Datetime("us")).dt.replace_time_zone("UTC"))

    def _read_postgres(
        self, sql: str, params: dict[str, Any], schema: dict[str, pl.DataType]
    ) -> pl.DataFrame:
        # COPY ... TO STDOUT as CSV, parsed by polars: no Python object per value.
        sql = sql.replace("{ts}", "(extract(epoch FROM ts) * 1000000)::bigint")
        sql = re.sub(r"IN :(\w+)", r"= ANY(%(\1)s)", sql)
        sql = re.sub(r"(?<!:):(\w+)", r"%(\1)s", sql)
        if "symbols" in params:
            params["symbols"] = list(params["symbols"])
        with self.engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            query = psycopg.ClientCursor(raw).mogrify(sql, params)  # type: ignore[call-overload]
            buffer = io.BytesIO()
            with (
                raw.cursor() as cur,  # type: ignore[union-attr]
                cur.copy(f"COPY ({query}) TO STDOUT (FORMAT csv)") as copy,
            ):
                for block in copy:
                    buffer.write(block)
        if buffer.tell() == 0:
            frame = pl.DataFrame(schema=schema)
        else:
            buffer.seek(0)
            frame = pl.read_csv(buffer, has_header=False, schema=schema)
        return frame.with_columns(pl.col("ts").cast(pl.Datetime("us")).dt.replace_time_zone("UTC"))

    def count_bars(self, *, timeframe: str | None = None) -> int:
        stmt = sa.select(sa.func.count()).select_from(bars_table)
        if timeframe:
            stmt = stmt.where(bars_table.c.timeframe == timeframe)
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def bar_counts(self) -> pl.DataFrame:
        """Stored bars per symbol and timeframe: columns ``symbol``, ``timeframe``, ``bars``."""
        return self._counts(bars_table.c.symbol, bars_table.c.timeframe, label="bars")

    def quarantine_counts(self) -> pl.DataFrame:
        """Quarantined rows per symbol and rule: columns ``symbol``, ``rule``, ``rows``."""
        return self._counts(quarantine.c.symbol, quarantine.c.rule, label="rows")

    def _counts(self, *columns: sa.Column[Any], label: str) -> pl.DataFrame:
        stmt = sa.select(*columns, sa.func.count().label(label)).group_by(*columns)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).fetchall()
        schema = {**{c.name: pl.String() for c in columns}, label: pl.Int64()}
        return pl.DataFrame(rows, schema=schema, orient="row")

    # -- quarantine ------------------------------------------------------------------------
    def add_quarantine(
        self, rows: pl.DataFrame, *, batch: str, conn: sa.Connection | None = None
    ) -> int:
        """Record quarantined rows (validation's quarantine schema); rows already recorded are
        skipped, so recording the same batch twice adds nothing. Returns rows added."""
        if rows.height == 0:
            return 0
        keyed = rows.with_columns(
            _occ=pl.int_range(pl.len()).over("source", "source_file", "symbol", "ts", "rule", "raw")
        )
        records = []
        for r in keyed.iter_rows(named=True):
            key = "\x1f".join(
                str(r[k]) for k in ("source", "source_file", "symbol", "ts", "rule", "raw", "_occ")
            )
            records.append(
                {
                    "fingerprint": hashlib.sha256(key.encode()).hexdigest(),
                    "batch": batch,
                    **{k: r[k] for k in _Q_COLS if k not in ("fingerprint", "batch")},
                }
            )
        if self.dialect == "sqlite":
            for rec in records:
                rec["ts"] = None if rec["ts"] is None else _micros(rec["ts"])
        ins = (
            (
                postgresql.insert(quarantine)
                if self.dialect == "postgresql"
                else sqlite.insert(quarantine)
            )
            .on_conflict_do_nothing(index_elements=["fingerprint"])
            .returning(quarantine.c.fingerprint)
        )
        if conn is None:
            with self.engine.begin() as c:
                return len(c.execute(ins, records).fetchall())
        return len(conn.execute(ins, records).fetchall())

    def read_quarantine(
        self, *, start: datetime, end: datetime, batch: str | None = None
    ) -> pl.DataFrame:
        """Quarantined rows whose parsed time lies in ``[start, end)``; with ``batch``, also the
        rows of that batch whose time could not be parsed."""
        schema: dict[str, pl.DataType] = {
            "batch": pl.String(),
            "source": pl.String(),
            "source_file": pl.String(),
            "source_row": pl.Int64(),
            "symbol": pl.String(),
            "rule": pl.String(),
            "detail": pl.String(),
            "raw": pl.String(),
            "ts": pl.Int64(),
        }
        cols = [c for c in schema if c != "ts"]
        where = "(ts >= :start AND ts < :end)"
        params: dict[str, Any] = {}
        if batch is not None:
            where += " OR (ts IS NULL AND batch = :batch)"
            params["batch"] = batch
        return self._read(
            f"SELECT {', '.join(cols)}, {{ts}} AS ts FROM quarantine "
            f"WHERE {where} ORDER BY source, source_file, source_row",
            params,
            start,
            end,
            schema,
        )

    def quarantine_by_batch(self, batch: str) -> dict[str, int]:
        stmt = (
            sa.select(quarantine.c.rule, sa.func.count())
            .where(quarantine.c.batch == batch)
            .group_by(quarantine.c.rule)
        )
        with self.engine.connect() as conn:
            return {rule: int(n) for rule, n in conn.execute(stmt)}

    def count_quarantine(self) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(sa.select(sa.func.count()).select_from(quarantine)).scalar_one()
            )

    # -- coverage --------------------------------------------------------------------------
    def covered(
        self, *, source: str, timeframe: str, symbols: Iterable[str]
    ) -> dict[str, list[tuple[datetime, datetime]]]:
        """Intervals ``[start, end)`` already fetched, per symbol."""
        wanted = list(symbols)
        stmt = sa.select(
            ingest_coverage.c.symbol, ingest_coverage.c.start, ingest_coverage.c.end
        ).where(
            ingest_coverage.c.source == source,
            ingest_coverage.c.timeframe == timeframe,
            ingest_coverage.c.symbol.in_(wanted),
        )
        out: dict[str, list[tuple[datetime, datetime]]] = {s: [] for s in wanted}
        with self.engine.connect() as conn:
            for sym, s, e in conn.execute(stmt):
                out[sym].append((self._as_dt(s), self._as_dt(e)))
        return out

    @staticmethod
    def _as_dt(value: Any) -> datetime:
        if isinstance(value, int):
            return _EPOCH + timedelta(microseconds=value)
        return value.astimezone(UTC)  # type: ignore[no-any-return]

    def record_coverage(
        self,
        intervals: Iterable[tuple[str, datetime, datetime]],
        *,
        source: str,
        timeframe: str,
        batch: str,
        conn: sa.Connection,
    ) -> None:
        records = [
            {
                "source": source,
                "timeframe": timeframe,
                "symbol": sym,
                "start": s if self.dialect == "postgresql" else _micros(s),
                "end": e if self.dialect == "postgresql" else _micros(e),
                "batch": batch,
            }
            for sym, s, e in intervals
        ]
        if not records:
            return
        ins = (
            postgresql.insert(ingest_coverage)
            if self.dialect == "postgresql"
            else sqlite.insert(ingest_coverage)
        )
        stmt = ins.on_conflict_do_update(
            index_elements=["source", "timeframe", "symbol", "start"],
            set_={"end": ins.excluded.end, "batch": ins.excluded.batch},
        )
        conn.execute(stmt, records)
