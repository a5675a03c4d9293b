"""Validation rules on real bars from the bundled sample (slices moved or altered on purpose)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from pipelines.bars.validate import RULES, validate_bars
from pipelines.config import ValidationConfig
from pipelines.data.schema import BarFlag
from pipelines.timeframes import Timeframe

pytestmark = pytest.mark.unit
TF = Timeframe.parse("15m")


def _run(raw: pl.DataFrame, universe: list[str], session: str = "regular", **kw: object):  # type: ignore[no-untyped-def]
    result = validate_bars(raw, universe=universe, timeframe=TF, session=session, **kw)  # type: ignore[arg-type]
    assert result.rows_in == raw.height == result.rows_stored + result.rows_quarantined
    assert set(result.by_reason) <= set(RULES)
    return result


def _day(raw: pl.DataFrame, symbol: str, day: str) -> pl.DataFrame:
    d = datetime.fromisoformat(day).date()
    return raw.filter(
        pl.col("symbol") == symbol,
        pl.col("ts").dt.convert_time_zone("America/New_York").dt.date() == d,
    )


def _move(frame: pl.DataFrame, days: int) -> pl.DataFrame:
    """Move bars by whole days on the New York wall clock (DST-safe)."""
    local = pl.col("ts").dt.convert_time_zone("America/New_York").dt.replace_time_zone(None)
    return frame.with_columns(
        ts=(local + pl.duration(days=days))
        .dt.replace_time_zone("America/New_York")
        .dt.convert_time_zone("UTC")
    )


def test_clean_sample_is_stored_whole(sample_raw: pl.DataFrame) -> None:
    symbols = sample_raw["symbol"].unique().to_list()
    result = _run(sample_raw, symbols)
    assert result.rows_quarantined == 0
    assert result.rows_stored == 18_518
    vix = result.bars.filter(pl.col("symbol") == "VIX")
    assert ((vix["flags"] & BarFlag.ZERO_VOLUME) != 0).all()


def test_early_close_session(sample_raw: pl.DataFrame) -> None:
    # A real session (26 bars) moved to 2019-07-03, an early close (13:00).
    day = _day(sample_raw, "AAPL", "2019-01-09")
    assert day.height == 26
    moved = _move(day, (datetime(2019, 7, 3) - datetime(2019, 1, 9)).days)
    result = _run(moved, ["AAPL"])
    # 09:30-13:00 holds 14 bars; the 12 after the early close are outside the session.
    assert result.rows_stored == 14
    assert result.by_reason == {"outside_session": 12}
    assert ((result.bars["flags"] & BarFlag.HALF_DAY) != 0).all()
    assert "outside the regular session 09:30-13:00 ET" in result.quarantine["detail"][0]


def test_holiday_is_not_a_session(sample_raw: pl.DataFrame) -> None:
    day = _day(sample_raw, "MSFT", "2019-01-14")
    moved = _move(day, 7)  # 2019-01-21, Martin Luther King Jr. Day
    result = _run(moved, ["MSFT"])
    assert result.by_reason == {"not_a_session": day.height}


def test_off_grid_bar(sample_raw: pl.DataFrame) -> None:
    day = _day(sample_raw, "SPY", "2019-01-14")
    odd = day.with_columns(
        ts=pl.when(pl.int_range(pl.len()) == 5)
        .then(pl.col("ts") + timedelta(minutes=7))
        .otherwise("ts")
    )
    result = _run(odd, ["SPY"])
    assert result.by_reason == {"off_grid": 1}


def test_extended_session_keeps_premarket_regular_rejects_it(sample_raw: pl.DataFrame) -> None:
    day = _day(sample_raw, "SPY", "2019-01-14")
    pre = day.head(4).with_columns(pl.col("ts") - timedelta(hours=2))  # 07:30-08:30 ET
    both = pl.concat([day, pre])
    assert _run(both, ["SPY"], "regular").by_reason == {"outside_session": 4}
    assert _run(both, ["SPY"], "extended").rows_quarantined == 0


def test_price_jump_is_flagged_not_dropped(sample_raw: pl.DataFrame) -> None:
    day = _day(sample_raw, "TSLA", "2019-01-14")
    later = pl.int_range(pl.len()) >= 10
    jumped = day.with_columns(
        [
            pl.when(later).then(pl.col(c) * 1.3).otherwise(pl.col(c))
            for c in ("open", "high", "low", "close")
        ]
    )
    result = _run(jumped, ["TSLA"], rules=ValidationConfig(max_abs_log_return=0.15))
    assert result.rows_quarantined == 0
    flagged = result.bars.filter((pl.col("flags") & BarFlag.PRICE_JUMP) != 0)
    assert flagged.height == 1
    assert flagged["ts"][0] == day["ts"][10]


def test_jump_at_batch_edge_uses_previous_close(sample_raw: pl.DataFrame) -> None:
    day = _day(sample_raw, "TSLA", "2019-01-14")
    prev = pl.DataFrame({"symbol": ["TSLA"], "prev_close": [day["open"][0] / 2]})
    result = _run(day, ["TSLA"], previous_close=prev)
    assert ((result.bars["flags"] & BarFlag.PRICE_JUMP) != 0).sum() == 1


def test_gaps_against_the_calendar(sample_raw: pl.DataFrame) -> None:
    aapl = sample_raw.filter(pl.col("symbol") == "AAPL")
    days = aapl["ts"].dt.convert_time_zone("America/New_York").dt.date()
    holed = aapl.filter(
        ~pl.int_range(pl.len()).is_in([30, 31, 32]),  # three bars of one session
        days != datetime(2019, 1, 16).date(),  # a whole session
    )
    result = _run(holed, ["AAPL"])
    gaps = {
        (r["session_date"].isoformat(), r["present"], r["missing"])
        for r in result.gaps.iter_rows(named=True)
    }
    assert gaps == {("2019-01-07", 23, 3), ("2019-01-16", 0, 26)}


def test_ohlc_violation_and_all_rules_accounted(sample_raw: pl.DataFrame) -> None:
    day = _day(sample_raw, "JPM", "2019-01-14")
    bad = day.with_columns(
        high=pl.when(pl.int_range(pl.len()) == 0).then(pl.col("low") - 0.01).otherwise("high")
    )
    result = _run(bad, ["JPM"])
    assert result.by_reason == {"ohlc_violation": 1}
    assert result.quarantine["source_row"][0] == day["source_row"][0]


def test_empty_batch() -> None:
    from pipelines.data.schema import empty_raw

    result = _run(empty_raw(), ["AAPL"])
    assert result.rows_stored == result.rows_quarantined == 0


def test_symbol_by_symbol_report(sample_raw: pl.DataFrame) -> None:
    two = sample_raw.filter(pl.col("symbol").is_in(["AAPL", "MSFT"]))
    result = _run(two, ["AAPL"])
    table = {r["symbol"]: r for r in result.by_symbol().iter_rows(named=True)}
    assert table["AAPL"]["stored"] == 780 and table["AAPL"]["quarantined"] == 0
    assert table["MSFT"]["symbol_not_in_universe"] == 780


def test_dst_change_keeps_wall_clock(sample_raw: pl.DataFrame) -> None:
    # The same 09:30 ET session open is 14:30 UTC in winter and 13:30 UTC in summer.
    day = _day(sample_raw, "AAPL", "2019-01-14")
    summer = _move(day, 7 * 26)
    result = _run(summer, ["AAPL"])
    assert result.rows_quarantined == 0
    assert result.bars["ts"][0].astimezone(UTC).hour == 13


def test_batch_without_any_parseable_time(sample_raw: pl.DataFrame) -> None:
    broken = sample_raw.head(5).with_columns(
        ts=pl.lit(None, pl.Datetime("us", "UTC")), parse_error=pl.lit("column 'timestamp': ?")
    )
    result = _run(broken, ["AAPL"])
    assert result.by_reason == {"unparseable_value": 5}
