"""Which Alpaca bars are final at a given moment: ``AlpacaBarSource.covered_until``."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from pipelines.config import AlpacaSourceConfig
from pipelines.data.alpaca import AlpacaBarSource
from pipelines.timeframes import Timeframe

pytestmark = pytest.mark.unit


def _source(timeframe: str = "15m", **cfg: object) -> AlpacaBarSource:
    # No request is made: building the client does not touch the network.
    return AlpacaBarSource(
        AlpacaSourceConfig(**cfg),  # type: ignore[arg-type]
        Timeframe.parse(timeframe),
        api_key="key",
        secret_key="secret",
    )


def _utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, sec, tzinfo=UTC)


@pytest.mark.parametrize(
    ("feed", "as_of", "until"),
    [
        # sip: 15 minutes' delay. At 15:31 the 15:00-15:15 bar is final, 15:15-15:30 is not.
        ("sip", _utc(2024, 3, 5, 15, 31), _utc(2024, 3, 5, 15, 15)),
        ("sip", _utc(2024, 3, 5, 15, 30), _utc(2024, 3, 5, 15, 15)),
        ("sip", _utc(2024, 3, 5, 15, 44, 59), _utc(2024, 3, 5, 15, 15)),
        ("sip", _utc(2024, 3, 5, 15, 45), _utc(2024, 3, 5, 15, 30)),
        # iex: real time, one minute's margin for late trades.
        ("iex", _utc(2024, 3, 5, 15, 31), _utc(2024, 3, 5, 15, 30)),
        ("iex", _utc(2024, 3, 5, 15, 30, 59), _utc(2024, 3, 5, 15, 15)),
    ],
)
def test_the_feed_delay_then_the_bar_grid(feed: str, as_of: datetime, until: datetime) -> None:
    assert _source(feed=feed).covered_until(as_of) == until


def test_a_configured_delay_overrides_the_feeds() -> None:
    source = _source(feed="sip", feed_delay_minutes=0)
    assert source.feed_delay == timedelta(0)
    assert source.covered_until(_utc(2024, 3, 5, 15, 30)) == _utc(2024, 3, 5, 15, 30)
    late = _source(feed="iex", feed_delay_minutes=60)
    assert late.covered_until(_utc(2024, 3, 5, 15, 30)) == _utc(2024, 3, 5, 14, 30)


def test_hourly_bars_end_on_the_hour() -> None:
    assert _source("60m", feed="sip").covered_until(_utc(2024, 3, 5, 14, 20)) == _utc(
        2024, 3, 5, 14
    )
    assert _source("1h", feed="sip").covered_until(_utc(2024, 3, 5, 14, 14)) == _utc(2024, 3, 5, 13)


def test_daily_bars_end_at_new_york_midnight_in_summer_and_winter() -> None:
    daily = _source("1d", feed="iex")
    # 00:30 EDT on 12 March: the bar of 11 March (ending 00:00 EDT = 04:00 UTC) is final.
    assert daily.covered_until(_utc(2024, 3, 12, 4, 30)) == _utc(2024, 3, 12, 4)
    # 00:00:30 EST on 10 January is inside the one-minute delay: 9 January is not final yet.
    assert daily.covered_until(_utc(2024, 1, 10, 5, 0, 30)) == _utc(2024, 1, 9, 5)
    assert daily.covered_until(_utc(2024, 1, 10, 5, 1)) == _utc(2024, 1, 10, 5)


@pytest.mark.parametrize("timeframe", ["1m", "5m", "15m", "60m"])
def test_exactly_the_bars_ending_by_it_are_covered(timeframe: str) -> None:
    source = _source(timeframe, feed="sip")
    step = Timeframe.parse(timeframe).duration
    rng = random.Random(11)
    for _ in range(500):
        as_of = _utc(2024, 1, 1) + timedelta(seconds=rng.uniform(0, 366 * 86400))
        until = source.covered_until(as_of)
        published = as_of - timedelta(minutes=15)
        assert until.tzinfo is not None and until.utcoffset() == timedelta(0)
        assert (until - _utc(2024, 1, 1)) % step == timedelta(0)  # on the grid
        assert until <= published < until + step  # the next bar ends after publication


def test_a_naive_as_of_is_refused() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        _source().covered_until(datetime(2024, 3, 5, 15, 30))


def test_an_aware_as_of_in_another_zone_is_converted() -> None:
    est = datetime(2024, 1, 10, 5, 31, tzinfo=ZoneInfo("America/New_York"))  # 10:31 UTC
    assert _source(feed="sip").covered_until(est) == _utc(2024, 1, 10, 10, 15)
