"""Aggregation against a naive loop reference on real bars (bundled 1- and 15-minute samples)."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import exchange_calendars as xcals
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.bars.aggregate import AggregationError, aggregate_bars
from pipelines.bars.checks import bar_integrity
from pipelines.bars.validate import validate_bars
from pipelines.config import FileSourceConfig, load_settings
from pipelines.data.sources import FileBarSource
from pipelines.timeframes import Timeframe

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
NY = ZoneInfo("America/New_York")


def _load(settings_name: str) -> tuple[pl.DataFrame, Timeframe]:
    settings, universe = load_settings(ROOT / "config" / settings_name)
    cfg = settings.environments["local"].source
    assert isinstance(cfg, FileSourceConfig)
    src = FileBarSource(cfg, universe.base_timeframe, root=ROOT)
    raw = pl.concat(src.read_file(p, s) for p, s in src.files())
    res = validate_bars(
        raw, universe=universe.symbol_names, timeframe=universe.base_timeframe, session="regular"
    )
    return res.bars, universe.base_timeframe


@pytest.fixture(scope="module")
def bars_1m() -> pl.DataFrame:
    return _load("settings.1m.yaml")[0]


@pytest.fixture(scope="module")
def bars_15m() -> pl.DataFrame:
    return _load("settings.yaml")[0]


def _windows(first: date, last: date) -> dict[date, dict[str, datetime]]:
    cal = xcals.get_calendar("XNYS")
    out = {}
    for d in cal.sessions_in_range(first.isoformat(), last.isoformat()):
        o = cal.session_open(d).to_pydatetime()
        c = cal.session_close(d).to_pydatetime()
        early = c.astimezone(NY).time() < time(16)
        out[d.date()] = {
            "open": o,
            "close": c,
            "ext_open": datetime.combine(d.date(), time(4), NY).astimezone(UTC),
            "ext_close": datetime.combine(d.date(), time(17 if early else 20), NY).astimezone(UTC),
        }
    return out


def naive_aggregate(
    bars: pl.DataFrame, target: Timeframe, session: str, as_of: datetime | None = None
) -> pl.DataFrame:
    """The obvious loop: find each bar's session segment and bucket, group, then reduce."""
    rows = sorted(bars.iter_rows(named=True), key=lambda r: (r["symbol"], r["ts"]))
    days = [r["ts"].astimezone(NY).date() for r in rows]
    win = _windows(min(days), max(days))
    step = timedelta(minutes=target.minutes)
    groups: dict[tuple[str, datetime], list[dict[str, Any]]] = defaultdict(list)
    ends: dict[tuple[str, datetime], datetime] = {}
    for r, d in zip(rows, days, strict=True):
        w = win[d]
        ts = r["ts"]
        if target.is_daily:
            if not (w["open"] <= ts < w["close"]):
                continue
            start, end = w["open"], w["close"]
        else:
            if session == "regular" or w["open"] <= ts < w["close"]:
                seg = (w["open"], w["close"])
            elif ts < w["open"]:
                seg = (w["ext_open"], w["open"])
            else:
                seg = (w["close"], w["ext_close"])
            k = (ts - seg[0]) // step
            start = seg[0] + k * step
            end = min(start + step, seg[1])
        groups[(r["symbol"], start)].append(r)
        ends[(r["symbol"], start)] = end
    last = as_of or max(r["ts"] for r in rows) + timedelta(minutes=1 if target.minutes else 0)
    out = []
    for (sym, start), members in groups.items():
        if ends[(sym, start)] > last:
            continue
        vol = sum(m["volume"] for m in members)
        vw = (
            None
            if any(m["vwap"] is None for m in members) or vol == 0
            else sum(m["vwap"] * m["volume"] for m in members) / vol
        )
        out.append(
            {
                "symbol": sym,
                "ts": start,
                "open": members[0]["open"],
                "high": max(m["high"] for m in members),
                "low": min(m["low"] for m in members),
                "close": members[-1]["close"],
                "volume": vol,
                "vwap": vw,
                "bar_count": sum(m["bar_count"] for m in members),
            }
        )
    return pl.DataFrame(
        out,
        schema={
            "symbol": pl.String,
            "ts": pl.Datetime("us", "UTC"),
            "open": pl.Float64,
            "high": pl.Float64,
            "low": pl.Float64,
            "close": pl.Float64,
            "volume": pl.Float64,
            "vwap": pl.Float64,
            "bar_count": pl.Int32,
        },
    ).sort("symbol", "ts")


