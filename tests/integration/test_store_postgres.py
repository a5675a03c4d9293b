"""The trading store on the real local PostgreSQL: partitions, COPY, idempotent upserts."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest
import sqlalchemy as sa

from pipelines.bars.validate import validate_bars
from pipelines.config import ValidationConfig, load_settings
from pipelines.data.ingest import ingest_window
from pipelines.data.store import BarStore
from pipelines.timeframes import Timeframe
from tests.conftest import SAMPLE_SETTINGS, SCHEMA_HEAD

pytestmark = pytest.mark.integration
JAN = (datetime(2019, 1, 1, 5, tzinfo=UTC), datetime(2019, 2, 1, 5, tzinfo=UTC))
ALL = (datetime(2018, 1, 1, tzinfo=UTC), datetime(2020, 1, 1, tzinfo=UTC))


@pytest.fixture
def pg_store(pg_database: str) -> BarStore:
    store = BarStore(pg_database)
    assert store.migrate() == SCHEMA_HEAD
    return store


def test_bars_table_is_partitioned_by_month(pg_store: BarStore, sample_bars: pl.DataFrame) -> None:
    bars = sample_bars
    assert pg_store.upsert_bars(bars, timeframe="15m", source="t") == bars.height == 18_518
    with pg_store.engine.connect() as conn:
        kind = conn.execute(sa.text("SELECT relkind FROM pg_class WHERE relname = 'bars'")).scalar()
        parts = (
            conn.execute(
                sa.text(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent = 'bars'::regclass ORDER BY 1"
                )
            )
            .scalars()
            .all()
        )
    assert kind == "p"
    assert parts == ["bars_p201901", "bars_p201902"]


def test_prices_read_back_exactly_and_upsert_is_idempotent(
    pg_store: BarStore, sample_bars: pl.DataFrame
) -> None:
    bars = sample_bars
    odd = bars.with_columns(
        close=pl.col("close") + 1e-9 / 3,
        vwap=pl.col("close") / 3,
        trade_count=pl.int_range(pl.len()).cast(pl.Int64),
    )
    assert pg_store.upsert_bars(odd, timeframe="15m", source="t") == odd.height
    back = pg_store.read_bars(timeframe="15m", start=ALL[0], end=ALL[1])
    assert back.equals(odd.sort("symbol", "ts"))
    assert pg_store.upsert_bars(odd, timeframe="15m", source="t") == 0
    assert pg_store.count_bars() == odd.height
    changed = odd.with_columns(
        volume=pl.when(pl.int_range(pl.len()) < 5).then(pl.col("volume") + 1).otherwise("volume")
    )
    assert pg_store.upsert_bars(changed, timeframe="15m", source="t") == 5
    subset = pg_store.read_bars(timeframe="15m", start=JAN[0], end=JAN[1], symbols=["AAPL", "VIX"])
    assert set(subset["symbol"]) == {"AAPL", "VIX"}


def test_ingest_on_postgres_is_incremental(pg_store: BarStore, sample_source) -> None:  # type: ignore[no-untyped-def]
    _, universe = load_settings(SAMPLE_SETTINGS)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    first = ingest_window(
        sample_source, pg_store, universe, ValidationConfig(), JAN, as_of=now, batch="jan"
    )
    assert first.accounted and first.bars_changed == first.rows_stored
    again = ingest_window(
        sample_source, pg_store, universe, ValidationConfig(), JAN, as_of=now, batch="jan"
    )
    assert again.requests == ()
    forced = ingest_window(
        sample_source,
        pg_store,
        universe,
        ValidationConfig(),
        JAN,
        as_of=now,
        batch="jan",
        refetch=True,
    )
    assert forced.bars_changed == 0 and forced.rows_in == first.rows_in


def test_quarantine_on_postgres(pg_store: BarStore, sample_raw: pl.DataFrame) -> None:
    dup = pl.concat([sample_raw.head(10), sample_raw.head(2)])
    result = validate_bars(
        dup, universe=["AAPL"], timeframe=Timeframe.parse("15m"), session="regular"
    )
    assert pg_store.add_quarantine(result.quarantine, batch="b") == 2
    assert pg_store.add_quarantine(result.quarantine, batch="b") == 0
    back = pg_store.read_quarantine(start=ALL[0], end=ALL[1])
    assert back["rule"].to_list() == ["duplicate_exact"] * 2
    assert back["ts"].to_list() == result.quarantine["ts"].to_list()


def test_rows_added_in_a_failed_transaction_are_rolled_back(
    pg_store: BarStore, sample_raw: pl.DataFrame
) -> None:
    bars = validate_bars(
        sample_raw.head(50), universe=["AAPL"], timeframe=Timeframe.parse("15m"), session="regular"
    ).bars
    with pytest.raises(RuntimeError, match="boom"), pg_store.engine.begin() as conn:
        pg_store.upsert_bars(bars, timeframe="15m", source="t", conn=conn)
        raise RuntimeError("boom")
    assert pg_store.count_bars() == 0


def test_a_statement_that_hangs_ends_as_a_clear_error(pg_database: str) -> None:
    """A server that accepts the connection and then hangs inside a query (here a statement
    that sleeps) is cut at the statement timeout, not waited on for ever."""
    from pipelines.data.store import StoreError

    store = BarStore(pg_database, statement_timeout=0.5)
    with (
        pytest.raises(StoreError, match=r"ran longer than 0.5 s and was cancelled") as err,
        store.engine.connect() as conn,
    ):
        conn.execute(sa.text("SELECT pg_sleep(5)"))
    assert "Traceback" not in str(err.value)
    with BarStore(pg_database).engine.connect() as conn:  # the default leaves room for real work
        assert conn.execute(sa.text("SHOW statement_timeout")).scalar() == "10min"
