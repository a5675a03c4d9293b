"""Minute bars as they stream in -> the strategy's bars, with the batch aggregation's rules.

A :class:`LiveAggregator` holds one session's minute bars. A bucket (the strategy's bar, anchored
at the session open and cut short at an early close, as :func:`pipelines.bars.aggregate.
aggregate_bars` builds them) is *closed* once every symbol of the universe has sent its last
minute, or a minute of a later bucket has arrived, or the clock is ``grace`` past its end
(symbols that did not trade in its last minute). A closed bucket is aggregated by the batch
function itself from the minutes received, so a live bar equals the stored bar built from the
same minutes. Incomplete buckets are withheld. A minute that arrives after its bucket closed is
*late*: kept (and persisted by the session) but not used, since the decision it would have
changed was already taken; a repeated minute is a duplicate and ignored.

Example::

    agg = LiveAggregator(symbols, minutes=15, window=(open_utc, close_utc), calendar=cal)
    agg.add(bar)                      # one minute bar
    for bars in agg.closed(now):      # frames of one bucket each, in time order
        ...
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import polars as pl

from pipelines.bars.aggregate import aggregate_bars
from pipelines.bars.calendar import SessionCalendar
from pipelines.data.schema import STORED_BAR_SCHEMA
from pipelines.timeframes import Timeframe

Outcome = Literal["added", "late", "duplicate", "outside", "updated"]


@dataclass(frozen=True)
class MinuteBar:
    """One minute bar as the broker sends it: ``ts`` the minute's start (UTC)."""

    symbol: str
    ts: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float


def check_minute(bar: MinuteBar) -> str | None:
    """The rule a streamed minute bar breaks (None: none), as the batch validation names them:
    ``non_finite``, ``non_positive_price``, ``negative_volume``, ``ohlc_inconsistent``. Such a
    bar is recorded as quarantined, never aggregated."""
    prices = (bar.open, bar.high, bar.low, bar.close)
    if not all(math.isfinite(p) for p in (*prices, bar.volume)):
        return "non_finite"
    if min(prices) <= 0:
        return "non_positive_price"
    if bar.volume < 0:
        return "negative_volume"
    if bar.low > min(bar.open, bar.close) or bar.high < max(bar.open, bar.close):
        return "ohlc_inconsistent"
    return None


class LiveAggregator:
    """One session's minute bars of ``symbols`` into ``minutes``-minute bars (see the module
    docstring). ``window`` is the session's tradable (start, end) in UTC; ``calendar`` the
    session calendar the batch aggregation reads (one day is enough)."""

    def __init__(
        self,
        symbols: Sequence[str],
        *,
        minutes: int,
        window: tuple[datetime, datetime],
        calendar: SessionCalendar,
        session: Literal["regular", "extended"] = "regular",
        grace: timedelta = timedelta(seconds=2),
    ) -> None:
        self.symbols = frozenset(symbols)
        self.minutes = minutes
        self.start, self.end = window
        self.calendar = calendar
        self.session = session
        self.grace = grace
        step = timedelta(minutes=minutes)
        starts: list[datetime] = []
        t = self.start
        while t < self.end:
            starts.append(t)
            t += step
        self._starts = starts
        self._ends = [min(s + step, self.end) for s in starts]
        self._rows: dict[int, dict[tuple[str, datetime], MinuteBar]] = {}
        self._last_minute: dict[int, set[str]] = {}
        self._next = 0  # the first bucket not yet closed
        self._latest = -1  # the latest bucket a minute arrived for

    @property
    def buckets(self) -> list[tuple[datetime, datetime]]:
        """The session's buckets, (start, end) in UTC."""
        return list(zip(self._starts, self._ends, strict=True))

    def bucket_of(self, ts: datetime) -> int | None:
        """The index of the bucket holding the minute starting at ``ts`` (None: outside)."""
        if ts < self.start or ts >= self.end:
            return None
        return bisect_right(self._starts, ts) - 1

    @property
    def next_close(self) -> datetime | None:
        """The end of the first bucket not yet closed (None: all closed)."""
        return self._ends[self._next] if self._next < len(self._ends) else None

    @property
    def next_start(self) -> datetime | None:
        """The start of the first bucket not yet closed (None: all closed)."""
        return self._starts[self._next] if self._next < len(self._starts) else None

    def add(self, bar: MinuteBar) -> Outcome:
        """Take one minute bar; say what became of it."""
        k = self.bucket_of(bar.ts)
        if k is None or bar.symbol not in self.symbols:
            return "outside"
        if k < self._next:
            return "late"
        rows = self._rows.setdefault(k, {})
        key = (bar.symbol, bar.ts)
        if key in rows:
            if rows[key] == bar:
                return "duplicate"
            rows[key] = bar
            return "updated"
        rows[key] = bar
        if bar.ts + timedelta(minutes=1) >= self._ends[k]:
            self._last_minute.setdefault(k, set()).add(bar.symbol)
        self._latest = max(self._latest, k)
        return "added"

    def closed(self, now: datetime) -> list[pl.DataFrame]:
        """The buckets that closed by ``now`` and were not returned before, each as the stored
        bars of one time (symbols with at least one minute in it), in time order. A bucket
        without any minute is skipped (nothing traded: there is no bar)."""
        out: list[pl.DataFrame] = []
        while self._next < len(self._ends):
            k = self._next
            complete = self._last_minute.get(k, set()) >= self.symbols
            if not (complete or self._latest > k or now >= self._ends[k] + self.grace):
                break
            self._next += 1
            rows = self._rows.pop(k, {})
            self._last_minute.pop(k, None)
            if rows:
                out.append(self._aggregate(list(rows.values()), self._ends[k]))
        return out

    def _aggregate(self, minutes: list[MinuteBar], end: datetime) -> pl.DataFrame:
        frame = (
            minute_frame(minutes)
            .with_columns(
                vwap=pl.lit(None, pl.Float64),
                trade_count=pl.lit(None, pl.Int64),
                bar_count=pl.lit(1, pl.Int32),
                flags=pl.lit(0, pl.Int32),
            )
            .select(list(STORED_BAR_SCHEMA))
            .sort("symbol", "ts")
        )
        return aggregate_bars(
            frame,
            source=Timeframe.parse("1m"),
            target=Timeframe.parse(f"{self.minutes}m"),
            session=self.session,
            calendar=self.calendar,
            as_of=end,
        )


def minute_frame(bars: Sequence[MinuteBar]) -> pl.DataFrame:
    """Minute bars as a frame (``symbol``, ``ts``, OHLCV), e.g. to persist or compare."""
    return pl.DataFrame(
        {
            "symbol": [b.symbol for b in bars],
            "ts": [b.ts for b in bars],
            "open": [b.open for b in bars],
            "high": [b.high for b in bars],
            "low": [b.low for b in bars],
            "close": [b.close for b in bars],
            "volume": [b.volume for b in bars],
        },
        schema={k: STORED_BAR_SCHEMA[k] for k in ("symbol", "ts", "open", "high", "low", "close")}
        | {"volume": pl.Float64()},
    )
