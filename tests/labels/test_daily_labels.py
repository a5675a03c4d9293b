"""Triple-barrier labels on daily bars: they span sessions, and the padding the labels asset
loads (in calendar days) holds the horizon and the warm-up, counted in sessions."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import polars as pl
import pytest

from pipelines.bars.calendar import sessions_between
from pipelines.config import LabelSettings
from pipelines.labels.partition import (
    barrier_config,
    build_label_partition,
    check_label_settings,
    label_months_reading,
    label_padding_days,
)
from pipelines.labels.triple_barrier import label_triple_barrier
from pipelines.models.training import embargo_for
from pipelines.timeframes import Timeframe
from tests.daily import daily_label_settings, daily_sample_bars

pytestmark = pytest.mark.unit
DAY = Timeframe.parse("1d")


def _sessions() -> list[date]:
    return (
        sessions_between("XNYS", date(2000, 1, 1), date(2030, 12, 31))
        .frame["session_date"]
        .to_list()
    )


def test_daily_labels_span_sessions_up_to_the_vertical_barrier() -> None:
    settings = daily_label_settings()
    assert not settings.cut_at_session_close
    bars = daily_sample_bars()
    result = label_triple_barrier(bars, barrier_config(settings))
    labels = result.labels
    assert labels.height > 0.9 * bars.height
    # Sessions are rows: the exit's session is bars_held sessions after the entry's.
    index = bars.sort("symbol", "ts").with_columns(k=pl.int_range(pl.len()).over("symbol"))
    k = index.select("symbol", "ts", "k")
    held = (
        labels.join(k, on=["symbol", "ts"])
        .join(k.rename({"ts": "t1", "k": "k1"}), on=["symbol", "t1"])
        .with_columns(sessions=pl.col("k1") - pl.col("k"))
    )
    assert held.height == labels.height
    assert (held["sessions"] == held["bars_held"]).all()
    assert held["bars_held"].min() >= 1  # no label ends in its own session
    assert held["bars_held"].max() == settings.max_holding_bars
    vertical = held.filter(pl.col("barrier") == "vertical")
    assert vertical.height and (vertical["bars_held"] == settings.max_holding_bars).all()
    # The last labelled bars are those whose ten sessions lie inside the data.
    last = bars.group_by("symbol").agg(pl.col("ts").max())
    unlabelled = bars.join(labels, on=["symbol", "ts"], how="anti")
    assert unlabelled.height == result.unlabelled
    assert unlabelled.group_by("symbol").len()["len"].max() <= settings.max_holding_bars
    assert last.height == bars["symbol"].n_unique()


def test_a_year_partition_labels_its_last_session_with_the_next_years_bars() -> None:
    settings = daily_label_settings()
    bars = daily_sample_bars()
    before, after = label_padding_days(settings, bars_per_session=1)
    start = datetime(2018, 1, 1, 5, tzinfo=UTC)  # New York midnight
    end = datetime(2019, 1, 1, 5, tzinfo=UTC)
    loaded = bars.filter(
        pl.col("ts").is_between(start - timedelta(days=before), end + timedelta(days=after))
    )
    part = build_label_partition(loaded, (start, end), settings)
    dec31 = part.labels.filter(pl.col("ts") == datetime(2018, 12, 31, 14, 30, tzinfo=UTC))
    assert dec31.height == 24  # every symbol traded on 2018-12-31
    assert (dec31["t1"] > end).all()
    assert part.unlabelled == 0
    assert part.max_bars_held <= settings.max_holding_bars


@pytest.mark.parametrize("holding", [1, 5, 10, 20, 60, 250])
def test_the_padding_and_the_embargo_hold_the_horizon_in_sessions(holding: int) -> None:
    """For every XNYS session of 2000-2030 (September 2001's four-day closure included): the
    last event of a window needs the bars of the next ``holding`` sessions, which lie within the
    padding loaded after the window (the window ends at the New York midnight after that
    event's session, the bar ``span`` days later opens at 13:30 or 14:30 UTC: it is loaded when
    ``span <= after``); the embargo covers the horizon too."""
    settings = LabelSettings(max_holding_bars=holding, cut_at_session_close=False)
    _, after = label_padding_days(settings, bars_per_session=1)
    days = _sessions()
    span = max((days[i + holding] - days[i]).days for i in range(len(days) - holding))
    assert span <= after
    assert span < embargo_for(DAY, holding).days


def test_the_padding_before_holds_the_volatility_warm_up_but_for_a_closure() -> None:
    """The warm-up (20 x the volatility window, in sessions) only sets how little the seed of
    the first events' ATR weighs (below e^-20 after it); it lies within the padding before a
    window except across an unscheduled closure, which shortens it by up to four sessions."""
    settings = daily_label_settings()
    before, _ = label_padding_days(settings, bars_per_session=1)
    warm = 20 * settings.volatility_window
    days = _sessions()
    spans = [(days[i + warm] - days[i]).days for i in range(len(days) - warm)]
    assert max(spans) <= before + 4
    outside_2001 = [s for i, s in enumerate(spans) if days[i + warm].year not in (2001, 2002)]
    assert max(outside_2001) <= before


def test_intraday_padding_and_embargo_are_unchanged() -> None:
    assert label_padding_days(LabelSettings(), bars_per_session=26) == (23, 7)
    assert embargo_for(Timeframe.parse("15m"), 16) == timedelta(hours=4)


def test_year_partitions_whose_labels_a_session_changes() -> None:
    _, after = label_padding_days(daily_label_settings(), bars_per_session=1)
    assert after == 21
    first = date(2018, 1, 1)
    year = "year"
    assert label_months_reading(date(2019, 1, 2), after, first, year) == (date(2018, 1, 1),)
    assert label_months_reading(date(2019, 1, 18), after, first, year) == (date(2018, 1, 1),)
    assert label_months_reading(date(2019, 1, 22), after, first, year) == ()
    assert label_months_reading(date(2019, 6, 3), after, first, year) == ()
    assert label_months_reading(date(2018, 1, 2), after, first, year) == ()  # none before


def test_cutting_daily_labels_at_the_session_close_is_refused() -> None:
    with pytest.raises(ValueError, match="cut_at_session_close: false"):
        check_label_settings(LabelSettings(cut_at_session_close=True), DAY)
    check_label_settings(LabelSettings(cut_at_session_close=True), Timeframe.parse("15m"))
