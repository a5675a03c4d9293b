"""The one decision path: orders net against working orders, the participation cap is the
symbol's per bar, replays send nothing, and the trading states hold."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

import numpy as np
import numpy.typing as npt
import polars as pl
import pytest

from pipelines.backtest.broker import BrokerConfig, SimulatedBroker
from pipelines.backtest.engine import run_backtest
from pipelines.execution.batch import BarBatch
from pipelines.execution.path import (
    Account,
    PathConfig,
    PathState,
    Signals,
    WorkingOrder,
    decide,
)
from pipelines.risk.checks import RiskConfig
from pipelines.risk.events import TradingState
from pipelines.risk.limits import LimitsConfig

pytestmark = pytest.mark.unit
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Scheduled:
    """A strategy that wants ``goal(ts)`` shares of each symbol it names, every bar."""

    goal: Callable[[datetime], dict[str, int]]
    name: str = "scheduled"
    calls: list[datetime] = field(default_factory=list, compare=False)

    def memory(self, n_symbols: int) -> F64:
        return np.zeros((n_symbols, 1))

    def step(
        self,
        memory: F64,
        bars: BarBatch,
        signals: Signals,
        capital: float,
        closing: bool,
        target: F64,
        has: npt.NDArray[np.bool_],
    ) -> None:
        goal = self.goal(bars.ts)
        for j, symbol in enumerate(bars.symbols):
            if symbol in goal:
                target[j] = goal[symbol]
                has[j] = True

    def forget(self, memory: F64, ids: npt.NDArray[np.int64]) -> None:
        pass

    def bets(self, memory: F64) -> None:
        return None

    def resize(self, memory: F64, ids: npt.NDArray[np.int64], shares: F64) -> None:
        pass  # asks for its schedule again at every bar


NO_LIMITS = PathConfig(
    strategy="scheduled",
    risk=RiskConfig(max_position=None, max_gross=None, max_net=None, max_order_notional=None),
    limits=LimitsConfig(daily_loss=None, reduce_drawdown=None, halt_drawdown=None),
)


@pytest.fixture(scope="module")
def pplt(sample_bars: pl.DataFrame) -> pl.DataFrame:
    return sample_bars.filter(pl.col("symbol") == "PPLT").sort("ts")


def _per_bar_fills(result_fills: list[object]) -> dict[tuple[str, datetime], int]:
    out: dict[tuple[str, datetime], int] = {}
    for f in result_fills:
        key = (f.symbol, f.ts)  # type: ignore[attr-defined]
        out[key] = out.get(key, 0) + abs(f.quantity)  # type: ignore[attr-defined]
    return out


def test_a_constant_target_ends_at_the_target_and_never_exceeds_the_cap(
    pplt: pl.DataFrame,
) -> None:
    """1,250 PPLT shares under a 5% participation cap: the target is worked by one order, the
    fills of a bar never exceed the bar's cap, and the position never passes the target."""
    volume = dict(zip(pplt["ts"].to_list(), pplt["volume"].to_list(), strict=True))
    strategy = Scheduled(lambda ts: {"PPLT": 1250})
    result = run_backtest(
        pplt.head(40),
        strategy,
        cash=Decimal("1000000"),
        config=BrokerConfig(participation=0.05),
        path=NO_LIMITS,
    )
    fills = result.ledger.fills
    for (_, ts), shares in _per_bar_fills(list(fills)).items():
        assert shares <= int(0.05 * volume[ts]), ts
    held, peak = 0, 0
    for f in fills:
        held += f.quantity
        peak = max(peak, held)
    assert peak == held == result.ledger.positions["PPLT"] == 1250
    # One order worked the target: it was never re-sent while it was working.
    assert len({f.client_order_id for f in fills}) == 1
    assert sum(1 for f in fills) > 3  # the cap did bind: several partial fills


