"""Full-size real data sets from ../shared/data (skipped, saying why, where absent)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from pipelines.bars.aggregate import aggregate_bars
from pipelines.bars.compare import compare_bars
from pipelines.bars.validate import ValidationResult, validate_bars
from pipelines.config import ColumnMap, FileSourceConfig, UniverseConfig, ValidationConfig
from pipelines.data.ingest import ingest_window
from pipelines.data.schema import BarFlag
from pipelines.data.sources import FileBarSource
from pipelines.data.store import BarStore
from pipelines.timeframes import Timeframe
from tests.conftest import shared_file

pytestmark = [pytest.mark.slow]
AV = "us_equities_15min_2020_2022_av.parquet"


def _source(path: Path, tf: str, label: str) -> FileBarSource:
    cfg = FileSourceConfig(
        path=str(path.parent),
        pattern=path.name,
        format="parquet",
        columns=ColumnMap(symbol="symbol"),
        label=label,
    )  # type: ignore[arg-type]
    return FileBarSource(cfg, Timeframe.parse(tf))


def _validate(
    path: Path, tf: str, label: str, session: str
) -> tuple[pl.DataFrame, ValidationResult]:
    raw = _source(path, tf, label).read_file(path, None)
    symbols = raw["symbol"].unique().to_list()
    result = validate_bars(raw, universe=symbols, timeframe=Timeframe.parse(tf), session=session)  # type: ignore[arg-type]
    assert result.rows_in == raw.height == result.rows_stored + result.rows_quarantined
    return raw, result


@pytest.fixture(scope="module")
def av_extended() -> tuple[pl.DataFrame, ValidationResult]:
    return _validate(shared_file(AV), "15m", "end", "extended")


def test_av_defects_are_found_and_every_row_accounted(av_extended) -> None:  # type: ignore[no-untyped-def]
    raw, result = av_extended
    assert raw.height == 818_637
    # The README's defects: 211 exact duplicates (one repeated day in INTC, QCOM, RTX, LMT on
    # 2022-08-22 and TXN on 2022-02-23) and one bar outside 04:15-20:00 (TSM 2021-01-14 20:15).
    assert result.by_reason == {"duplicate_exact": 211, "outside_session": 1}
    dups = result.quarantine.filter(pl.col("rule") == "duplicate_exact")
    per_symbol = dict(dups.group_by("symbol").len().iter_rows())
    assert per_symbol == {"INTC": 64, "QCOM": 46, "RTX": 35, "LMT": 31, "TXN": 35}
    outside = result.quarantine.filter(pl.col("rule") == "outside_session").row(0, named=True)
    assert outside["symbol"] == "TSM" and "2021-01-14 20:00 ET" in outside["detail"]
    # 52 zero-volume bars are kept and flagged, not dropped.
    assert result.flag_count(BarFlag.ZERO_VOLUME) == 52
    assert result.rows_stored == 818_637 - 212


def test_av_regular_session_matches_the_readme(av_extended) -> None:  # type: ignore[no-untyped-def]
    raw, _ = av_extended
    _, regular = _validate(shared_file(AV), "15m", "end", "regular")
    # README: 502,013 rows are regular-session bars (labels 09:45-16:00). Of those, the ones past
    # an early close (13:00 on three half days) and the duplicates are not stored.
    label = raw["ts"].dt.convert_time_zone("America/New_York") + timedelta(minutes=15)
    hhmm = label.dt.strftime("%H:%M")
    in_regular = (hhmm >= "09:45") & (hhmm <= "16:00")
    assert int(in_regular.sum()) == 502_013
    half_days = label.dt.date().is_in(
        [
            datetime(2020, 11, 27).date(),
            datetime(2020, 12, 24).date(),
            datetime(2021, 11, 26).date(),
        ]
    )
    after_early_close = int((in_regular & half_days & (hhmm > "13:00")).sum())
    dup_regular = regular.by_reason["duplicate_exact"]
    assert regular.rows_stored + dup_regular + after_early_close == 502_013
    assert ((regular.bars["flags"] & BarFlag.HALF_DAY) != 0).sum() > 0


@pytest.mark.integration
def test_av_rows_in_equal_rows_stored_plus_quarantined_in_postgres(pg_database: str) -> None:
    path = shared_file(AV)
    source = _source(path, "15m", "end")
    symbols = sorted(source.read_file(path, None)["symbol"].unique().to_list())
    universe = UniverseConfig(
        name="av",
        timeframe="15m",
        session="extended",
        history_start=datetime(2020, 10, 1).date(),
        symbols=tuple({"symbol": s} for s in symbols),
    )  # type: ignore[arg-type]
    store = BarStore(pg_database)
    store.migrate()
    window = (datetime(2020, 9, 1, tzinfo=UTC), datetime(2022, 10, 1, tzinfo=UTC))
    report = ingest_window(
        source,
        store,
        universe,
        ValidationConfig(),
        window,
        as_of=datetime(2026, 1, 1, tzinfo=UTC),
        batch="av",
    )
    assert report.rows_in == 818_637
    assert store.count_bars(timeframe="15m") == report.rows_stored
    assert store.count_quarantine() == report.rows_quarantined == 212
    assert store.count_bars(timeframe="15m") + store.count_quarantine() == report.rows_in


def test_ibkr_1m_aggregated_to_5m_against_ibkr_5m() -> None:
    _, one = _validate(
        shared_file("us_equities_1min_2025_2026_ibkr.parquet"), "1m", "start", "regular"
    )
    _, five = _validate(
        shared_file("us_equities_5min_2025_2026_ibkr.parquet"), "5m", "start", "regular"
    )
    ours = aggregate_bars(
        one.bars, source=Timeframe.parse("1m"), target=Timeframe.parse("5m"), session="regular"
    )
    ref = five.bars.filter(
        pl.col("symbol").is_in(ours["symbol"].unique().to_list()),
        pl.col("ts").is_between(ours["ts"].min(), ours["ts"].max()),
    )
    by_month = compare_bars(ours, ref, by="month")
    feb = by_month.filter(pl.col("month") == "2026-02").row(0, named=True)
    # Where both files come from IBKR's historical bars (February 2026), volume and close agree
    # exactly on every common bar; where a high or low differs, the bar built from 1-minute
    # bars is the wider one (IBKR builds each bar size from its own filtered trades).
    assert feb["volume_equal"] == 1.0 and feb["close_equal"] == 1.0
    assert feb["ohlcv_equal"] > 0.97
    assert feb["high_above_share"] == 1.0 and feb["low_below_share"] == 1.0
    # Before 2026-01 the 1-minute file came from another recorder: a few percent of the volume.
    early = by_month.filter(pl.col("month") < "2026-01")
    assert (early["volume_ratio_median"] < 0.1).all()
