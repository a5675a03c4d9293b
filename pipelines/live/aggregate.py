"""Minute bars as they stream in -> the strategy's bars, with the batch aggregation's rules.

A :class:`LiveAggregator` holds one session's minute bars. A bucket (the strategy's bar, anchored
at the session open and cut short at an early close, as :func:`pipelines.bars.aggregate.
aggregate_bars` builds them) is *closed* once every symbol of the universe has sent its last
minute, or a minute of a later bucket has arrived, or the clock is ``grace`` past its end
(symbols that did not trade in its last minute). A closed bucket is aggregated with the batch
aggregation's rules from the minutes received, so a live bar equals the stored bar built from
the same minutes (``tests/live/test_aggregate.py`` compares them on a real session).
Incomplete buckets are withheld. A minute that arrives after its bucket closed is *late*: kept
(and persisted by the session) but not used, since the decision it would have changed was
already taken; a repeated minute is a duplicate and ignored.

Example::

    agg = LiveAggregator(symbols, minutes=15, window=(open_utc, close_utc))
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

from pipelines.data.schema import STORED_BAR_SCHEMA

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
    docstring). ``window`` is the session's tradable (start, end) in UTC, from the exchange
    calendar (early closes included)."""

    def __init__(
        self,
        symbols: Sequence[str],
        *,
        minutes: int,
        window: tuple[datetime, datetime],
        session: Literal["regular", "extended"] = "regular",
        grace: timedelta = timedelta(seconds=2),
    ) -> None:
        self.symbols = frozenset(symbols)
        self.minutes = minutes
        self.start, self.end = window
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
        """One bucket's bar of each symbol: the batch aggregation's rules for a single bucket
        (first open, highest high, lowest low, last close, summed volume, the minutes counted;
        no VWAP or trade count from the stream), written out for speed;
        ``tests/live/test_aggregate.py`` holds it equal to
        :func:`pipelines.bars.aggregate.aggregate_bars` on a real session."""
        by_symbol: dict[str, list[MinuteBar]] = {}
        for bar in sorted(minutes, key=lambda b: (b.symbol, b.ts)):
            by_symbol.setdefault(bar.symbol, []).append(bar)
        start = self._starts[bisect_right(self._starts, minutes[0].ts) - 1]
        rows = [
            (
                symbol,
                start,
                bars[0].open,
                max(b.high for b in bars),
                min(b.low for b in bars),
                bars[-1].close,
                float(sum(b.volume for b in bars)),
                None,
                None,
                len(bars),
                0,
            )
            for symbol, bars in by_symbol.items()
        ]
        return pl.DataFrame(rows, schema=STORED_BAR_SCHEMA, orient="row")


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