def test_a_partly_filled_exit_is_not_sent_again_and_never_flips(pplt: pl.DataFrame) -> None:
    stamps = pplt["ts"].to_list()
    switch = stamps[15]
    strategy = Scheduled(lambda ts: {"PPLT": 1250 if ts < switch else 0})
    result = run_backtest(
        pplt.head(40),
        strategy,
        cash=Decimal("1000000"),
        config=BrokerConfig(participation=0.05),
        path=NO_LIMITS,
    )
    held, low = 0, 0
    sells = set()
    for f in result.ledger.fills:
        held += f.quantity
        low = min(low, held)
        if f.quantity < 0:
            sells.add(f.client_order_id)
    assert low == 0 and held == 0
    assert len(sells) == 1  # the exit was one order, worked over several bars
    # Whatever of the entry was still working at the switch was cancelled, not filled after.
    cancelled = [e for e in result.ledger.events if e.kind == "canceled"]
    assert all(e.ts == switch for e in cancelled)


def test_a_changed_target_cancels_the_working_order_and_sends_the_difference(
    pplt: pl.DataFrame,
) -> None:
    bars = pplt.head(3)
    rows = bars.to_dicts()
    batch = _batch(rows[0])
    state = PathState.create(["PPLT"], Scheduled(lambda ts: {"PPLT": 1000}), NO_LIMITS)
    working = {"PPLT": [WorkingOrder("abc", "PPLT", "target:1250", 900)]}
    account = _account(batch, positions={"PPLT": 350}, working=working)
    d = decide(
        state, batch, Signals.empty(1), account, Scheduled(lambda ts: {"PPLT": 1000}), NO_LIMITS
    )
    assert d.cancels == ["abc"]
    (order,) = d.orders
    assert (order.side, order.quantity, order.intent) == ("buy", 650, "target:1000")
    assert d.replaces == {order.client_order_id: ["abc"]}
    # Position and working orders already make the target: nothing is sent or cancelled.
    working = {"PPLT": [WorkingOrder("abc", "PPLT", "target:1000", 650)]}
    account = _account(batch, positions={"PPLT": 350}, working=working)
    d = decide(
        state, batch, Signals.empty(1), account, Scheduled(lambda ts: {"PPLT": 1000}), NO_LIMITS
    )
    assert d.orders == [] and d.cancels == []


def test_replaying_a_bar_gives_the_same_ids_and_no_new_orders(pplt: pl.DataFrame) -> None:
    strategy = Scheduled(lambda ts: {"PPLT": 500})
    rows = pplt.head(2).to_dicts()
    state = PathState.create(["PPLT"], strategy, NO_LIMITS)
    batch = _batch(rows[0])
    account = _account(batch)
    first = decide(state, batch, Signals.empty(1), account, strategy, NO_LIMITS)
    again = decide(state, batch, Signals.empty(1), account, strategy, NO_LIMITS)
    assert [o.client_order_id for o in first.orders] == [o.client_order_id for o in again.orders]
    assert len(first.orders) == 1
    # The bar again, after it was decided (a restarted loop sees it twice): nothing.
    replay = decide(first.state, batch, Signals.empty(1), account, strategy, NO_LIMITS)
    assert replay.orders == [] and replay.cancels == [] and replay.state is first.state
    # And a broker that already has the order ignores a resend of the same decision.
    broker = SimulatedBroker(Decimal("100000"), {"PPLT"}, BrokerConfig())
    assert broker.submit(first.orders[0]) and not broker.submit(again.orders[0])


def test_the_state_round_trips_through_json_and_decides_the_same(pplt: pl.DataFrame) -> None:
    from pipelines.backtest.strategy import ModelStrategy, SizingConfig

    strategy = ModelStrategy(SizingConfig(threshold=0.0, profit_take=1.0, stop_loss=1.0))
    config = PathConfig()
    state = PathState.create(["PPLT"], strategy, config)
    rows = pplt.head(6).to_dicts()
    for row in rows[:3]:
        batch = _batch(row)
        signals = Signals(np.array([0.7]), np.array([0.5]), np.array([0.002]))
        state = decide(state, batch, signals, _account(batch), strategy, config).state
    restored = PathState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert restored.to_dict() == state.to_dict()
    for row in rows[3:]:
        batch = _batch(row)
        signals = Signals(np.array([0.2]), np.array([0.5]), np.array([0.002]))
        a = decide(state, batch, signals, _account(batch), strategy, config)
        b = decide(restored, batch, signals, _account(batch), strategy, config)
        assert a.orders == b.orders
        assert [o.client_order_id for o in a.orders] == [o.client_order_id for o in b.orders]
        assert a.state.to_dict() == b.state.to_dict()
        state, restored = a.state, b.state


