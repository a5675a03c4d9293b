"""The trading database: bars, quarantine and ingest coverage, through SQLAlchemy Core.

SQLite is the embedded default; a ``postgresql+psycopg://`` URL selects PostgreSQL, where bulk
loads go through ``COPY`` into a temporary table and one ``INSERT ... ON CONFLICT`` upsert. Every
write is idempotent: writing the same bars again changes no row, and the functions say how many
rows they changed. Prices are IEEE doubles in both databases and read back bit for bit.

Concurrent runs are safe: migrations run under a lock (a PostgreSQL advisory lock; on SQLite the
write lock, ``BEGIN IMMEDIATE``), monthly partitions are created under an advisory lock, and a
SQLite writer waits ``busy_timeout`` seconds for another writer before it fails with a
:class:`StoreError` saying which file and what to do. A PostgreSQL server that does not answer
fails after ``connect_timeout`` seconds, naming its host and port.
"""

from __future__ import annotations

import hashlib
import io
import re
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
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
# Keys of the PostgreSQL advisory locks (per database) serialising migrations and the creation
# of monthly partitions across concurrent runs.
_MIGRATE_LOCK = 0x51_44_41_47_00_01
_PARTITION_LOCK = 0x51_44_41_47_00_02
_Q_OWN = ("fingerprint", "batch", "fetch_start", "fetch_end")  # set by the store, not the rows
_Q_TEXT = ("batch", "source", "source_file", "symbol", "rule", "detail", "raw")


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
    same bars are written again); ``quarantine_added`` counts new quarantine rows;
    ``bars_deleted`` and ``quarantine_removed`` count the rows a re-fetch superseded (bars gone
    at the source, quarantine rows fixed or gone there)."""

    bars_changed: int = 0
    quarantine_added: int = 0
    bars_deleted: int = 0
    quarantine_removed: int = 0


def escape_nul(text: str | None) -> str | None:
    """``text`` with each NUL character replaced by the four visible characters ``\\x00``:
    PostgreSQL text cannot hold NUL, and quarantine rows must be stored whatever was received.
    Applied on both databases so that they store the same text."""
    return None if text is None else text.replace("\x00", "\\x00")


def _alembic_config(connection: sa.Connection) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


class BarStore:
    """Read and write bars, quarantine rows and ingest coverage.

    ``connect_timeout`` (seconds, PostgreSQL; at least 2) bounds the wait for a server to answer
    a new connection, unless the URL sets ``connect_timeout`` itself; ``statement_timeout``
    (seconds, PostgreSQL) bounds each statement, so a server that hangs inside a query ends the
    run, unless the URL sets ``options``. ``busy_timeout`` (seconds,
    SQLite) is how long a writer waits for another writer to finish before it fails.

    Example: ``store = BarStore("sqlite:///.quantdag/trading.db"); store.migrate()``.
    """

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: int = 10,
        busy_timeout: float = 60.0,
        statement_timeout: float = 600.0,
    ) -> None:
        if url.startswith("sqlite:///"):
            path = url.removeprefix("sqlite:///")
            if path and path != ":memory:":
                try:
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreError(
                        f"the trading database {redact_uri(url)} cannot be created: its folder "
                        f"{Path(path).parent} cannot be made ({exc.strerror}); point the "
                        "settings' database_url (or QUANTDAG_DATABASE_URL) at a writable place"
                    ) from None
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
        parsed = sa.make_url(url)
        connect_args: dict[str, Any] = {}
        if parsed.get_backend_name() == "sqlite":
            connect_args["timeout"] = busy_timeout
        elif parsed.get_backend_name() == "postgresql":
            if "connect_timeout" not in parsed.query:
                connect_args["connect_timeout"] = connect_timeout
            if "options" not in parsed.query:
                connect_args["options"] = f"-c statement_timeout={int(statement_timeout * 1000)}"
        self.engine = sa.create_engine(url, connect_args=connect_args)
        self.url = url
        self.connect_timeout = int(parsed.query.get("connect_timeout", connect_timeout))  # type: ignore[arg-type]
        self.busy_timeout = busy_timeout
        self.statement_timeout = statement_timeout
        self._parsed = parsed
        sa.event.listen(self.engine, "handle_error", self._translate_error)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    # -- errors ----------------------------------------------------------------------------
    def _translate_error(self, ctx: sa.engine.ExceptionContext) -> None:
        exc = ctx.original_exception
        if self.dialect == "sqlite" and _is_locked(exc):
            raise self._locked_error() from exc
        if (
            self.dialect == "postgresql"
            and ctx.connection is None
            and isinstance(exc, psycopg.OperationalError)
        ):
            raise self._connect_error(exc) from exc
        if isinstance(exc, psycopg.errors.QueryCanceled):
            raise StoreError(
                f"a statement on the trading database server at {self._parsed.host or 'localhost'}:"
                f"{self._parsed.port or 5432} ran longer than "
                f"{self.statement_timeout:g} s and was cancelled (statement_timeout); the server "
                "may be overloaded or a lock held by another session: check it, or raise "
                "statement_timeout_s on the trading_db resource"
            ) from exc

    def _locked_error(self) -> StoreError:
        where = self._parsed.database or ":memory:"
        return StoreError(
            f"the trading database file {where} is locked by another writer: waited "
            f"{self.busy_timeout:g} s for it. Another run (or a program holding the file open, "
            "such as a database browser) is writing to it: let it finish and run again, or "
            "give a longer busy timeout (BarStore(busy_timeout=...), busy_timeout_s of "
            "TradingDatabaseResource)"
        )

    def _connect_error(self, exc: BaseException) -> StoreError:
        where = f"{self._parsed.host or 'localhost'}:{self._parsed.port or 5432}"
        reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        reason = reason or type(exc).__name__
        if self._parsed.password:
            reason = reason.replace(str(self._parsed.password), "***")
        if "timeout" in reason.lower():
            return StoreError(
                f"the trading database server at {where} did not answer within "
                f"{self.connect_timeout} s ({reason}): check that PostgreSQL is up and reachable "
                "there, or give a longer connect timeout (connect_timeout=... in the URL or "
                "BarStore(connect_timeout=...))"
            )
        return StoreError(
            f"cannot connect to the trading database server at {where} ({reason}): check that "
            "PostgreSQL is up there and that the URL's host, port, database and user are right"
        )

    @contextmanager
    def _sqlite_locked(self) -> Iterator[None]:
        # For statements run on the raw DBAPI cursor, which SQLAlchemy's error events miss.
        try:
            yield
        except sqlite3.OperationalError as exc:
            if _is_locked(exc):
                raise self._locked_error() from exc
            raise

    # -- transactions ----------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        """A write transaction, committed at the end of the block and rolled back on error.
        On SQLite it takes the write lock at once (``BEGIN IMMEDIATE``), waiting up to
        ``busy_timeout`` for another writer, so that it cannot fail half-way for want of it."""
        with self.engine.begin() as conn:
            self.lock_for_write(conn)
            yield conn

    def lock_for_write(self, conn: sa.Connection) -> None:
        """On SQLite, take the write lock for ``conn``'s transaction now if nothing has been
        written in it yet (a no-op on PostgreSQL, whose row locks need no such step). Call it
        first inside ``with store.engine.begin() as conn:`` before writing."""
        if self.dialect != "sqlite":
            return
        raw = conn.connection.dbapi_connection
        if not raw.in_transaction:  # type: ignore[union-attr]
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    # -- schema ----------------------------------------------------------------------------
    def migrate(self) -> str:
        """Bring the schema to the newest migration; return its revision. Safe to call from
        concurrent runs: they take turns, and the later ones find nothing left to do."""
        head = _head()
        if self.schema_version() == head:
            return head  # without waiting for the lock another run's long write may hold
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATE_LOCK)))
            else:
                self.lock_for_write(conn)
            command.upgrade(_alembic_config(conn), "head")
        return self.schema_version() or ""

    def schema_version(self) -> str | None:
        with self.engine.connect() as conn:
            return MigrationContext.configure(
                conn, opts={"version_table": "trading_schema_version"}
            ).get_current_revision()

    def require_schema(self) -> None:
        head = _head()
        current = self.schema_version()
        if current != head:
            raise StoreError(
                f"the trading database at {redact_uri(self.url)} is at schema {current}, the code "
                f"needs {head}: run BarStore.migrate() (the assets do this at start)"
            )

    # -- bars ------------------------------------------------------------------------------
    def _ensure_partitions(self, conn: sa.Connection, frame: pl.DataFrame) -> None:
        if frame.height == 0:
            return
        kind = conn.execute(
            sa.text("SELECT c.relkind FROM pg_class c WHERE c.oid = to_regclass('bars')")
        ).scalar()
        if kind != "p":
            return
        months = frame.select(pl.col("ts").dt.truncate("1mo").unique()).to_series().to_list()
        missing = [
            m
            for m in months
            if conn.execute(
                sa.text("SELECT to_regclass(:name)"), {"name": _partition_name(m)}
            ).scalar()
            is None
        ]
        if not missing:
            return
        holds_bars = conn.execute(
            sa.text(
                "SELECT 1 FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'relation' "
                "AND relation = to_regclass('bars')"
            )
        ).first()
        if holds_bars:
            # This transaction already uses ``bars``: a second connection would wait for it.
            self._create_partitions(conn, missing)
        else:
            # Its own short transaction, so that the lock it takes on ``bars`` is not held for
            # the whole load (the partitions outlive a rolled-back load, empty and harmless).
            with self.engine.begin() as side:
                self._create_partitions(side, missing)

    @staticmethod
    def _create_partitions(conn: sa.Connection, months: list[datetime]) -> None:
        # Concurrent runs take turns; IF NOT EXISTS then skips what the other one created.
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PARTITION_LOCK)))
        for m in months:
            nxt = datetime(m.year + (m.month == 12), m.month % 12 + 1, 1, tzinfo=UTC)
            conn.exec_driver_sql(
                f"CREATE TABLE IF NOT EXISTS {_partition_name(m)} PARTITION OF bars FOR VALUES "
                f"FROM ('{m.isoformat()}') TO ('{nxt.isoformat()}')"
            )

    def upsert_bars(
        self, bars: pl.DataFrame, *, timeframe: str, source: str, conn: sa.Connection | None = None
    ) -> int:
        """Insert or update ``bars`` (stored schema) for ``timeframe``; return rows changed."""
        if bars.height == 0:
            return 0
        frame = self._bar_frame(bars, timeframe=timeframe, source=source)
        if conn is None:
            with self.transaction() as c:
                return self._upsert(c, frame)[0]
        self.lock_for_write(conn)
        return self._upsert(conn, frame)[0]

    @staticmethod
    def _bar_frame(bars: pl.DataFrame, *, timeframe: str, source: str) -> pl.DataFrame:
        return bars.select(
            pl.lit(timeframe).alias("timeframe"),
            *(pl.col(c).cast(t) for c, t in STORED_BAR_SCHEMA.items()),
            pl.lit(source).alias("source"),
        ).select(_BAR_COLS)

    def _upsert(
        self, conn: sa.Connection, frame: pl.DataFrame, prune: _Prune | None = None
    ) -> tuple[int, int]:
        """Upsert ``frame``; with ``prune``, also delete the bars of that source, timeframe,
        symbols and window that ``frame`` does not hold. Returns (rows changed, rows deleted)."""
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
            n = deleted = 0
            if frame.height:
                self._copy(conn, "bars_load", frame)
                n = int(
                    conn.exec_driver_sql(
                        f"INSERT INTO bars ({cols}) SELECT {cols} FROM bars_load {conflict}"
                    ).rowcount
                )
            if prune is not None:
                # Freshly loaded partitions have no statistics yet, so the planner may pick a
                # nested loop for the anti-join below: an index keeps that one fast too.
                conn.exec_driver_sql("CREATE INDEX ON bars_load (timeframe, symbol, ts)")
                conn.exec_driver_sql("ANALYZE bars_load")
                deleted = self._prune(conn, prune, "bars_load")
            conn.exec_driver_sql("DROP TABLE bars_load")
            return n, deleted
        rows = frame.with_columns(pl.col("ts").dt.epoch("us")).rows()
        marks = ", ".join("?" for _ in _BAR_COLS)
        cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            with self._sqlite_locked():
                n = 0
                if rows:
                    cur.executemany(f"INSERT INTO bars ({cols}) VALUES ({marks}) {conflict}", rows)
                    n = int(cur.rowcount)
                if prune is None:
                    return n, 0
                cur.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS bars_keys "
                    "(timeframe TEXT, symbol TEXT, ts INTEGER, PRIMARY KEY (timeframe, symbol, ts))"
                )
                cur.execute("DELETE FROM temp.bars_keys")
                cur.executemany(
                    "INSERT OR IGNORE INTO temp.bars_keys VALUES (?, ?, ?)",
                    [(r[0], r[1], r[2]) for r in rows],
                )
        finally:
            cur.close()
        deleted = self._prune(conn, prune, "temp.bars_keys")
        conn.exec_driver_sql("DROP TABLE temp.bars_keys")
        return n, deleted

    def _prune(self, conn: sa.Connection, prune: _Prune, keys: str) -> int:
        stmt = sa.text(
            "DELETE FROM bars WHERE timeframe = :tf AND source = :source AND symbol IN :symbols "
            "AND ts >= :start AND ts < :end AND NOT EXISTS (SELECT 1 FROM "
            f"{keys} k WHERE k.timeframe = bars.timeframe AND k.symbol = bars.symbol "
            "AND k.ts = bars.ts)"
        ).bindparams(sa.bindparam("symbols", expanding=True))
        result = conn.execute(
            stmt,
            {
                "tf": prune.timeframe,
                "source": prune.source,
                "symbols": list(prune.symbols),
                "start": self._ts(prune.start),
                "end": self._ts(prune.end),
            },
        )
        return int(result.rowcount)

    def _ts(self, ts: datetime) -> datetime | int:
        """A time as this database's ``UtcTimestamp`` column holds it."""
        return ts if self.dialect == "postgresql" else _micros(ts)

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

    def symbols_spanning(
        self, *, timeframe: str, start: datetime, end: datetime, symbols: Sequence[str]
    ) -> list[str]:
        """Those of ``symbols`` with a stored ``timeframe`` bar before ``start`` and one at or
        after ``end``: a window of theirs without bars is a hole, not a listing or a delisting."""
        b = bars_table.c
        stmt = (
            sa.select(b.symbol)
            .where(b.timeframe == timeframe, b.symbol.in_(list(symbols)))
            .group_by(b.symbol)
            .having(
                sa.and_(sa.func.min(b.ts) < self._ts(start), sa.func.max(b.ts) >= self._ts(end))
            )
        )
        with self.engine.connect() as conn:
            return sorted(str(r) for r in conn.execute(stmt).scalars())

    def _counts(self, *columns: sa.Column[Any], label: str) -> pl.DataFrame:
        stmt = sa.select(*columns, sa.func.count().label(label)).group_by(*columns)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).fetchall()
        schema = {**{c.name: pl.String() for c in columns}, label: pl.Int64()}
        return pl.DataFrame(rows, schema=schema, orient="row")

    # -- quarantine ------------------------------------------------------------------------
    def add_quarantine(
        self,
        rows: pl.DataFrame,
        *,
        batch: str,
        conn: sa.Connection | None = None,
        fetched: tuple[datetime, datetime] | None = None,
    ) -> int:
        """Record quarantined rows (validation's quarantine schema); rows already recorded are
        skipped, so recording the same batch twice adds nothing. Returns rows added.

        ``fetched`` is the window ``[start, end)`` of the fetch the rows came from (see
        :meth:`store_fetch`). NUL characters in the text are stored as the visible ``\\x00``
        (:func:`escape_nul`) on both databases."""
        records = self._quarantine_records(rows, batch=batch, fetched=fetched)
        if conn is None:
            with self.transaction() as c:
                return self._insert_quarantine(c, records)
        self.lock_for_write(conn)
        return self._insert_quarantine(conn, records)

    def _quarantine_records(
        self, rows: pl.DataFrame, *, batch: str, fetched: tuple[datetime, datetime] | None
    ) -> list[dict[str, Any]]:
        if rows.height == 0:
            return []
        keyed = rows.with_columns(
            _occ=pl.int_range(pl.len()).over("source", "source_file", "symbol", "ts", "rule", "raw")
        )
        start, end = (
            (None, None) if fetched is None else (self._ts(fetched[0]), self._ts(fetched[1]))
        )
        records = []
        for r in keyed.iter_rows(named=True):
            # The fingerprint is of the text as received (before escaping), as it always was.
            key = "\x1f".join(
                str(r[k]) for k in ("source", "source_file", "symbol", "ts", "rule", "raw", "_occ")
            )
            rec = {k: r[k] for k in _Q_COLS if k not in _Q_OWN}
            rec |= {
                "fingerprint": hashlib.sha256(key.encode()).hexdigest(),
                "batch": batch,
                "fetch_start": start,
                "fetch_end": end,
            }
            for k in _Q_TEXT:
                rec[k] = escape_nul(rec[k])
            if rec["ts"] is not None:
                rec["ts"] = self._ts(rec["ts"])
            records.append(rec)
        return records

    def _insert_quarantine(self, conn: sa.Connection, records: list[dict[str, Any]]) -> int:
        if not records:
            return 0
        ins = (
            (
                postgresql.insert(quarantine)
                if self.dialect == "postgresql"
                else sqlite.insert(quarantine)
            )
            .on_conflict_do_nothing(index_elements=["fingerprint"])
            .returning(quarantine.c.fingerprint)
        )
        return len(conn.execute(ins, records).fetchall())

    # -- one fetch ---------------------------------------------------------------------------
    def store_fetch(
        self,
        conn: sa.Connection,
        *,
        bars: pl.DataFrame,
        quarantined: pl.DataFrame,
        source: str,
        timeframe: str,
        symbols: Sequence[str],
        universe: Sequence[str],
        window: tuple[datetime, datetime],
        batch: str,
        files: Sequence[str] | None = None,
        existing_files: Sequence[str] | None = None,
        covered_to: Mapping[str, datetime] | None = None,
        protected: set[tuple[str, int]] | None = None,
    ) -> WriteCounts:
        """Store what one fetch of ``symbols`` over ``window`` = ``[start, end)`` from ``source``
        returned (validated ``bars`` and ``quarantined`` rows), superseding what earlier fetches
        of that window stored, and record the window as covered; all in ``conn``'s transaction.

        After it, the window holds exactly this fetch: rows the source has for it = bars stored
        + rows quarantined. Superseded, and deleted unless this fetch has them again:

        - bars of ``source`` and ``timeframe`` for ``symbols`` with ``start <= ts < end``;
        - quarantine rows of ``source`` whose symbol is one of ``symbols``, or is null or
          outside ``universe`` and came from one of ``files`` (the files this fetch read;
          None: any) or from a file no longer among ``existing_files`` (removed or renamed at
          the source), and whose time lies in
          the window, or, for rows whose time could not be parsed, whose fetch window lies
          inside this one. A row without a time quarantined by a fetch that only overlaps this
          window is kept: it may belong to the part outside. Rows quarantined before schema
          0002 have no fetch window and are kept when their time is null.

        The window is recorded as fetched for each of ``symbols``, up to ``covered_to[symbol]``
        where given (a symbol absent from it is not recorded at all).

        Rows this fetch has again are left as they are, so a re-fetch of an unchanged source
        changes nothing (all counts 0).
        """
        start, end = window
        self.lock_for_write(conn)
        frame = self._bar_frame(bars, timeframe=timeframe, source=source)
        prune = _Prune(source, timeframe, tuple(symbols), start, end)
        changed, deleted = self._upsert(conn, frame, prune)
        records = self._quarantine_records(quarantined, batch=batch, fetched=window)
        q = quarantine.c
        syms = [escape_nul(s) for s in symbols]
        superseded = sa.select(q.fingerprint).where(
            q.source == escape_nul(source),
            sa.or_(
                q.symbol.in_(syms),
                sa.and_(
                    sa.or_(q.symbol.is_(None), q.symbol.not_in(list(universe))),
                    sa.true()
                    if files is None
                    else sa.or_(
                        q.source_file.in_([escape_nul(f) for f in files]),
                        sa.false()
                        if existing_files is None
                        else q.source_file.not_in([escape_nul(f) for f in existing_files]),
                    ),
                ),
            ),
            sa.or_(
                sa.and_(q.ts >= self._ts(start), q.ts < self._ts(end)),
                sa.and_(
                    q.ts.is_(None), q.fetch_start >= self._ts(start), q.fetch_end <= self._ts(end)
                ),
            ),
        )
        keep = {r["fingerprint"] for r in records}
        # ``protected``: (file, row) of rows an earlier request of the same ingestion returned
        # and stored; this request saw them too but left them to that one.
        guard = protected or set()
        stale = [
            f
            for f, file, row in conn.execute(
                superseded.add_columns(q.source_file, q.source_row)
            ).all()
            if f not in keep and (file, row) not in guard
        ]
        for i in range(0, len(stale), 500):
            conn.execute(sa.delete(quarantine).where(q.fingerprint.in_(stale[i : i + 500])))
        added = self._insert_quarantine(conn, records)
        # A row without a time found again by this fetch now belongs to this fetch's window: a
        # later re-fetch of the window it came from first must not take it for its own.
        timeless = [
            {"fp": r["fingerprint"], "fs": r["fetch_start"], "fe": r["fetch_end"]}
            for r in records
            if r["ts"] is None
        ]
        if timeless:
            conn.execute(
                sa.update(quarantine)
                .where(q.fingerprint == sa.bindparam("fp"))
                .values(fetch_start=sa.bindparam("fs"), fetch_end=sa.bindparam("fe")),
                timeless,
            )
        # This fetch is what the window now holds: coverage recorded inside it before (a longer
        # file read earlier) no longer says what is stored.
        cov = ingest_coverage.c
        conn.execute(
            sa.delete(ingest_coverage).where(
                cov.source == source,
                cov.timeframe == timeframe,
                cov.symbol.in_(list(symbols)),
                cov.start >= self._ts(start),
                cov.start < self._ts(end),
            )
        )
        ends = {s: end for s in symbols} if covered_to is None else covered_to
        self.record_coverage(
            ((s, start, min(ends[s], end)) for s in symbols if s in ends and ends[s] > start),
            source=source,
            timeframe=timeframe,
            batch=batch,
            conn=conn,
        )
        return WriteCounts(
            bars_changed=changed,
            quarantine_added=added,
            bars_deleted=deleted,
            quarantine_removed=len(stale),
        )

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


@dataclass(frozen=True)
class _Prune:
    """Bars of ``source`` and ``timeframe`` for ``symbols`` in ``[start, end)`` that a load
    supersedes."""

    source: str
    timeframe: str
    symbols: tuple[str, ...]
    start: datetime
    end: datetime


def _head() -> str:
    head = ScriptDirectory.from_config(_alembic_config(None)).get_current_head()  # type: ignore[arg-type]
    return str(head)


def _partition_name(month: datetime) -> str:
    return f"bars_p{month.year:04d}{month.month:02d}"


def _is_locked(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "database is locked" in str(exc)