def _compare(fast: pl.DataFrame, slow: pl.DataFrame) -> None:
    cols = ["symbol", "ts", "open", "high", "low", "close", "volume", "bar_count"]
    assert fast.select(cols).equals(slow.select(cols))
    if slow["vwap"].is_not_null().any():
        diff = (fast["vwap"] - slow["vwap"]).abs() / slow["vwap"]
        assert diff.max() < 1e-12  # type: ignore[operator]


@pytest.mark.parametrize("target", ["5m", "15m", "60m", "1d"])
def test_1m_sample_matches_naive(bars_1m: pl.DataFrame, target: str) -> None:
    tf = Timeframe.parse(target)
    base = bars_1m.filter(pl.col("symbol").is_in(["AAPL", "SPY", "VIX", "UGA"]))
    as_of = base["ts"].max() + timedelta(minutes=1)  # type: ignore[operator]
    fast = aggregate_bars(base, source=Timeframe.parse("1m"), target=tf, session="regular")
    _compare(fast, naive_aggregate(base, tf, "regular", as_of))
    assert bar_integrity(fast, timeframe=tf, session="regular") == []


@pytest.mark.parametrize("target", ["60m", "1d"])
def test_15m_sample_matches_naive(bars_15m: pl.DataFrame, target: str) -> None:
    tf = Timeframe.parse(target)
    as_of = bars_15m["ts"].max() + timedelta(minutes=15)  # type: ignore[operator]
    fast = aggregate_bars(bars_15m, source=Timeframe.parse("15m"), target=tf, session="regular")
    _compare(fast, naive_aggregate(bars_15m, tf, "regular", as_of))
    # Volume is conserved: every source bar falls in exactly one emitted bar.
    assert fast["volume"].sum() == bars_15m["volume"].sum()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    drop=st.floats(min_value=0.0, max_value=0.6),
    seed=st.integers(min_value=0, max_value=10_000),
    cut_minutes=st.integers(min_value=1, max_value=5 * 390),
    target=st.sampled_from(["5m", "15m", "30m", "60m", "1d"]),
)
def test_property_random_gaps_and_cut_times(
    bars_1m: pl.DataFrame, drop: float, seed: int, cut_minutes: int, target: str
) -> None:
    base = bars_1m.filter(pl.col("symbol").is_in(["MSFT", "TZA"]))
    holed = base.sample(fraction=1 - drop, seed=seed).sort("symbol", "ts")
    as_of = datetime(2019, 2, 11, 14, 30, tzinfo=UTC) + timedelta(minutes=cut_minutes)
    as_of_day = as_of.astimezone(NY).date()
    visible = holed.filter(pl.col("ts") + timedelta(minutes=1) <= as_of)
    if visible.height == 0:
        return
    tf = Timeframe.parse(target)
    fast = aggregate_bars(
        visible, source=Timeframe.parse("1m"), target=tf, session="regular", as_of=as_of
    )
    _compare(fast, naive_aggregate(visible, tf, "regular", as_of))
    # Nothing is emitted whose window had not closed by as_of.
    ends = fast["ts"] + timedelta(minutes=tf.minutes)
    if not tf.is_daily:
        assert (ends.dt.convert_time_zone("America/New_York").dt.date() <= as_of_day).all()


def test_extended_segments_are_never_mixed(bars_1m: pl.DataFrame) -> None:
    day = bars_1m.filter(pl.col("symbol") == "SPY").head(390)
    pre = day.head(180).with_columns(pl.col("ts") - timedelta(hours=3))  # 06:30-09:30 ET
    post = day.tail(150).with_columns(pl.col("ts") + timedelta(hours=4))  # 17:30-20:00 ET
    ext = pl.concat([pre, day, post]).sort("ts")
    for target in ("60m", "15m"):
        tf = Timeframe.parse(target)
        fast = aggregate_bars(ext, source=Timeframe.parse("1m"), target=tf, session="extended")
        _compare(fast, naive_aggregate(ext, tf, "extended"))
        assert bar_integrity(fast, timeframe=tf, session="extended") == []
    hourly = aggregate_bars(
        ext, source=Timeframe.parse("1m"), target=Timeframe.parse("60m"), session="extended"
    )
    starts = hourly["ts"].dt.convert_time_zone("America/New_York").dt.strftime("%H:%M").to_list()
    assert "09:30" in starts and "09:00" in starts  # 09:00-09:30 pre-market, then 09:30-10:30