def test_halted_sends_only_cancels_and_flattens_when_configured(pplt: pl.DataFrame) -> None:
    strategy = Scheduled(lambda ts: {"PPLT": 500})
    row = pplt.row(0, named=True)
    batch = _batch(row)
    working = {"PPLT": [WorkingOrder("w1", "PPLT", "target:900", 400)]}
    state = PathState.create(["PPLT"], strategy, NO_LIMITS)
    account = _account(batch, positions={"PPLT": 500}, working=working, kill_switch=True)
    frozen = PathConfig(
        strategy="scheduled", risk=NO_LIMITS.risk, limits=NO_LIMITS.limits, flatten_on_trip=False
    )
    d = decide(state, batch, Signals.empty(1), account, strategy, frozen)
    assert d.state.risk.state is TradingState.HALTED
    assert d.cancels == ["w1"] and d.orders == []
    flat = PathConfig(
        strategy="scheduled", risk=NO_LIMITS.risk, limits=NO_LIMITS.limits, flatten_on_trip=True
    )
    d = decide(state, batch, Signals.empty(1), account, strategy, flat)
    (order,) = d.orders
    assert (order.side, order.quantity, order.intent) == ("sell", 500, "flatten")
    # Without a persisted switch (a backtest) the state's own latch holds: still HALTED.
    nxt = _batch(pplt.row(1, named=True))
    d2 = decide(d.state, nxt, Signals.empty(1), _account(nxt), strategy, NO_LIMITS)
    assert d2.state.risk.state is TradingState.HALTED and d2.orders == []
    # With one (live), the database decides: a person's reset lets trading resume.
    d3 = decide(
        d.state, nxt, Signals.empty(1), _account(nxt, kill_switch=False), strategy, NO_LIMITS
    )
    assert d3.state.risk.state is TradingState.ACTIVE and len(d3.orders) == 1


def test_reducing_lets_exits_through_and_refuses_entries(pplt: pl.DataFrame) -> None:
    """A 6% drawdown puts the path in REDUCING: an order that cuts the position goes, one that
    adds is refused with its rule."""
    config = PathConfig(
        strategy="scheduled",
        risk=NO_LIMITS.risk,
        limits=LimitsConfig(daily_loss=None, reduce_drawdown=0.05, halt_drawdown=0.5),
    )
    rows = pplt.head(2).to_dicts()
    grow = Scheduled(lambda ts: {"PPLT": 800})
    state = PathState.create(["PPLT"], grow, config)
    b0 = _batch(rows[0])
    state = decide(state, b0, Signals.empty(1), _account(b0, equity=100_000.0), grow, config).state
    b1 = _batch(rows[1])
    poorer = _account(b1, positions={"PPLT": 500}, equity=94_000.0)
    d = decide(state, b1, Signals.empty(1), poorer, grow, config)
    assert d.state.risk.state is TradingState.REDUCING
    assert d.orders == [] and [e.rule for e in d.events if e.kind == "refused"] == ["reducing"]
    cut = Scheduled(lambda ts: {"PPLT": 200})
    d = decide(state, b1, Signals.empty(1), poorer, cut, config)
    (order,) = d.orders
    assert (order.side, order.quantity) == ("sell", 300)


def _batch(row: dict[str, object]) -> BarBatch:
    def col(key: str) -> F64:
        return np.array([float(row[key])])  # type: ignore[arg-type]

    return BarBatch(
        row["ts"],  # type: ignore[arg-type]
        [str(row["symbol"])],
        np.array([0], dtype=np.int64),
        col("open"),
        col("high"),
        col("low"),
        col("close"),
        col("volume"),
        np.array([0.0]),
    )


def _account(
    batch: BarBatch,
    *,
    positions: dict[str, int] | None = None,
    working: dict[str, list[WorkingOrder]] | None = None,
    equity: float = 100_000.0,
    kill_switch: bool | None = None,
) -> Account:
    return Account(
        batch.ts + timedelta(minutes=15),
        equity,
        equity,
        positions or {},
        working or {},
        kill_switch,
    )


