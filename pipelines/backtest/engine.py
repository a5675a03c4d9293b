"""The event-driven backtest: bars in time order, strategy targets, orders, the broker.

At each bar time the broker first fills what earlier decisions allow (at this bar's open, see
:mod:`pipelines.backtest.broker`), then the strategy sees the bars that closed at this time and
returns target positions in shares; the difference from the current position becomes an order
(its id a pure function of strategy, symbol, bar and target). The live path runs the same
strategy and order code with a real clock and broker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from itertools import accumulate, repeat
from typing import Protocol

import numpy as np
import numpy.typing as npt
import polars as pl

from pipelines.backtest.broker import BarBatch, BrokerConfig, Fill, Ledger, SimulatedBroker
from pipelines.backtest.kernels import ma_cross_step
from pipelines.execution.orders import Order, orders_for_targets


class Broker(Protocol):
    """Where orders go: :class:`~pipelines.backtest.broker.SimulatedBroker` in a backtest; the
    live path puts a real broker behind the same calls."""

    @property
    def ids(self) -> Mapping[str, int]:
        """Symbol -> id (the ids of :class:`BarBatch` columns)."""
        ...

    @property
    def ledger(self) -> Ledger:
        """Cash, positions, fills, charges and events."""
        ...

    def submit(self, order: Order) -> bool:
        """Accept ``order`` (or record why not); a repeated ``client_order_id`` is ignored."""
        ...

    def on_batch(self, batch: BarBatch) -> list[Fill]:
        """The bars of one time arrived: fill what they allow."""
        ...

    def mark(self) -> tuple[float, float]:
        """Equity and gross exposure (USD) at the last closes."""
        ...


class Strategy(Protocol):
    name: str

    def targets(
        self, ts: datetime, bars: BarBatch, positions: Mapping[str, int], equity: float
    ) -> dict[str, int]:
        """Target shares per symbol after seeing ``bars`` (closed at ``ts``; a mapping symbol
        -> :class:`Bar` and numpy columns), given the current
        ``positions`` and ``equity`` (USD, marked at these closes); symbols left out keep their
        position."""
        ...


@dataclass
class MovingAverageCross:
    """Hold ``shares`` long while the ``fast``-bar mean close is above the ``slow`` one, else
    flat. Reads only closes up to the current bar. The window sums come from running prefix
    sums and the means are compared as ``fast_sum * slow > slow_sum * fast``: the same float
    operations as :func:`pipelines.backtest.vectorized.ma_cross_targets` and the benchmark's
    peers, so every implementation takes the same decision bit for bit."""

    fast: int = 10
    slow: int = 30
    shares: int = 100
    name: str = "ma_cross"
    warmup: int | None = None
    """Closes seen before the first decision (default ``slow``; backtesting.py waits one more)."""

    def __post_init__(self) -> None:
        if not 0 < self.fast < self.slow:
            raise ValueError("need 0 < fast < slow")
        self._count: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)  # closes per symbol id
        self._sums: npt.NDArray[np.float64] = np.zeros((0, self.slow + 1))  # prefix-sum rings

    def targets(
        self, ts: datetime, bars: BarBatch, positions: Mapping[str, int], equity: float
    ) -> dict[str, int]:
        ids = bars.ids
        if len(ids) and ids.max(initial=0) >= len(self._count):
            grow = int(ids.max()) + 1 - len(self._count)
            self._count = np.concatenate([self._count, np.zeros(grow, dtype=np.int64)])
            self._sums = np.vstack([self._sums, np.zeros((grow, self.slow + 1))])
        target = np.empty(len(ids), dtype=np.int64)
        ma_cross_step(
            ids,
            bars.close,
            self._count,
            self._sums,
            self.fast,
            self.slow,
            self.shares,
            self.warmup or self.slow,
            target,
        )
        held = np.fromiter(map(positions.get, bars.symbols, repeat(0)), np.int64, len(ids))
        decide = (target >= 0) & (target != held)
        return {bars.symbols[i]: int(target[i]) for i in np.flatnonzero(decide)}


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
    broker: Broker | None = None,
) -> BacktestResult:
    """Run ``strategy`` over ``bars`` (validated bars of one timeframe); ``volatility``
    (``symbol``, ``ts``, ``volatility``) feeds the broker's impact model and is required when
    ``config`` charges impact (a fill on a bar without one is then an error). ``broker``
    defaults to a :class:`SimulatedBroker` with ``cash`` and ``config``."""
    if config.costs.impact_k and volatility is None:
        raise ValueError(
            "impact_k > 0 prices square-root impact with each bar's volatility: pass "
            "volatility= (symbol, ts, volatility), or set impact_k to 0"
        )
    venue: Broker = broker or SimulatedBroker(cash, set(bars["symbol"].unique().to_list()), config)
    frame = bars.sort("ts", "symbol")
    if volatility is not None:
        frame = frame.join(volatility, on=["symbol", "ts"], how="left", maintain_order="left")
    if "volatility" not in frame.columns:
        frame = frame.with_columns(volatility=pl.lit(0.0))
    frame = frame.with_columns(
        pl.col("volatility").fill_null(float("nan")),
        _id=pl.col("symbol").replace_strict(venue.ids, return_dtype=pl.Int64),
    )
    runs = frame.select(pl.col("ts").rle()).unnest("ts")  # one row per bar time
    stamps = runs["value"].to_list()
    bounds = [0, *accumulate(runs["len"].to_list())]
    names = frame["symbol"].to_list()
    cols = [
        frame[c].cast(pl.Float64).to_numpy()
        for c in ("open", "high", "low", "close", "volume", "volatility")
    ]
    ids = frame["_id"].to_numpy()
    times, values, gross = [], [], []
    positions = venue.ledger.positions
    on_batch, submit, name = venue.on_batch, venue.submit, strategy.name
    for k, ts in enumerate(stamps):
        a, b = bounds[k], bounds[k + 1]
        batch = BarBatch(ts, names[a:b], ids[a:b], *(c[a:b] for c in cols))
        on_batch(batch)
        # Orders submitted below fill on later bars: this mark is also the bar's closing one.
        equity, exposure = venue.mark()
        for order in orders_for_targets(
            name, ts, strategy.targets(ts, batch, positions, equity), positions
        ):
            submit(order)
        times.append(ts)
        values.append(equity)
        gross.append(exposure)
    return BacktestResult(
        venue.ledger, pl.DataFrame({"ts": times, "equity": values, "gross": gross})
    )
