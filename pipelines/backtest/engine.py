"""The event-driven backtest: bars in time order through the trading path and a broker.

At each bar time the broker first fills what earlier decisions allow (at this bar's open, see
:mod:`pipelines.backtest.broker`), then :func:`pipelines.execution.path.decide` sees the bars
that closed at this time with their predictions and the broker's account, and returns the
orders and cancels (strategy -> portfolio -> risk -> orders); the engine hands them to the
broker. The live session calls the same ``decide`` with Alpaca behind the account and a real
clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from itertools import accumulate
from typing import Protocol

import numpy as np
import numpy.typing as npt
import polars as pl

from pipelines.backtest.broker import BrokerConfig, Fill, Ledger, SimulatedBroker
from pipelines.backtest.kernels import ma_cross_step
from pipelines.execution.batch import BarBatch
from pipelines.execution.orders import Order
from pipelines.execution.path import (
    Account,
    PathConfig,
    PathState,
    Signals,
    Strategy,
    WorkingOrder,
    decide,
)
from pipelines.risk.events import RiskEvent


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

    @property
    def working_symbols(self) -> list[str]:
        """The symbols with an order still working."""
        ...

    def working(self, symbol: str) -> list[tuple[Order, int]]:
        """``symbol``'s working orders and the shares each has left."""
        ...

    def submit(self, order: Order) -> bool:
        """Accept ``order`` (or record why not); a repeated ``client_order_id`` is ignored."""
        ...

    def cancel(self, client_order_id: str, ts: datetime, reason: str) -> bool:
        """Cancel what is left of a working order."""
        ...

    def on_batch(self, batch: BarBatch) -> list[Fill]:
        """The bars of one time arrived: fill what they allow."""
        ...

    def mark(self) -> tuple[float, float, float]:
        """Equity, gross and net exposure (USD) at the last closes."""
        ...

    def last(self, symbol: str) -> float:
        """The last close seen of ``symbol`` (USD)."""
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

    def memory(self, n_symbols: int) -> npt.NDArray[np.float64]:
        """Per symbol: the closes seen, then the ring of the last ``slow + 1`` prefix sums."""
        return np.zeros((n_symbols, self.slow + 2))

    def step(
        self,
        memory: npt.NDArray[np.float64],
        bars: BarBatch,
        signals: Signals,
        capital: float,
        closing: bool,
        target: npt.NDArray[np.float64],
        has: npt.NDArray[np.bool_],
    ) -> None:
        out = np.empty(len(bars.ids), dtype=np.int64)
        ma_cross_step(
            bars.ids,
            bars.close,
            memory,
            self.fast,
            self.slow,
            self.shares,
            self.warmup or self.slow,
            out,
        )
        has[:] = out >= 0
        target[:] = out

    def forget(self, memory: npt.NDArray[np.float64], ids: npt.NDArray[np.int64]) -> None:
        """Nothing to forget: the next bar asks for its target again."""

    def bets(self, memory: npt.NDArray[np.float64]) -> None:
        return None

    def resize(
        self,
        memory: npt.NDArray[np.float64],
        ids: npt.NDArray[np.int64],
        shares: npt.NDArray[np.float64],
    ) -> None:
        """Nothing to resize: the crossover asks for its fixed size again at every bar."""


@dataclass(frozen=True)
class BacktestResult:
    """The ledger (fills, events, cash, positions), the equity at every bar time with the
    trading state the path was in, the risk layer's events and the path's final state."""

    ledger: Ledger
    equity: pl.DataFrame  # ts, equity, gross exposure (float USD, from the exact ledger), state
    risk_events: list[RiskEvent] = field(default_factory=list)
    state: PathState | None = None
    orders: list[Order] = field(default_factory=list)  # every order the path sent

    @property
    def trades(self) -> int:
        return len(self.ledger.fills)


class _LastCloses(Mapping[str, float]):
    """The broker's last close of every symbol, read on demand (USD)."""

    def __init__(self, venue: Broker) -> None:
        self._venue = venue

    def __getitem__(self, symbol: str) -> float:
        if symbol not in self._venue.ids:
            raise KeyError(symbol)
        return self._venue.last(symbol)

    def __iter__(self) -> Iterator[str]:
        return iter(self._venue.ids)

    def __len__(self) -> int:
        return len(self._venue.ids)


def _account(venue: Broker, now: datetime, leverage: float) -> tuple[Account, float]:
    """The simulated broker's account at ``now`` and its gross exposure (USD)."""
    equity, gross, net = venue.mark()
    working: dict[str, list[WorkingOrder]] = {}
    for symbol in venue.working_symbols:
        working[symbol] = [
            WorkingOrder(o.client_order_id, symbol, o.intent, left if o.side == "buy" else -left)
            for o, left in venue.working(symbol)
        ]
    account = Account(
        now,
        equity,
        max(0.0, equity * leverage - gross),
        venue.ledger.positions,
        working,
        None,  # the backtest's kill switch is the path state's own
        _LastCloses(venue),
        gross=gross,
        net=net,
    )
    return account, gross