def test_reducing_cancels_working_orders_that_add_exposure(pplt: pl.DataFrame) -> None:
    config = PathConfig(
        strategy="scheduled",
        risk=NO_LIMITS.risk,
        limits=LimitsConfig(daily_loss=None, reduce_drawdown=0.05, halt_drawdown=0.5),
    )
    strategy = Scheduled(lambda ts: {"PPLT": 1250})
    rows = pplt.head(2).to_dicts()
    b0, b1 = _batch(rows[0]), _batch(rows[1])
    state = decide(
        PathState.create(["PPLT"], strategy, config),
        b0,
        Signals.empty(1),
        _account(b0),
        strategy,
        config,
    ).state
    working = {"PPLT": [WorkingOrder("entry", "PPLT", "target:1250", 1100)]}
    poorer = _account(b1, positions={"PPLT": 150}, working=working, equity=94_000.0)
    d = decide(state, b1, Signals.empty(1), poorer, strategy, config)
    assert d.state.risk.state is TradingState.REDUCING
    assert d.cancels == ["entry"] and d.orders == []  # the rest of the entry is not bought


def test_a_refused_flip_still_closes_what_is_held(pplt: pl.DataFrame) -> None:
    """Flips in one order (``split_flips=False``), short selling off: long 133 -> short 132 is
    refused, but the long is still closed."""
    config = PathConfig(
        strategy="scheduled",
        split_flips=False,
        risk=RiskConfig(
            max_position=None,
            max_gross=None,
            max_net=None,
            max_order_notional=None,
            allow_short=False,
        ),
        limits=NO_LIMITS.limits,
    )
    strategy = Scheduled(lambda ts: {"PPLT": -132})
    batch = _batch(pplt.row(0, named=True))
    state = PathState.create(["PPLT"], strategy, config)
    d = decide(
        state, batch, Signals.empty(1), _account(batch, positions={"PPLT": 133}), strategy, config
    )
    assert [e.rule for e in d.events if e.kind == "refused"] == ["short_sale"]
    (order,) = d.orders
    assert (order.side, order.quantity, order.intent) == ("sell", 133, "target:0")


def test_a_flip_closes_first_and_opens_the_other_side_at_the_next_bar(
    pplt: pl.DataFrame,
) -> None:
    """Alpaca refuses one order from long to short: long 133 -> short 132 is a sell of 133
    at this bar, and a sell of 132 at the next, without a new decision in between."""
    config = PathConfig.without_limits(strategy="scheduled")
    targets = {0: {"PPLT": -132}}
    calls = iter(range(10))
    strategy = Scheduled(lambda ts: targets.get(next(calls), {}))
    rows = pplt.head(2).to_dicts()
    state = PathState.create(["PPLT"], strategy, config)
    b0 = _batch(rows[0])
    first = decide(
        state, b0, Signals.empty(1), _account(b0, positions={"PPLT": 133}), strategy, config
    )
    (close,) = first.orders
    assert (close.side, close.quantity, close.intent) == ("sell", 133, "target:0")
    b1 = _batch(rows[1])
    second = decide(
        first.state, b1, Signals.empty(1), _account(b1, positions={"PPLT": 0}), strategy, config
    )
    (open_,) = second.orders
    assert (open_.side, open_.quantity, open_.intent) == ("sell", 132, "target:-132")
    assert not second.events


def test_a_flip_whose_close_is_still_working_closes_the_rest_before_opening(
    pplt: pl.DataFrame,
) -> None:
    """The close of a flip filled 100 of 133 by the next bar and 33 still work: that bar
    cancels it and closes the 33 (never one order through zero); the short opens after."""
    config = PathConfig.without_limits(strategy="scheduled")
    targets = {0: {"PPLT": -132}}
    calls = iter(range(10))
    strategy = Scheduled(lambda ts: targets.get(next(calls), {}))
    rows = pplt.head(3).to_dicts()
    state = PathState.create(["PPLT"], strategy, config)
    b0 = _batch(rows[0])
    first = decide(
        state, b0, Signals.empty(1), _account(b0, positions={"PPLT": 133}), strategy, config
    )
    (close,) = first.orders
    b1 = _batch(rows[1])
    working = {"PPLT": [WorkingOrder(close.client_order_id, "PPLT", "target:0", -33)]}
    account = _account(b1, positions={"PPLT": 33}, working=working)
    second = decide(first.state, b1, Signals.empty(1), account, strategy, config)
    assert not second.orders and not second.cancels  # the close is working as meant
    b2 = _batch(rows[2])
    third = decide(
        second.state, b2, Signals.empty(1), _account(b2, positions={"PPLT": 0}), strategy, config
    )
    (open_,) = third.orders
    assert (open_.side, open_.quantity, open_.intent) == ("sell", 132, "target:-132")


