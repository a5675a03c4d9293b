"""Incremental ingestion and the trading store on SQLite (the embedded default)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipelines.config import ValidationConfig, load_settings
from pipelines.data.ingest import ingest_window, missing_intervals, plan_fetch
from pipelines.data.sources import FileBarSource
from pipelines.data.store import BarStore, StoreError
from tests.conftest import SCHEMA_HEAD

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
JAN = (datetime(2019, 1, 1, 5, tzinfo=UTC), datetime(2019, 2, 1, 5, tzinfo=UTC))
FEB = (datetime(2019, 2, 1, 5, tzinfo=UTC), datetime(2019, 3, 1, 5, tzinfo=UTC))
NOW = datetime(2026, 1, 1, tzinfo=UTC)
T0 = datetime(2020, 1, 1, tzinfo=UTC)


class RecordingSource:
    """Wraps a real source and records each fetch."""

    def __init__(self, inner: FileBarSource) -> None:
        self.inner = inner
        self.calls: list[tuple[tuple[str, ...], datetime, datetime]] = []

    @property
    def name(self) -> str:
        return self.inner.name

    def fetch(
        self, symbols: Sequence[str], start: datetime, end: datetime, universe: Sequence[str]
    ) -> pl.DataFrame:
        self.calls.append((tuple(symbols), start, end))
        return self.inner.fetch(symbols, start, end, universe)

    def covered_until(self, as_of: datetime) -> datetime:
        return self.inner.covered_until(as_of)

    def file_names(self, symbols: Sequence[str] | None) -> list[str]:
        return self.inner.file_names(symbols)

    @property
    def adjustment(self) -> str:
        return self.inner.adjustment


@pytest.fixture
def store(tmp_path: Path) -> BarStore:
    s = BarStore(f"sqlite:///{tmp_path / 'trading.db'}")
    s.migrate()
    return s


@pytest.fixture
def universe():  # type: ignore[no-untyped-def]
    return load_settings(ROOT / "config" / "settings.yaml")[1]


def _hours(a: int, b: int) -> tuple[datetime, datetime]:
    return T0 + timedelta(hours=a), T0 + timedelta(hours=b)


intervals = st.lists(
    st.tuples(st.integers(0, 100), st.integers(1, 30)).map(lambda t: _hours(t[0], t[0] + t[1])),
    max_size=6,
)


@given(covered=intervals, lo=st.integers(0, 60), span=st.integers(1, 80))
def test_missing_intervals_partition_the_window(covered: list, lo: int, span: int) -> None:  # type: ignore[type-arg]
    window = _hours(lo, lo + span)
    gaps = missing_intervals(window, covered)
    hours = range(lo, lo + span)
    in_gap = {h for h in hours for s, e in gaps if s <= T0 + timedelta(hours=h) < e}
    in_cov = {h for h in hours for s, e in covered if s <= T0 + timedelta(hours=h) < e}
    assert in_gap | in_cov == set(hours) and not (in_gap & in_cov)
    assert all(s < e for s, e in gaps) and gaps == sorted(gaps)


def test_plan_groups_symbols_with_the_same_gap() -> None:
    window = _hours(0, 10)
    plan = plan_fetch(["A", "B", "C"], window, {"A": [_hours(0, 10)], "B": [_hours(0, 5)]})
    assert [(r.symbols, r.start, r.end) for r in plan] == [
        (("C",), *window),
        (("B",), *_hours(5, 10)),
    ]


def test_rerun_fetches_nothing_and_changes_nothing(
    store: BarStore, universe, sample_source
) -> None:  # type: ignore[no-untyped-def]
    source = RecordingSource(sample_source)
    rules = ValidationConfig()
    first = ingest_window(source, store, universe, rules, JAN, as_of=NOW, batch="jan")
    assert first.accounted and first.rows_in == first.rows_stored > 10_000
    assert first.bars_changed == first.rows_stored
    assert len(source.calls) == 1 and len(source.calls[0][0]) == 24
    before = store.read_bars(timeframe="15m", start=JAN[0], end=JAN[1])

    again = ingest_window(source, store, universe, rules, JAN, as_of=NOW, batch="jan")
    assert again.requests == () and len(source.calls) == 1

    forced = ingest_window(
        source, store, universe, rules, JAN, as_of=NOW, batch="jan", refetch=True
    )
    assert forced.rows_in == first.rows_in and forced.bars_changed == 0
    assert store.read_bars(timeframe="15m", start=JAN[0], end=JAN[1]).equals(before)


def test_backfill_fills_only_gaps(store: BarStore, universe, sample_source) -> None:  # type: ignore[no-untyped-def]
    source = RecordingSource(sample_source)
    rules = ValidationConfig()
    mid = datetime(2019, 1, 15, 5, tzinfo=UTC)
    ingest_window(source, store, universe, rules, (JAN[0], mid), as_of=NOW, batch="part")
    stored_part = store.count_bars()
    report = ingest_window(source, store, universe, rules, JAN, as_of=NOW, batch="jan")
    assert [(c[1], c[2]) for c in source.calls] == [(JAN[0], mid), (mid, JAN[1])]
    assert store.count_bars() == stored_part + report.rows_stored
    ingest_window(source, store, universe, rules, FEB, as_of=NOW, batch="feb")
    assert store.count_bars() == 18_518


def test_as_of_caps_the_window(store: BarStore, universe, sample_source) -> None:  # type: ignore[no-untyped-def]
    source = RecordingSource(sample_source)
    as_of = datetime(2019, 1, 10, tzinfo=UTC)
    ingest_window(source, store, universe, ValidationConfig(), JAN, as_of=as_of, batch="jan")
    # A file written at as_of may hold the bar under way: only bars ended by then are final.
    final = as_of - timedelta(minutes=15)
    assert source.calls[0][2] == final
    later = ingest_window(source, store, universe, ValidationConfig(), JAN, as_of=NOW, batch="jan")
    assert (later.requests[0].start, later.requests[0].end) == (final, JAN[1])


def test_quarantine_is_recorded_once(store: BarStore, sample_raw: pl.DataFrame) -> None:
    from pipelines.bars.validate import validate_bars
    from pipelines.timeframes import Timeframe

    dup = pl.concat([sample_raw.head(30), sample_raw.head(3), sample_raw.head(3)])
    result = validate_bars(
        dup, universe=["AAPL"], timeframe=Timeframe.parse("15m"), session="regular"
    )
    assert result.by_reason == {"duplicate_exact": 6}
    assert store.add_quarantine(result.quarantine, batch="b") == 6
    assert store.add_quarantine(result.quarantine, batch="b") == 0
    assert store.quarantine_by_batch("b") == {"duplicate_exact": 6}
    back = store.read_quarantine(start=JAN[0], end=JAN[1])
    assert sorted(back["raw"]) == sorted(result.quarantine["raw"])


def test_prices_read_back_exactly(store: BarStore, sample_bars: pl.DataFrame) -> None:
    bars = sample_bars
    odd = bars.with_columns(close=pl.col("close") + 1e-9 / 3)  # many significant digits
    assert store.upsert_bars(odd, timeframe="15m", source="t") == odd.height
    back = store.read_bars(timeframe="15m", start=JAN[0], end=FEB[1])
    assert back.equals(odd.sort("symbol", "ts"))
    assert store.upsert_bars(odd, timeframe="15m", source="t") == 0
    changed = odd.with_columns(
        close=pl.when(pl.int_range(pl.len()) < 7).then(pl.col("close") * 1.0001).otherwise("close"),
        high=pl.when(pl.int_range(pl.len()) < 7).then(pl.col("high") * 1.0001).otherwise("high"),
    )
    assert store.upsert_bars(changed, timeframe="15m", source="t") == 7


def test_schema_version_is_checked(tmp_path: Path) -> None:
    fresh = BarStore(f"sqlite:///{tmp_path / 'new.db'}")
    with pytest.raises(StoreError, match=r"run BarStore\.migrate"):
        fresh.require_schema()
    assert fresh.migrate() == SCHEMA_HEAD
    fresh.require_schema()
    assert fresh.migrate() == SCHEMA_HEAD  # idempotent


def test_quarantined_rows_without_a_time_are_found_by_batch(
    store: BarStore, sample_raw: pl.DataFrame
) -> None:
    from pipelines.bars.validate import validate_bars
    from pipelines.timeframes import Timeframe

    broken = sample_raw.head(4).with_columns(
        ts=pl.when(pl.int_range(pl.len()) == 0).then(None).otherwise(pl.col("ts")),
        parse_error=pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("column 'timestamp': ?")),
    )
    result = validate_bars(
        broken, universe=["AAPL"], timeframe=Timeframe.parse("15m"), session="regular"
    )
    store.add_quarantine(result.quarantine, batch="b1")
    assert store.read_quarantine(start=JAN[0], end=JAN[1]).height == 0
    found = store.read_quarantine(start=JAN[0], end=JAN[1], batch="b1")
    assert found["rule"].to_list() == ["unparseable_value"]
