"""The one decision path of backtest and live: strategy -> portfolio -> risk -> orders, per bar.

:func:`decide` is a pure function of ``(state, bars, signals, account)``: the bars that closed
at one time, the model's predictions for them, and what the broker reports (positions, orders
still working, equity, the kill switch). It returns the new :class:`PathState`, the orders to
send, the working orders to cancel and the risk events, and changes nothing it was given. The
backtest engine calls it with the simulated broker's account, the live session with Alpaca's;
the state is a plain value (:meth:`PathState.to_dict`) that the live session persists and the
backtest replays.

One bar, in order:

1. **Replay guard.** A bar at or before the state's last one is answered with nothing: a
   replayed bar sends no order (and the same state on the same bar gives the same ids).
2. **Trading state** (:func:`pipelines.risk.limits.update_status`): daily loss, drawdown
   ladder, data staleness and the kill switch set ACTIVE / REDUCING / HALTED.
3. **Strategy**: the strategy's step updates its per-symbol memory (bets, barriers, ages) and
   says which symbols it wants at which signed size (``intended`` shares).
4. **Portfolio** (:mod:`pipelines.portfolio`): with a method other than ``bet_size``, when the
   set of open bets changes, the bets share the gross the strategy sized by risk, from a
   covariance of past returns only; resizes inside the rebalance band or below the minimum
   trade value are not made.
5. **Orders net against working orders**: a symbol whose position plus working orders already
   make its intended size is left alone (a partly filled order is not sent again); otherwise
   its working orders are cancelled and one order for ``intended - position`` is sent, its
   ``client_order_id`` a pure function of (strategy, symbol, bar, intended size).
6. **Pre-trade checks** (:func:`pipelines.risk.checks.check_orders`): each refusal is a risk
   event with its rule and numbers; a refused entry is forgotten by the strategy (no bet is
   open), a refused exit is asked again at the next bar.

HALTED sends no order, only cancels of every working order; with ``flatten_on_trip`` a tripped
kill switch also closes every position (orders with intent ``flatten``, which may only cut
exposure).

A cancel and the order that replaces it are sent together: the simulated broker applies cancels
first; a live broker must see a cancel confirmed before the replacement is sent (a fill racing
the cancel changes the position the replacement was sized from), which is why
:attr:`Decision.replaces` names the cancels each order follows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from itertools import repeat
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from pipelines.config import TradingSettings
from pipelines.execution.batch import BarBatch
from pipelines.execution.kernels import ENTERED, SMALL, settle
from pipelines.execution.orders import Order, Side
from pipelines.portfolio.config import PortfolioConfig
from pipelines.portfolio.returns import ReturnsWindow
from pipelines.portfolio.weights import portfolio_weights, rebalance
from pipelines.risk.checks import Book, MarketView, RiskConfig, check_orders
from pipelines.risk.events import RiskEvent, TradingState
from pipelines.risk.limits import LimitsConfig, RiskStatus, update_status

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Signals:
    """The model's predictions for the rows of one :class:`BarBatch` (NaN where a symbol has
    none): ``prob`` of an up move, ``p0`` the no-skill probability it is measured against,
    ``volatility`` per bar (the labels' barrier volatility, a return)."""

    prob: F64
    p0: F64
    volatility: F64

    @classmethod
    def empty(cls, n: int) -> Signals:
        """No prediction for any of ``n`` rows (a strategy that needs none)."""
        nan = np.full(n, np.nan)
        return cls(nan, np.full(n, 0.5), nan)


@dataclass(frozen=True)
class WorkingOrder:
    """An order the broker still works: ``remaining`` signed shares (+ buy, - sell)."""

    client_order_id: str
    symbol: str
    intent: str
    remaining: int


@dataclass(frozen=True)
class Account:
    """What the broker reports at decision time ``now`` (UTC): ``equity`` and ``buying_power``
    in USD, filled ``positions`` (signed shares), ``working`` orders by symbol, the persisted
    ``kill_switch`` (read from the trading database just before this call: the persisted switch
    decides, so a person's reset takes effect; None where there is no persisted switch, as in
    a backtest, whose switch is the state's own, latched once tripped), and optionally the
    ``last_prices`` traded
    (USD; default: the bars' closes), the ``shortable`` symbols (None: all) and the filled
    positions' ``gross`` and ``net`` value at the last prices (USD; None: computed here)."""

    now: datetime
    equity: float
    buying_power: float
    positions: Mapping[str, int]
    working: Mapping[str, Sequence[WorkingOrder]]
    kill_switch: bool | None = None
    last_prices: Mapping[str, float] | None = None
    shortable: frozenset[str] | None = None
    gross: float | None = None
    net: float | None = None


class Strategy(Protocol):
    """A strategy the path can run: per-symbol ``memory`` (a float array, one row per symbol id)
    that :meth:`step` updates in place for the rows of one bar time."""

    @property
    def name(self) -> str:
        """The strategy's name, part of every order's id."""
        ...

    def memory(self, n_symbols: int) -> F64:
        """The memory before any bar."""
        ...

    def step(
        self,
        memory: F64,
        bars: BarBatch,
        signals: Signals,
        capital: float,
        closing: bool,
        target: F64,
        has: B,
    ) -> None:
        """Decide on ``bars``: ``has[j]`` where row j gets a new intended size ``target[j]``
        (signed shares); rows without a decision keep what they intended."""
        ...

    def forget(self, memory: F64, ids: I64) -> None:
        """The entries of these symbol ids were refused: no bet of theirs is open."""
        ...

    def bets(self, memory: F64) -> tuple[I64, F64, F64] | None:
        """The open bets (symbol ids, sides +1/-1, sizes in (0, 1]) for a portfolio method;
        None when the strategy has no bets to weigh (then only ``bet_size`` applies)."""
        ...

    def resize(self, memory: F64, ids: I64, shares: F64) -> None:
        """A portfolio method gave these bets new sizes (signed shares)."""
        ...


@dataclass(frozen=True)
class PathConfig:
    """Everything the path decides with. ``bar_minutes`` is the bars' length (a bar stamped
    ``ts`` closes at ``ts + bar_minutes``; daily bars: 390 for the regular session is enough,
    only data staleness reads it); ``zone`` the exchange's time zone (sessions of the daily
    loss limit); ``capital`` (USD, None: the account's equity) what the strategy sizes on;
    ``flatten_on_trip`` (default) closes every position when the kill switch trips, so a halt
    stops the losses rather than freezing the book until a person acts. ``split_flips``
    (default) takes a position through zero in two steps, the close at this bar and the
    opposite side at the next: Alpaca refuses one order that does both ("insufficient qty
    available"), and the backtest trades as the account can."""

    strategy: str = "model"
    bar_minutes: int = 15
    portfolio: PortfolioConfig = field(default_factory=PortfolioConfig)
    risk: RiskConfig = field(default_factory=RiskConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    capital: float | None = None
    flatten_on_trip: bool = True
    zone: str = "America/New_York"
    split_flips: bool = True

    @classmethod
    def without_limits(cls, strategy: str = "model", bar_minutes: int = 15) -> PathConfig:
        """No exposure cap, order-size cap or loss limit: the research setting under which the
        vectorized path must equal the event engine. The checks that say whether an order can
        trade at all (hours, volume, price band, restricted, short sale, rate) stay on."""
        return cls(
            strategy=strategy,
            bar_minutes=bar_minutes,
            risk=RiskConfig(
                max_order_notional=None,
                max_position=None,
                max_gross=None,
                max_net=None,
                max_orders_per_minute=None,
            ),
            portfolio=PortfolioConfig(rebalance_band=0.0, min_trade_value=0.0),
            limits=LimitsConfig(daily_loss=None, reduce_drawdown=None, halt_drawdown=None),
        )


@dataclass(frozen=True)
class PathState:
    """The path's state between bars: the symbols (their ids are positions in this tuple), the
    strategy's memory, the size each symbol is meant to hold, the trading status, the recent
    orders (for the per-minute rate), the last bar decided, the kill switch as last seen,
    for portfolio methods the window of past closes, and which symbols' sizes are ``fresh``
    (decided and not yet sent: an addition is sent once, not again after its order is gone)."""

    symbols: tuple[str, ...]
    memory: F64
    intended: I64
    risk: RiskStatus = field(default_factory=RiskStatus)
    recent: tuple[datetime, ...] = ()
    last_ts: datetime | None = None
    kill_switch: bool = False
    returns: ReturnsWindow | None = None
    ids: Mapping[str, int] = field(default_factory=dict, compare=False)
    fresh: B | None = None

    def __post_init__(self) -> None:
        if not self.ids:
            object.__setattr__(self, "ids", {s: i for i, s in enumerate(self.symbols)})
        if self.fresh is None:
            object.__setattr__(self, "fresh", np.zeros(len(self.symbols), dtype=np.bool_))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PathState) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def create(cls, symbols: Sequence[str], strategy: Strategy, config: PathConfig) -> PathState:
        """The state before the first bar, for ``symbols`` (sorted; a bar of any other symbol
        is an error)."""
        names = tuple(sorted(set(symbols)))
        window = (
            None
            if config.portfolio.method == "bet_size"
            else ReturnsWindow(config.portfolio.lookback, len(names))
        )
        return cls(
            names,
            strategy.memory(len(names)),
            np.zeros(len(names), dtype=np.int64),
            returns=window,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe value (floats, ints, strings, ISO times) that :meth:`from_dict` reads
        back to an equal state."""
        return {
            "symbols": list(self.symbols),
            "memory": [[_json_float(x) for x in row] for row in self.memory.tolist()],
            "intended": self.intended.tolist(),
            "risk": self.risk.to_dict(),
            "recent": [t.isoformat() for t in self.recent],
            "last_ts": None if self.last_ts is None else self.last_ts.isoformat(),
            "kill_switch": self.kill_switch,
            "returns": None if self.returns is None else self.returns.to_dict(),
            "fresh": np.flatnonzero(self.fresh).tolist() if self.fresh is not None else [],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PathState:
        symbols = tuple(data["symbols"])
        memory = np.array(
            [[float(x) for x in row] for row in data["memory"]], dtype=np.float64
        ).reshape(len(symbols), -1)
        return cls(
            symbols,
            memory,
            np.array(data["intended"], dtype=np.int64),
            RiskStatus.from_dict(data["risk"]),
            tuple(datetime.fromisoformat(t) for t in data["recent"]),
            None if data["last_ts"] is None else datetime.fromisoformat(data["last_ts"]),
            bool(data["kill_switch"]),
            None if data["returns"] is None else ReturnsWindow.from_dict(data["returns"]),
            fresh=_mask(len(symbols), data.get("fresh", [])),
        )


def _mask(n: int, on: Sequence[int]) -> B:
    out = np.zeros(n, dtype=np.bool_)
    out[list(on)] = True
    return out


def _json_float(x: float) -> float | str:
    return x if math.isfinite(x) else repr(x)  # inf / -inf / nan as strings JSON can hold


@dataclass(frozen=True)
class Decision:
    """What one bar decided: the new ``state``, the ``orders`` to send (after the checks), the
    working orders to ``cancel`` (client ids), for each order the cancels it ``replaces``, the
    risk ``events``, whether the kill switch must be ``trip``ped (persisted by the caller), and
    the sizes the strategy ``intended`` for the bar's symbols (:attr:`intended`)."""

    state: PathState
    orders: list[Order]
    cancels: list[str]
    events: list[RiskEvent]
    trip: bool = False
    replaces: dict[str, list[str]] = field(default_factory=dict)
    decided: tuple[BarBatch, B] | None = None

    @property
    def intended(self) -> dict[str, int]:
        """Symbol -> the signed shares the strategy decided on at this bar."""
        if self.decided is None:
            return {}
        bars, has = self.decided
        return {bars.symbols[j]: int(self.state.intended[bars.ids[j]]) for j in np.flatnonzero(has)}


_ZONES: dict[str, ZoneInfo] = {}


def _session(now: datetime, zone: str) -> date:
    tz = _ZONES.get(zone)
    if tz is None:
        tz = _ZONES[zone] = ZoneInfo(zone)
    return now.astimezone(tz).date()


def decide(
    state: PathState,
    bars: BarBatch,
    signals: Signals,
    account: Account,
    strategy: Strategy,
    config: PathConfig,
    *,
    closing: bool = False,
) -> Decision:
    """One bar of the trading path (see the module docstring). ``bars`` closed at
    ``bars.ts + bar_minutes``; their ``ids`` index ``state.symbols``; ``signals`` are aligned
    with them; ``closing``: the session closes before another decision can fill (the strategy
    opens nothing and closes its bets)."""
    if state.last_ts is not None and bars.ts <= state.last_ts:
        return Decision(state, [], [], [])
    now = account.now
    bar_end = bars.ts + timedelta(minutes=config.bar_minutes)
    age = (now - bar_end).total_seconds()
    tripped = state.kill_switch if account.kill_switch is None else account.kill_switch
    risk, events, trip = update_status(
        state.risk,
        config.limits,
        now=now,
        session=_session(now, config.zone),
        equity=account.equity,
        data_age_s=age,
        kill_switch=tripped,
        flat=not any(account.positions.values())
        and not any(w.remaining for ws in account.working.values() for w in ws),
    )
    if trip:
        tripped = True
    events = list(events)
    halted = risk.state is TradingState.HALTED
    memory = state.memory.copy()
    intended = state.intended.copy()
    fresh = state.fresh.copy() if state.fresh is not None else np.zeros(len(intended), np.bool_)
    # Working orders that must go whatever the strategy says: all of them when HALTED, those
    # adding exposure when REDUCING (sent earlier, they would grow the book now).
    dropped = _dropped(account, risk.state)
    if dropped:
        events.append(
            RiskEvent(
                bars.ts,
                "cancel",
                risk.reason or risk.state.value.lower(),
                f"{risk.state.value} ({risk.reason}): {len(dropped)} working orders "
                + ("cancelled" if halted else "adding exposure cancelled"),
                values={"orders": float(len(dropped))},
            )
        )
    gone = set(dropped)
    orders_working = (
        {s: [w for w in ws if w.client_order_id not in gone] for s, ws in account.working.items()}
        if gone
        else account.working
    )
    working = _working_after(account, gone)
    positions = account.positions
    ids = bars.ids
    n = len(ids)
    target = np.zeros(n)
    has = np.zeros(n, dtype=np.bool_)
    capital = account.equity if config.capital is None else config.capital
    strategy.step(memory, bars, signals, capital, closing, target, has)
    held = _held(bars, positions, working)
    flags = np.empty(n, dtype=np.int8)
    floor = config.portfolio.min_trade_value
    n_has, n_entered, n_small, n_mismatch = settle(
        ids, target, has, intended, held, bars.close, floor, flags
    )
    if n_has:
        fresh[ids[has]] = True
    if n_small:
        # An entry worth less than the minimum trade would mostly pay its commission.
        small = (flags & SMALL) != 0
        events.extend(_small_entries(bars, target, small, floor))
        strategy.forget(memory, ids[small])
    entered = (flags & ENTERED) != 0 if n_entered else None
    window = state.returns
    if window is not None:
        window = window.copy()
        window.push(ids, bars.close)
        if n_has:
            sized = intended.copy()
            note = _reweigh(memory, intended, strategy, window, state.symbols, account, config)
            # A resized bet is sent again only where something is held or working: an entry
            # whose order is gone unfilled is not revived by another symbol's entry.
            holding = np.array(
                [positions.get(x, 0) + working.get(x, 0) for x in state.symbols], dtype=np.int64
            )
            fresh |= (intended != sized) & (holding != 0)
            if note:
                events.append(RiskEvent(bars.ts, "portfolio", config.portfolio.method, note))
            if entered is not None and floor > 0:
                # An entry the method weighed below the minimum trade is not made either.
                after = intended[ids]
                small = entered & (np.abs(after * bars.close) < floor)
                if small.any():
                    events.extend(_small_entries(bars, after.astype(np.float64), small, floor))
                    strategy.forget(memory, ids[small])
                    intended[ids[small]] = 0
        n_mismatch = 1
    cancels: list[str] = list(dropped)
    replaces: dict[str, list[str]] = {}
    orders: list[Order] = []
    plans: dict[str, _Plan] = {}
    if halted:
        # Nothing new is opened or grown while halted: a bet the strategy opened, flipped or
        # grew at this bar is abandoned, so it is not sent once trading resumes.
        pos = np.fromiter(map(positions.get, bars.symbols, repeat(0)), np.int64, n)
        goals = intended[ids]
        grew = (np.abs(goals) > np.abs(pos)) | (goals * pos < 0)
        for j in np.flatnonzero(grew).tolist():
            _abandon(strategy, memory, intended, fresh, int(ids[j]), int(pos[j]))
        if tripped and config.flatten_on_trip:
            orders = _flatten(bars, account, working, config)
    elif n_mismatch:
        mismatched = np.flatnonzero(intended[ids] != held)
        if len(mismatched):
            plans, notes = _plan(
                bars, mismatched, fresh[ids], intended, positions, working, orders_working, config
            )
            events.extend(notes)
            for symbol, plan in list(plans.items()):
                if plan.stale:
                    # An addition whose order is gone unfilled (rejected, expired, cancelled)
                    # is not sent again without a new decision: the bet is abandoned.
                    i = state.ids[symbol]
                    _abandon(strategy, memory, intended, fresh, i, positions.get(symbol, 0))
                    plans[symbol] = _replan(bars, symbol, intended[i], positions, working, config)
            orders = [p.order for p in plans.values() if p.order is not None]
    accepted: list[Order] = []
    recent = state.recent
    if orders:
        orders.sort(key=lambda o: _priority(o, positions, bars))
        # The checks see the book as it will be: without the working orders being replaced.
        replaced = gone.union(*(p.cancels for p in plans.values()))
        market, book = _views(bars, orders, account, _working_after(account, replaced), now)
        # A flatten under HALTED is checked as a reduction: it may only cut exposure.
        check_state = TradingState.REDUCING if halted else risk.state
        accepted, refused, recent = check_orders(
            orders, config=config.risk, state=check_state, market=market, book=book, recent=recent
        )
        if refused:
            events.extend(refused)
            refused_ids = {e.client_order_id for e in refused}
            retry: list[Order] = []
            for order in orders:
                if order.client_order_id not in refused_ids or halted:
                    continue
                symbol = order.symbol
                position = positions.get(symbol, 0)
                goal = _goal(order)
                if abs(goal) > abs(position) or goal * position < 0:
                    # A refused addition is abandoned; a refused reduction is asked again at
                    # the next bar. A refused flip still closes what is held.
                    i = state.ids[symbol]
                    _abandon(
                        strategy, memory, intended, fresh, i, position + working.get(symbol, 0)
                    )
                    first = plans.get(symbol)
                    plan = _replan(bars, symbol, intended[i], positions, working, config)
                    # A close after a refused flip goes with the cancels of what was working
                    # (sized from the position alone); a kept growth keeps its working orders.
                    keep = list(first.cancels) if first and intended[i] == 0 and position else []
                    plans[symbol] = _Plan(plan.order, keep, False)
                    if plan.order is not None:
                        retry.append(plan.order)
            if retry:
                more, refused_again, recent = check_orders(
                    retry,
                    config=config.risk,
                    state=risk.state,
                    market=_views(bars, retry, account, book.working, now)[0],
                    book=book,
                    recent=recent,
                )
                accepted.extend(more)
                events.extend(refused_again)
        taken = {o.client_order_id for o in accepted}
        for order in accepted:
            i = state.ids[order.symbol]
            # The close of a split flip leaves its opening to send: still a fresh decision.
            if not (config.split_flips and _goal(order) == 0 and intended[i] != 0):
                fresh[i] = False
        for plan in plans.values():
            # A working order is cancelled for a replacement that was accepted, or when the
            # strategy no longer wants what it adds; a refused addition keeps it working.
            if plan.cancels and (plan.order is None or plan.order.client_order_id in taken):
                cancels.extend(plan.cancels)
                if plan.order is not None:
                    replaces[plan.order.client_order_id] = plan.cancels
            elif plan.order is not None and plan.reduction:
                # A refused reduction keeps the working orders that cut; those adding go.
                cancels.extend(plan.adding)
    else:
        for plan in plans.values():
            cancels.extend(plan.cancels)
    new_state = PathState(
        state.symbols,
        memory,
        intended,
        risk,
        recent,
        bars.ts,
        tripped,
        window,
        state.ids,
        fresh,
    )
    return Decision(new_state, accepted, cancels, events, trip, replaces, (bars, has))


@dataclass(frozen=True)
class _Plan:
    """One symbol's orders at a bar: the order (None: only cancels), the working orders it
    replaces, whether it is a stale addition (no new decision, its earlier order gone)."""

    order: Order | None
    cancels: list[str]
    stale: bool
    reduction: bool = True
    adding: tuple[str, ...] = ()


def _goal(order: Order) -> int:
    """The position an order's intent aims at."""
    return 0 if order.intent == "flatten" else int(order.intent.removeprefix("target:"))


def _priority(order: Order, positions: Mapping[str, int], bars: BarBatch) -> tuple[int, float]:
    """Reductions first, then additions by notional, largest first: when a per-minute rate
    binds, exits go and the largest bets are kept, not the alphabetically first."""
    position = positions.get(order.symbol, 0)
    goal = _goal(order)
    if abs(goal) <= abs(position) and goal * position >= 0:
        return 0, 0.0
    j = bars.index(order.symbol)
    price = float(bars.close[j]) if j is not None else 0.0
    return 1, -order.quantity * price


def _dropped(account: Account, state: TradingState) -> list[str]:
    """Working orders to cancel in this trading state: when HALTED all but the flattening ones;
    when REDUCING those that add exposure, and all of a symbol's when together they would take
    the position through zero to a larger one."""
    if state is TradingState.HALTED:
        return [
            w.client_order_id
            for ws in account.working.values()
            for w in ws
            if w.intent != "flatten"
        ]
    if state is TradingState.REDUCING:
        out = []
        for symbol, ws in account.working.items():
            position = account.positions.get(symbol, 0)
            total = position + sum(w.remaining for w in ws)
            if abs(total) > abs(position) or total * position < 0:
                out += [w.client_order_id for w in ws]
            else:
                out += [w.client_order_id for w in ws if w.remaining * position >= 0]
        return out
    return []


def _held(bars: BarBatch, positions: Mapping[str, int], working: Mapping[str, int]) -> I64:
    """Position plus working orders (signed shares) of each of the bar's symbols."""
    symbols = bars.symbols
    held = np.fromiter(map(positions.get, symbols, repeat(0)), np.int64, len(symbols))
    for symbol, shares in working.items():
        j = bars.index(symbol)
        if j is not None:
            held[j] += shares
    return held


def _abandon(strategy: Strategy, memory: F64, intended: I64, fresh: B, i: int, held: int) -> None:
    """Give up what symbol id ``i`` was to add: a new or flipped bet is forgotten (size 0, so
    what is held is closed), a grown one is kept at what the book ``held``s."""
    fresh[i] = False
    goal = int(intended[i])
    ids = np.array([i], dtype=np.int64)
    if held == 0 or goal * held < 0:
        strategy.forget(memory, ids)
        intended[i] = 0
    else:
        strategy.resize(memory, ids, np.array([float(held)]))
        intended[i] = held


def _small_entries(bars: BarBatch, target: F64, small: B, floor: float) -> list[RiskEvent]:
    out = []
    for j in np.flatnonzero(small).tolist():
        size, price = int(target[j]), float(bars.close[j])
        out.append(
            RiskEvent(
                bars.ts,
                "refused",
                "min_trade_value",
                f"entry of {size} {bars.symbols[j]} worth {abs(size * price):,.2f} USD, below "
                f"the minimum trade value {floor:,.2f} USD",
                symbol=bars.symbols[j],
                values={"quantity": float(size), "price": price},
            )
        )
    return out


def _replan(
    bars: BarBatch,
    symbol: str,
    goal: int,
    positions: Mapping[str, int],
    working: Mapping[str, int],
    config: PathConfig,
) -> _Plan:
    """The order (if any) that takes ``symbol`` from its position and working orders to
    ``goal`` after an addition was abandoned: a reduction, or nothing."""
    goal, position = int(goal), positions.get(symbol, 0)
    if goal == position + working.get(symbol, 0) or goal == position:
        return _Plan(None, [], False)
    delta = goal - position
    side: Side = "buy" if delta > 0 else "sell"
    order = Order.create(config.strategy, symbol, bars.ts, f"target:{goal}", side, abs(delta))
    return _Plan(order, [], False)


def _plan(
    bars: BarBatch,
    rows: I64,
    has: B,
    intended: I64,
    positions: Mapping[str, int],
    working: Mapping[str, int],
    orders_working: Mapping[str, Sequence[WorkingOrder]],
    config: PathConfig,
) -> tuple[dict[str, _Plan], list[RiskEvent]]:
    """For each of the bar's ``rows`` whose position and working orders differ from the
    intended size: cancel its working orders and send one order for ``intended - position``.
    An addition already sent once (not ``has``: no decision since its order was accepted) and
    no longer working is marked stale (its order is gone unfilled) and recorded."""
    symbols, ids = bars.symbols, bars.ids
    plans: dict[str, _Plan] = {}
    notes: list[RiskEvent] = []
    for j in rows.tolist():
        symbol = symbols[j]
        goal = int(intended[ids[j]])
        position = positions.get(symbol, 0)
        adds = abs(goal) > abs(position) or goal * position < 0
        stale = adds and not has[j] and working.get(symbol, 0) == 0
        if stale:
            notes.append(
                RiskEvent(
                    bars.ts,
                    "refused",
                    "not_resent",
                    f"the order taking {symbol} from {position} to {goal} shares is gone "
                    "unfilled (rejected, expired or cancelled): an addition is not sent again "
                    "without a new decision",
                    symbol=symbol,
                    values={"position": float(position), "goal": float(goal)},
                )
            )
            plans[symbol] = _Plan(None, [], True)
            continue
        theirs = orders_working.get(symbol, ())
        dropped = [w.client_order_id for w in theirs]
        adding = tuple(w.client_order_id for w in theirs if w.remaining * position >= 0)
        flip = config.split_flips and goal * position < 0
        if flip and position + working.get(symbol, 0) == 0:
            plans[symbol] = _Plan(None, [], False, True)  # its close is working: let it
            continue
        target = 0 if flip else goal  # a split flip opens the other side at the next bar
        delta = target - position
        order = None
        if delta:
            side: Side = "buy" if delta > 0 else "sell"
            order = Order.create(
                config.strategy, symbol, bars.ts, f"target:{target}", side, abs(delta)
            )
        plans[symbol] = _Plan(order, dropped, False, flip or not adds, adding)
    return plans, notes


def _flatten(
    bars: BarBatch, account: Account, working: Mapping[str, int], config: PathConfig
) -> list[Order]:
    """Orders closing what of each of the bar's symbols the position and the flattening
    orders still working (``working``) leave open."""
    orders = []
    for symbol in bars.symbols:
        left = account.positions.get(symbol, 0) + working.get(symbol, 0)
        if left:
            side: Side = "sell" if left > 0 else "buy"
            orders.append(
                Order.create(config.strategy, symbol, bars.ts, "flatten", side, abs(left))
            )
    return orders


def _working_after(account: Account, cancelled: set[str]) -> dict[str, int]:
    """Signed shares still working per symbol once ``cancelled`` are gone."""
    out: dict[str, int] = {}
    for symbol, ws in account.working.items():
        left = sum(w.remaining for w in ws if w.client_order_id not in cancelled)
        if left:
            out[symbol] = left
    return out


def _views(
    bars: BarBatch,
    orders: Sequence[Order],
    account: Account,
    working: Mapping[str, int],
    now: datetime,
) -> tuple[MarketView, Book]:
    """What the checks read: the orders' sizing prices and bar volumes, the last trades, and
    the book with the working orders left after the cancels."""
    rows = [(o.symbol, bars.index(o.symbol)) for o in orders]
    prices = {s: float(bars.close[j]) for s, j in rows if j is not None}
    if account.last_prices is None:
        prices = {s: float(bars.close[j]) for j, s in enumerate(bars.symbols)}
    market = MarketView(
        now=now,
        prices=prices,
        last_prices=account.last_prices if account.last_prices is not None else prices,
        volumes={s: float(bars.volume[j]) for s, j in rows if j is not None},
    )
    book = Book(
        equity=account.equity,
        buying_power=account.buying_power,
        positions=account.positions,
        working=working,
        shortable=account.shortable,
        gross=account.gross,
        net=account.net,
    )
    return market, book


def _reweigh(
    memory: F64,
    intended: I64,
    strategy: Strategy,
    window: ReturnsWindow,
    symbols: tuple[str, ...],
    account: Account,
    config: PathConfig,
) -> str:
    """Share the open bets' gross among them by the portfolio method (past returns only);
    the method's note when it fell back (e.g. to equal weight), else ''."""
    open_bets = strategy.bets(memory)
    if open_bets is None:
        raise ValueError(
            f"portfolio method {config.portfolio.method!r} needs a strategy with bets; "
            "this strategy only sizes itself: use method bet_size"
        )
    ids, sides, sizes = open_bets
    if len(ids) < 2:
        return ""
    closes = window.last_closes(ids)
    if not np.all(np.isfinite(closes) & (closes > 0)):
        return f"{config.portfolio.method}: a bet has no close yet; sizes left as the strategy's"
    budget = float(np.abs(intended[ids] * closes).sum())
    if budget <= 0:
        return ""
    weights, note = portfolio_weights(config.portfolio, window.returns(ids), sides, sizes)
    notional = weights * budget
    cap = config.risk.max_position
    if cap is not None:
        # A weight above the position cap would only be refused: it is capped instead.
        limit = cap * account.equity
        notional = np.clip(notional, -limit, limit)
    shares = np.trunc(notional / closes)
    names = [symbols[i] for i in ids.tolist()]
    current = {
        s: account.positions.get(s, 0) + sum(w.remaining for w in account.working.get(s, ()))
        for s in names
    }
    goal = rebalance(
        {s: int(q) for s, q in zip(names, shares, strict=True)},
        current,
        {s: float(c) for s, c in zip(names, closes, strict=True)},
        config.portfolio,
    )
    new = np.array([goal[s] for s in names], dtype=np.float64)
    strategy.resize(memory, ids, new)
    intended[ids] = new.astype(np.int64)
    return note


def path_config(
    trading: TradingSettings, *, strategy: str, bar_minutes: int, calendar: str = "XNYS"
) -> PathConfig:
    """The :class:`PathConfig` of the settings file's ``trading`` block."""
    p, r, lim = trading.portfolio, trading.risk, trading.limits
    return PathConfig(
        strategy=strategy,
        bar_minutes=bar_minutes,
        portfolio=PortfolioConfig(
            method=p.method,
            lookback=p.lookback,
            min_history=p.min_history,
            covariance=p.covariance,
            risk_aversion=p.risk_aversion,
            rebalance_band=p.rebalance_band,
            min_trade_value=p.min_trade_value,
        ),
        risk=RiskConfig(
            max_order_notional=r.max_order_notional,
            max_position=r.max_position,
            max_gross=r.max_gross,
            max_net=r.max_net,
            max_orders_per_minute=r.max_orders_per_minute,
            price_band=r.price_band,
            trading_hours=r.trading_hours,
            calendar=calendar,
            restricted=frozenset(r.restricted),
            allow_short=r.allow_short,
            min_bar_volume=r.min_bar_volume,
        ),
        limits=LimitsConfig(
            daily_loss=lim.daily_loss,
            reduce_drawdown=lim.reduce_drawdown,
            halt_drawdown=lim.halt_drawdown,
            max_data_age_s=lim.max_data_age_s,
        ),
        flatten_on_trip=trading.flatten_on_trip,
    )