def run_backtest(
    bars: pl.DataFrame,
    strategy: Strategy,
    *,
    cash: Decimal,
    config: BrokerConfig,
    volatility: pl.DataFrame | None = None,
    broker: Broker | None = None,
    signals: pl.DataFrame | None = None,
    path: PathConfig | None = None,
    closing: frozenset[datetime] = frozenset(),
    clock: Callable[[datetime], datetime] | None = None,
) -> BacktestResult:
    """Run ``strategy`` over ``bars`` (validated bars of one timeframe) through the trading
    path (:func:`pipelines.execution.path.decide`) and ``broker`` (default: a
    :class:`SimulatedBroker` with ``cash`` and ``config``).

    ``signals`` (``symbol``, ``ts``, ``prob``, ``p0``, ``volatility``) are the predictions
    each bar's decision reads; ``volatility`` (``symbol``, ``ts``, ``volatility``) feeds the
    broker's impact model and is required when ``config`` charges impact. ``path`` holds the
    portfolio, risk and limit settings (default: :class:`PathConfig` with the strategy's name
    and no risk limit that binds a sound backtest); ``closing`` the bar times whose decisions
    close every bet; ``clock`` maps a bar's ``ts`` to the time its decision is taken (default:
    ``ts + path.bar_minutes``)."""
    if config.costs.impact_k and volatility is None:
        raise ValueError(
            "impact_k > 0 prices square-root impact with each bar's volatility: pass "
            "volatility= (symbol, ts, volatility), or set impact_k to 0"
        )
    path = path or PathConfig(strategy=strategy.name)
    if path.strategy != strategy.name:
        path = replace(path, strategy=strategy.name)
    for name, frame_ in (("bars", bars), ("signals", signals)):
        if (
            frame_ is not None
            and frame_.select(pl.struct("symbol", "ts").is_duplicated().any()).item()
        ):
            dup = frame_.filter(pl.struct("symbol", "ts").is_duplicated()).row(0, named=True)
            raise ValueError(
                f"{name} hold more than one row for {dup['symbol']} at {dup['ts']}: give one "
                "row per symbol and bar time (deduplicate the predictions or the bars)"
            )
    venue: Broker = broker or SimulatedBroker(cash, set(bars["symbol"].unique().to_list()), config)
    frame = bars.sort("ts", "symbol")
    if volatility is not None:
        frame = frame.join(volatility, on=["symbol", "ts"], how="left", maintain_order="left")
    if "volatility" not in frame.columns:
        frame = frame.with_columns(volatility=pl.lit(0.0))
    if signals is not None:
        missing = {"symbol", "ts", "prob", "p0", "volatility"} - set(signals.columns)
        if missing:
            raise ValueError(
                f"signals lack {sorted(missing)}: give each prediction its prob, the p0 it is "
                "measured against (pipelines.backtest.strategy.signal_columns adds it) and the "
                "labels' volatility"
            )
        frame = frame.join(
            signals.select("symbol", "ts", "prob", "p0", pl.col("volatility").alias("_signal_vol")),
            on=["symbol", "ts"],
            how="left",
            maintain_order="left",
        )
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
    if signals is not None:
        sig = [
            frame[c].cast(pl.Float64).fill_null(fill).to_numpy()
            for c, fill in (("prob", float("nan")), ("p0", 0.5), ("_signal_vol", float("nan")))
        ]
    ids = frame["_id"].to_numpy()
    state = PathState.create(sorted(venue.ids, key=venue.ids.__getitem__), strategy, path)
    if state.ids != dict(venue.ids):
        raise ValueError("the broker's symbol ids must be the sorted symbols")
    step = timedelta(minutes=path.bar_minutes)
    times, values, gross, states = [], [], [], []
    events: list[RiskEvent] = []
    sent: list[Order] = []
    on_batch, submit, cancel = venue.on_batch, venue.submit, venue.cancel
    leverage = config.max_leverage
    for k, ts in enumerate(stamps):
        a, b = bounds[k], bounds[k + 1]
        batch = BarBatch(ts, names[a:b], ids[a:b], *(c[a:b] for c in cols))
        on_batch(batch)
        # Orders sent below fill on later bars: this mark is also the bar's closing one.
        now = clock(ts) if clock is not None else ts + step
        account, exposure = _account(venue, now, leverage)
        signal = (
            Signals(sig[0][a:b], sig[1][a:b], sig[2][a:b])
            if signals is not None
            else Signals.empty(b - a)
        )
        decision = decide(state, batch, signal, account, strategy, path, closing=ts in closing)
        state = decision.state
        for oid in decision.cancels:
            cancel(oid, ts, "replaced by a new target" if not decision.trip else "kill switch")
        for order in decision.orders:
            submit(order)
        if decision.orders:
            sent.extend(decision.orders)
        if decision.events:
            events.extend(decision.events)
        times.append(ts)
        values.append(account.equity)
        gross.append(exposure)
        states.append(state.risk.state.value)
    return BacktestResult(
        venue.ledger,
        pl.DataFrame({"ts": times, "equity": values, "gross": gross, "state": states}),
        events,
        state,
        sent,
    )
