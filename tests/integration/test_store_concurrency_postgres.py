"""Concurrent runs on one PostgreSQL trading database (each test on fresh throwaway databases):
first-time migrations, ingestion of the same month (whose partition does not exist yet), and an
upgrade of a database created at schema 0001."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import polars as pl
import pytest
import sqlalchemy as sa
from alembic import command

from pipelines.data.sources import FileBarSource
from pipelines.data.store import BarStore, _alembic_config
from tests.conftest import SCHEMA_HEAD
from tests.unit.test_store_concurrency import JAN, ingest_month, run_together

pytestmark = pytest.mark.integration
ALL = (datetime(2018, 1, 1, tzinfo=UTC), datetime(2020, 1, 1, tzinfo=UTC))


@contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A new empty database on the server of ``admin_url``, dropped afterwards."""
    name = f"quantdag_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def _partitions(store: BarStore) -> list[str]:
    with store.engine.connect() as conn:
        return list(
            conn.execute(
                sa.text(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent = 'bars'::regclass ORDER BY 1"
                )
            ).scalars()
        )


def test_first_migrations_at_once(pg_server: str) -> None:
    for _ in range(3):
        with fresh_database(pg_server) as url:
            stores = [BarStore(url) for _ in range(4)]
            assert run_together(*(s.migrate for s in stores)) == [SCHEMA_HEAD] * 4
            stores[0].require_schema()
            for s in stores:
                s.engine.dispose()


def test_two_upserts_creating_the_same_partitions(
    pg_database: str, sample_bars: pl.DataFrame
) -> None:
    BarStore(pg_database).migrate()
    stores = [BarStore(pg_database) for _ in range(3)]
    changed = run_together(
        *(lambda s=s: s.upsert_bars(sample_bars, timeframe="15m", source="t") for s in stores)
    )
    assert sum(changed) == sample_bars.height  # each bar inserted once, the others changed none
    assert _partitions(stores[0]) == ["bars_p201901", "bars_p201902"]
    back = stores[0].read_bars(timeframe="15m", start=ALL[0], end=ALL[1])
    assert back.equals(sample_bars.sort("symbol", "ts"))


def test_two_runs_ingesting_the_same_month(
    pg_server: str, pg_database: str, sample_source: FileBarSource
) -> None:
    BarStore(pg_database).migrate()
    reports = run_together(
        ingest_month(pg_database, sample_source), ingest_month(pg_database, sample_source)
    )
    assert all(r.accounted for r in reports)
    assert sum(r.bars_changed for r in reports) == reports[0].rows_stored
    store = BarStore(pg_database)
    assert _partitions(store) == ["bars_p201901"]
    got = store.read_bars(timeframe="15m", start=JAN[0], end=JAN[1])
    with fresh_database(pg_server) as ref_url:
        ref = BarStore(ref_url)
        ref.migrate()
        ingest_month(ref_url, sample_source)()
        want = ref.read_bars(timeframe="15m", start=JAN[0], end=JAN[1])
        ref.engine.dispose()
    assert got.height == reports[0].rows_stored and got.equals(want)


def test_upgrade_from_0001_keeps_the_bars(pg_database: str, sample_bars: pl.DataFrame) -> None:
    store = BarStore(pg_database)
    with store.engine.begin() as conn:
        command.upgrade(_alembic_config(conn), "0001")
    assert store.schema_version() == "0001"
    assert store.upsert_bars(sample_bars, timeframe="15m", source="t") == sample_bars.height
    assert store.migrate() == SCHEMA_HEAD
    long_symbol = sample_bars.head(1).with_columns(symbol=pl.lit("X" * 80))
    assert store.upsert_bars(long_symbol, timeframe="15m", source="s" * 100) == 1
    assert store.count_bars() == sample_bars.height + 1
    with store.engine.connect() as conn:
        types = dict(
            conn.execute(
                sa.text(
                    "SELECT table_name || '.' || column_name, data_type FROM "
                    "information_schema.columns WHERE column_name IN ('symbol', 'source', "
                    "'batch') AND table_name IN ('bars', 'quarantine', 'ingest_coverage')"
                )
            ).all()
        )
    assert set(types.values()) == {"text"}, types
