"""The event-driven backtest: bars in time order, strategy targets, orders, the broker.

At each bar time the broker first fills what earlier decisions allow (at this bar's open, see
:mod:`pipelines.backtest.broker`), then the strategy sees the bars that closed at this time and
returns target positions in shares; the difference from the current position becomes an order
(its id a pure function of strategy, symbol, bar and target). The live path runs the same
strategy and order code with a real clock and broker.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from itertools import accumulate, chain, repeat
from typing import Protocol

import polars as pl

from pipelines.backtest.broker import Bar, BrokerConfig, Ledger, SimulatedBroker
from pipelines.execution.orders import Order


class Strategy(Protocol):
    name: str

    def targets(
        self, ts: datetime, bars: Mapping[str, Bar], positions: Mapping[str, int], equity: float
    ) -> dict[str, int]:
        """Target shares per symbol after seeing ``bars`` (closed at ``ts``), given the current
        ``positions`` and ``equity`` (USD, marked at these closes); symbols left out keep their
        position."""
        ...


@dataclass
class MovingAverageCross:
    """Hold ``shares`` long while the ``fast``-bar mean close is above the ``slow`` one, else
    flat. Reads only closes up to the current bar."""

    fast: int = 10
    slow: int = 30
    shares: int = 100
    name: str = "ma_cross"
    warmup: int | None = None
    """Closes seen before the first decision (default ``slow``; backtesting.py waits one more)."""

    def __post_init__(self) -> None:
        if not 0 < self.fast < self.slow:
            raise ValueError("need 0 < fast < slow")
        self._closes: dict[str, list[float]] = defaultdict(list)
        self._ready: set[str] = set()

    def targets(
        self, ts: datetime, bars: Mapping[str, Bar], positions: Mapping[str, int], equity: float
    ) -> dict[str, int]:
        out = {}
        fast_n, slow_n, shares = self.fast, self.slow, self.shares
        warmup = self.warmup or slow_n
        every, ready, held = self._closes, self._ready, positions.get
        for symbol, bar in bars.items():
            closes = every[symbol]
            closes.append(bar.close)
            if symbol in ready:
                if len(closes) > 4 * slow_n:
                    del closes[:-slow_n]
            elif len(closes) < warmup:
                continue
            else:
                ready.add(symbol)
            window = closes[-slow_n:]
            target = shares if sum(window[-fast_n:]) / fast_n > sum(window) / slow_n else 0
            if target != held(symbol, 0):
                out[symbol] = target
        return out


@dataclass(frozen=True)
class BacktestResult:
    """The ledger (fills, events, cash, positions) and the equity at every bar time."""

    ledger: Ledger
    equity: pl.DataFrame  # ts, equity and gross exposure (float USD, from the exact ledger)

    @property
    def trades(self) -> int:
        return len(self.ledger.fills)


def run_backtest(
    bars: pl.DataFrame,
    strategy: Strategy,
    *,
    cash: Decimal,
    config: BrokerConfig,
    volatility: pl.DataFrame | None = None,
) -> BacktestResult:
    """Run ``strategy`` over ``bars`` (validated bars of one timeframe); ``volatility``
    (``symbol``, ``ts``, ``volatility``) feeds the broker's impact model."""
    symbols = set(bars["symbol"].unique().to_list())
    broker = SimulatedBroker(cash, symbols, config)
    frame = bars.sort("ts", "symbol")
    if volatility is not None:
        frame = frame.join(volatility, on=["symbol", "ts"], how="left", maintain_order="left")
    vol = (
        frame["volatility"].fill_null(0.0)
        if "volatility" in frame.columns
        else pl.repeat(0.0, frame.height, eager=True)
    )
    runs = frame.select(pl.col("ts").rle()).unnest("ts")  # one row per bar time
    lengths = runs["len"].to_list()
    # One datetime object per bar time, shared by its bars (converting per bar is slow).
    stamps = chain.from_iterable(map(repeat, runs["value"].to_list(), lengths))
    all_bars = list(
        map(
            tuple.__new__,
            repeat(Bar),
            zip(
                frame["symbol"].to_list(),
                stamps,
                frame["open"].to_list(),
                frame["high"].to_list(),
                frame["low"].to_list(),
                frame["close"].to_list(),
                frame["volume"].cast(pl.Float64).to_list(),
                vol.to_list(),
                strict=True,
            ),
        )
    )
    bounds = list(accumulate(lengths))
    times, values, gross = [], [], []
    positions = broker.ledger.positions
    on_bars, submit, name = broker.on_bars, broker.submit, strategy.name
    start = 0
    for stop in bounds:
        group = all_bars[start:stop]
        on_bars(group)
        at = {bar.symbol: bar for bar in group}
        ts = group[0].ts
        start = stop
        equity, _ = broker.mark()
        for symbol, target in strategy.targets(ts, at, positions, equity).items():
            delta = target - positions.get(symbol, 0)
            if delta:
                submit(
                    Order.create(
                        name,
                        symbol,
                        ts,
                        f"target:{target}",
                        "buy" if delta > 0 else "sell",
                        abs(delta),
                    )
                )
        times.append(ts)
        equity, exposure = broker.mark()
        values.append(equity)
        gross.append(exposure)
    return BacktestResult(
        broker.ledger, pl.DataFrame({"ts": times, "equity": values, "gross": gross})
    )
