"""The event-driven backtest: bars in time order, strategy targets, orders, the broker.

At each bar time the broker first fills what earlier decisions allow (at this bar's open, see
:mod:`pipelines.backtest.broker`), then the strategy sees the bars that closed at this time and
returns target positions in shares; the difference from the current position becomes an order
(its id a pure function of strategy, symbol, bar and target). The live path runs the same
strategy and order code with a real clock and broker.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol

import polars as pl

from pipelines.backtest.broker import Bar, BrokerConfig, Ledger, SimulatedBroker, money
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
        self._closes: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=self.slow))
        self._seen: dict[str, int] = defaultdict(int)

    def targets(
        self, ts: datetime, bars: Mapping[str, Bar], positions: Mapping[str, int], equity: float
    ) -> dict[str, int]:
        out = {}
        for symbol, bar in bars.items():
            closes = self._closes[symbol]
            closes.append(bar.close)
            self._seen[symbol] += 1
            if self._seen[symbol] < (self.warmup or self.slow):
                continue
            fast = sum(list(closes)[-self.fast :]) / self.fast
            slow = sum(closes) / self.slow
            out[symbol] = self.shares if fast > slow else 0
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
    """Run ``strategy`` over ``bars`` (validated bars of one timeframe)."""
    symbols = set(bars["symbol"].unique().to_list())
    broker = SimulatedBroker(cash, symbols, config)
    frame = bars.sort("ts", "symbol")
    if volatility is not None:
        frame = frame.join(volatility, on=["symbol", "ts"], how="left")
    has_vol = "volatility" in frame.columns
    times, values, gross = [], [], []
    last_close: dict[str, Decimal] = {}
    for (ts,), group in frame.group_by("ts", maintain_order=True):
        at = {}
        for r in group.iter_rows(named=True):
            bar = Bar(
                r["symbol"],
                r["ts"],
                r["open"],
                r["high"],
                r["low"],
                r["close"],
                r["volume"],
                (r["volatility"] or 0.0) if has_vol else 0.0,
            )
            broker.on_bar(bar)
            at[bar.symbol] = bar
            last_close[bar.symbol] = money(bar.close)
        positions = broker.ledger.positions
        equity = float(broker.ledger.equity(last_close))
        for symbol, target in strategy.targets(ts, at, positions, equity).items():
            delta = target - positions.get(symbol, 0)
            if delta:
                broker.submit(
                    Order.create(
                        strategy.name,
                        symbol,
                        ts,
                        f"target:{target}",
                        "buy" if delta > 0 else "sell",
                        abs(delta),
                    )
                )
        times.append(ts)
        values.append(float(broker.ledger.equity(last_close)))
        gross.append(float(broker.ledger.gross(last_close)))
    return BacktestResult(
        broker.ledger, pl.DataFrame({"ts": times, "equity": values, "gross": gross})
    )