def test_early_close_day(bars_1m: pl.DataFrame) -> None:
    day = bars_1m.filter(pl.col("symbol") == "AAPL").head(390)
    local = pl.col("ts").dt.convert_time_zone("America/New_York").dt.replace_time_zone(None)
    shift = (date(2019, 11, 29) - day["ts"][0].astimezone(NY).date()).days
    moved = day.with_columns(
        ts=(local + pl.duration(days=shift))
        .dt.replace_time_zone("America/New_York")
        .dt.convert_time_zone("UTC")
    ).filter(pl.col("ts") < datetime(2019, 11, 29, 18, tzinfo=UTC))  # the 13:00 ET early close
    hourly = aggregate_bars(
        moved, source=Timeframe.parse("1m"), target=Timeframe.parse("60m"), session="regular"
    )
    last = hourly.row(-1, named=True)
    assert last["ts"] == datetime(2019, 11, 29, 17, 30, tzinfo=UTC)  # 12:30-13:00 ET
    daily = aggregate_bars(
        moved, source=Timeframe.parse("1m"), target=Timeframe.parse("1d"), session="regular"
    )
    assert daily["bar_count"].to_list() == [moved.height]


def test_incomplete_last_bar_is_not_emitted(bars_15m: pl.DataFrame) -> None:
    aapl = bars_15m.filter(pl.col("symbol") == "AAPL")
    cut = aapl["ts"][5] + timedelta(minutes=15)  # 6 bars: 09:30-11:00 ET
    hourly = aggregate_bars(
        aapl.head(6),
        source=Timeframe.parse("15m"),
        target=Timeframe.parse("60m"),
        session="regular",
        as_of=cut,
    )
    assert hourly.height == 1 and hourly["bar_count"][0] == 4
    daily = aggregate_bars(
        aapl.head(6),
        source=Timeframe.parse("15m"),
        target=Timeframe.parse("1d"),
        session="regular",
        as_of=cut,
    )
    assert daily.height == 0


def test_vwap_and_trade_count(bars_1m: pl.DataFrame) -> None:
    base = bars_1m.filter(pl.col("symbol") == "QQQ").with_columns(
        vwap=(pl.col("high") + pl.col("low") + pl.col("close")) / 3,
        trade_count=(pl.col("volume") // 100).cast(pl.Int64),
    )
    fast = aggregate_bars(
        base, source=Timeframe.parse("1m"), target=Timeframe.parse("15m"), session="regular"
    )
    _compare(fast, naive_aggregate(base, Timeframe.parse("15m"), "regular"))
    assert fast["trade_count"].sum() == base["trade_count"].sum()
    no_vwap = aggregate_bars(
        base.with_columns(vwap=pl.lit(None, pl.Float64)),
        source=Timeframe.parse("1m"),
        target=Timeframe.parse("15m"),
        session="regular",
    )
    assert no_vwap["vwap"].is_null().all()


def test_duplicates_and_impossible_targets_raise(bars_15m: pl.DataFrame) -> None:
    with pytest.raises(AggregationError, match="cannot be built from 15m"):
        aggregate_bars(
            bars_15m, source=Timeframe.parse("15m"), target=Timeframe.parse("5m"), session="regular"
        )
    with pytest.raises(AggregationError, match="duplicate"):
        aggregate_bars(
            pl.concat([bars_15m.head(2), bars_15m.head(1)]),
            source=Timeframe.parse("15m"),
            target=Timeframe.parse("60m"),
            session="regular",
        )


def test_bars_outside_every_session_are_refused(bars_15m: pl.DataFrame) -> None:
    stray = bars_15m.head(3).with_columns(pl.col("ts") + timedelta(hours=8))  # 17:30 ET and later
    with pytest.raises(AggregationError, match="outside every regular session"):
        aggregate_bars(
            stray, source=Timeframe.parse("15m"), target=Timeframe.parse("60m"), session="regular"
        )