def test_an_addition_gone_unfilled_is_not_sent_again(pplt: pl.DataFrame) -> None:
    """The model strategy enters once; the broker rejects the order at the fill: the next bar
    does not send the stale entry again, it says so."""
    from pipelines.backtest.strategy import ModelStrategy, SizingConfig

    strategy = ModelStrategy(SizingConfig(threshold=0.0, max_holding_bars=8))
    config = PathConfig.without_limits()
    rows = pplt.head(3).to_dicts()
    state = PathState.create(["PPLT"], strategy, config)
    b0 = _batch(rows[0])
    first = decide(
        state,
        b0,
        Signals(np.array([0.8]), np.array([0.5]), np.array([0.002])),
        _account(b0),
        strategy,
        config,
    )
    assert len(first.orders) == 1
    b1 = _batch(rows[1])  # no prediction at this bar, no position, no working order
    again = decide(first.state, b1, Signals.empty(1), _account(b1), strategy, config)
    assert again.orders == []
    assert [e.rule for e in again.events if e.kind == "refused"] == ["not_resent"]


def test_a_bet_decided_while_halted_is_not_sent_when_trading_resumes(pplt: pl.DataFrame) -> None:
    from pipelines.backtest.strategy import ModelStrategy, SizingConfig

    strategy = ModelStrategy(SizingConfig(threshold=0.0, max_holding_bars=8))
    config = PathConfig.without_limits()
    rows = pplt.head(3).to_dicts()
    state = PathState.create(["PPLT"], strategy, config)
    b0 = _batch(rows[0])
    halted = decide(
        state,
        b0,
        Signals(np.array([0.8]), np.array([0.5]), np.array([0.002])),
        _account(b0, kill_switch=True),
        strategy,
        config,
    )
    assert halted.orders == [] and halted.state.intended.tolist() == [0]
    b1 = _batch(rows[1])
    resumed = decide(
        halted.state, b1, Signals.empty(1), _account(b1, kill_switch=False), strategy, config
    )
    assert resumed.state.risk.state is TradingState.ACTIVE and resumed.orders == []


def test_duplicate_predictions_are_an_error_that_says_what_to_do(pplt: pl.DataFrame) -> None:
    from pipelines.backtest.model_backtest import run_model_strategy
    from pipelines.backtest.strategy import SizingConfig

    signals = pplt.head(2).select("symbol", "ts", prob=pl.lit(0.7), volatility=pl.lit(0.002))
    with pytest.raises(ValueError, match="more than one row for PPLT"):
        run_model_strategy(
            pplt.head(10),
            pl.concat([signals, signals]),
            SizingConfig(reference="half"),
            cash=Decimal("100000"),
            config=BrokerConfig(),
        )


def test_a_flat_book_in_reducing_trades_again_at_the_next_session(pplt: pl.DataFrame) -> None:
    config = PathConfig(
        strategy="scheduled",
        risk=NO_LIMITS.risk,
        limits=LimitsConfig(daily_loss=None, reduce_drawdown=0.05, halt_drawdown=0.5),
    )
    strategy = Scheduled(lambda ts: {"PPLT": 100})
    days = pplt.with_columns(day=pl.col("ts").dt.date()).partition_by("day", maintain_order=True)
    b0, b1, b2 = (
        _batch(days[0].row(0, named=True)),
        _batch(days[0].row(1, named=True)),
        _batch(days[1].row(0, named=True)),
    )
    state = PathState.create(["PPLT"], strategy, config)
    state = decide(
        state, b0, Signals.empty(1), _account(b0, equity=100_000.0), strategy, config
    ).state
    d = decide(state, b1, Signals.empty(1), _account(b1, equity=94_000.0), strategy, config)
    assert d.state.risk.state is TradingState.REDUCING and d.orders == []
    # The next session starts flat: the reduce level re-bases and the entry goes.
    d = decide(d.state, b2, Signals.empty(1), _account(b2, equity=94_000.0), strategy, config)
    assert d.state.risk.state is TradingState.ACTIVE and len(d.orders) == 1
