"""The live aggregation equals the batch one on a real session, bucket by bucket, whatever the
order the minutes arrive in; late, duplicate and corrected minutes are told apart."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta

import polars as pl
import pytest

from pipelines.bars.calendar import sessions_between
from pipelines.live.aggregate import LiveAggregator, MinuteBar
from quantdag.testing.live import Day
from tests.live.conftest import CLOSE, OPEN, SESSION

EARLY = date(2019, 11, 29)  # an early close: 13:00 New York time


def _aggregator(symbols: tuple[str, ...], day: date = SESSION, **kw: object) -> LiveAggregator:
    cal = sessions_between("XNYS", day, day)
    w = cal.window("regular")
    return LiveAggregator(
        symbols,
        minutes=15,
        window=(w["start"][0], w["end"][0]),
        **kw,  # type: ignore[arg-type]
    )


def _bars(frame: pl.DataFrame) -> list[MinuteBar]:
    return [
        MinuteBar(r["symbol"], r["ts"], r["open"], r["high"], r["low"], r["close"], r["volume"])
        for r in frame.iter_rows(named=True)
    ]


def test_live_buckets_equal_the_batch_aggregation(day: Day) -> None:
    agg = _aggregator(day.symbols)
    minutes = day.minutes.sort("ts", "symbol")
    out = []
    rng = random.Random(5)
    for _, group in minutes.group_by("ts", maintain_order=True):
        bars = _bars(group)
        rng.shuffle(bars)  # the stream sends a minute's symbols in no set order
        for bar in bars:
            assert agg.add(bar) == "added"
        out += agg.closed(bars[0].ts + timedelta(minutes=1))
    out += agg.closed(CLOSE + timedelta(seconds=2))
    assert agg.next_close is None
    live = pl.concat(out).sort("symbol", "ts")
    batch = day.day_bars().sort("symbol", "ts")
    assert live.height == batch.height == 26 * len(day.symbols) - _missing(batch, day)
    # Validation flags (zero volume, price jumps) are the stored bars' notes; the live bars
    # carry none, and no decision reads them.
    assert live.drop("flags").equals(batch.drop("flags"))


def _missing(batch: pl.DataFrame, day: Day) -> int:
    return 26 * len(day.symbols) - batch.height


def test_a_bucket_waits_for_the_grace_unless_every_symbol_sent_its_last_minute() -> None:
    agg = _aggregator(("AAA", "BBB"), grace=timedelta(seconds=2))
    first = OPEN + timedelta(minutes=14)
    agg.add(MinuteBar("AAA", first, 10, 11, 9, 10.5, 100))
    end = OPEN + timedelta(minutes=15)
    assert agg.closed(end) == []  # BBB has not sent its 09:44 minute yet
    assert len(agg.closed(end + timedelta(seconds=2))) == 1  # the grace is over
    agg.add(MinuteBar("AAA", end + timedelta(minutes=14), 10, 11, 9, 10.5, 100))
    agg.add(MinuteBar("BBB", end + timedelta(minutes=14), 10, 11, 9, 10.5, 100))
    assert len(agg.closed(end + timedelta(minutes=15))) == 1  # both sent: no wait


def test_late_duplicate_and_corrected_minutes_are_told_apart() -> None:
    agg = _aggregator(("AAA",))
    bar = MinuteBar("AAA", OPEN, 10, 11, 9, 10.5, 100)
    assert agg.add(bar) == "added"
    assert agg.add(bar) == "duplicate"
    assert agg.add(MinuteBar("AAA", OPEN, 10, 11, 9, 10.6, 120)) == "updated"
    (closed,) = agg.closed(OPEN + timedelta(minutes=16))
    assert closed["close"][0] == 10.6  # the correction arrived before the bucket closed
    assert agg.add(MinuteBar("AAA", OPEN + timedelta(minutes=3), 1, 1, 1, 1, 1)) == "late"
    assert agg.add(MinuteBar("AAA", OPEN - timedelta(minutes=1), 1, 1, 1, 1, 1)) == "outside"
    assert agg.add(MinuteBar("ZZZ", OPEN + timedelta(minutes=20), 1, 1, 1, 1, 1)) == "outside"


def test_an_early_close_cuts_the_session_and_its_last_bucket() -> None:
    agg = _aggregator(("AAA",), day=EARLY)
    start, end = agg.buckets[0][0], agg.buckets[-1][1]
    assert end == datetime(2019, 11, 29, 18, 0, tzinfo=UTC)
    assert start == datetime(2019, 11, 29, 14, 30, tzinfo=UTC)
    assert agg.buckets[-1] == (datetime(2019, 11, 29, 17, 45, tzinfo=UTC), end)
    assert agg.add(MinuteBar("AAA", end, 1, 1, 1, 1, 1)) == "outside"


@pytest.mark.parametrize("symbols", [("AAA",)])
def test_a_bucket_without_any_minute_is_no_bar(symbols: tuple[str, ...]) -> None:
    agg = _aggregator(symbols)
    agg.add(MinuteBar("AAA", OPEN + timedelta(minutes=30), 10, 11, 9, 10.5, 100))
    closed = agg.closed(OPEN + timedelta(minutes=46))
    assert [c["ts"][0] for c in closed] == [OPEN + timedelta(minutes=30)]
