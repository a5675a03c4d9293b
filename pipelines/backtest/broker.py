"""A simulated broker with an exact ledger.

Orders submitted on bar t fill on a later bar of their symbol: market orders at that bar's open,
limit orders when the bar trades through the limit (at the better of open and limit), stop
orders when it reaches the stop (at the worse of open and stop). A participation cap limits a
fill to a share of the bar's volume; the rest stays open and carries over. Each fill pays
slippage (fixed bps + half the spread + a square-root impact, ``impact_k`` x volatility x
sqrt(quantity / volume)) and a commission (per share with a minimum, plus bps of notional).
A short position pays a borrow fee: ``borrow_bps`` a year (360-day count) of its value at the
previous close, accrued over the calendar time between the symbol's bars.
Money is booked in ``Decimal``; nothing is silently dropped: every rejected or held order is
recorded with its reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import NamedTuple

from pipelines.execution.orders import Order

CENT = Decimal("0.01")
SECONDS_PER_BORROW_YEAR = Decimal(360 * 86400)


def money(x: float | int | str | Decimal) -> Decimal:
    """An exact Decimal from a float's shortest repr (not its binary expansion)."""
    if isinstance(x, Decimal):
        return x
    if isinstance(x, float) and not math.isfinite(x):
        raise ValueError(f"{x} is not an amount of money")
    return Decimal(repr(x)) if isinstance(x, float) else Decimal(x)


@dataclass(frozen=True)
class CostModel:
    """Costs of a fill. ``slippage_bps`` 1.0 = 0.01% of the price; ``half_spread_bps`` half the
    quoted spread; ``impact_k`` scales ``volatility * sqrt(quantity / volume)``;
    ``commission_per_share`` with ``commission_min`` per order, plus ``commission_bps``;
    ``borrow_bps`` 30.0 = a short pays 0.30% of its value a year (easy-to-borrow names)."""

    slippage_bps: float = 0.0
    half_spread_bps: float = 0.0
    impact_k: float = 0.0
    commission_per_share: Decimal = Decimal("0")
    commission_min: Decimal = Decimal("0")
    commission_bps: float = 0.0
    borrow_bps: float = 0.0


@dataclass(frozen=True)
class BrokerConfig:
    """``participation`` caps a fill at that share of the bar's volume (None: no cap);
    ``max_leverage`` caps gross exposure over equity after a fill (1.0: cash only)."""

    costs: CostModel = CostModel()
    participation: float | None = None
    max_leverage: float = 1.0


class Bar(NamedTuple):
    """One bar of one symbol (prices in USD, ``ts`` its end, UTC)."""

    symbol: str
    ts: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float
    volatility: float = 0.0  # per-bar return volatility, for the impact model


@dataclass(frozen=True)
class Fill:
    client_order_id: str
    symbol: str
    ts: datetime
    quantity: int  # signed: + bought, - sold
    price: Decimal  # after slippage
    commission: Decimal
    slippage: Decimal  # cost of slippage in USD (>= 0)
    decided_at: datetime  # the bar the order was decided on


@dataclass(frozen=True)
class Event:
    """A rejection or a hold, with its reason."""

    client_order_id: str
    ts: datetime
    kind: str  # "rejected" | "held"
    reason: str


@dataclass(frozen=True)
class Charge:
    """A cost booked outside a fill (``kind`` ``"borrow"``), in USD, exact."""

    symbol: str
    ts: datetime
    kind: str
    amount: Decimal


@dataclass
class Ledger:
    """Cash, positions, fills, charges and events, booked exactly."""

    cash: Decimal
    positions: dict[str, int] = field(default_factory=dict)
    fills: list[Fill] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    charges: list[Charge] = field(default_factory=list)

    def equity(self, prices: dict[str, Decimal]) -> Decimal:
        return self.cash + sum(
            (Decimal(q) * prices[s] for s, q in self.positions.items() if q), Decimal(0)
        )

    def gross(self, prices: dict[str, Decimal]) -> Decimal:
        return sum(
            (abs(Decimal(q) * prices[s]) for s, q in self.positions.items() if q), Decimal(0)
        )


class SimulatedBroker:
    """Submit orders, then feed bars in time order; the ledger books every outcome."""

    def __init__(self, cash: Decimal, symbols: set[str], config: BrokerConfig) -> None:
        self.ledger = Ledger(cash=money(cash))
        self.symbols = symbols
        self.config = config
        self._pending: dict[str, dict[str, tuple[Order, int]]] = {}  # symbol -> id -> remaining
        self.seen: set[str] = set()
        self.last: dict[str, float] = {}  # last close per symbol
        self._last_ts: dict[str, datetime] = {}
        self._borrow = money(config.costs.borrow_bps / 1e4)

    @property
    def open_orders(self) -> dict[str, tuple[Order, int]]:
        """Orders not yet (fully) filled: id -> (order, shares remaining)."""
        return {oid: v for pending in self._pending.values() for oid, v in pending.items()}

    def _event(self, order: Order, ts: datetime, kind: str, reason: str) -> None:
        self.ledger.events.append(Event(order.client_order_id, ts, kind, reason))

    def submit(self, order: Order) -> bool:
        """Accept ``order`` for the following bars, or record why not. A repeated
        ``client_order_id`` is ignored (idempotent) and returns False."""
        if order.client_order_id in self.seen:
            return False
        self.seen.add(order.client_order_id)
        if order.symbol not in self.symbols:
            self._event(order, order.bar_ts, "rejected", f"unknown symbol {order.symbol}")
            return False
        if order.quantity <= 0:
            self._event(
                order,
                order.bar_ts,
                "rejected",
                f"quantity {order.quantity} must be a positive number of shares",
            )
            return False
        if order.type == "limit" and order.limit_price is None:
            self._event(order, order.bar_ts, "rejected", "a limit order needs limit_price")
            return False
        if order.type == "stop" and order.stop_price is None:
            self._event(order, order.bar_ts, "rejected", "a stop order needs stop_price")
            return False
        self._pending.setdefault(order.symbol, {})[order.client_order_id] = (
            order,
            order.quantity,
        )
        return True

    def on_bar(self, bar: Bar) -> list[Fill]:
        """Accrue borrow on a short held into this bar, then fill what this bar allows of the
        open orders of its symbol (submitted earlier)."""
        return self.on_bars((bar,))

    def on_bars(self, bars: Iterable[Bar]) -> list[Fill]:
        """:meth:`on_bar` for each of ``bars`` (one per symbol, same time), in order."""
        fills: list[Fill] = []
        positions, pending, last, last_ts = (
            self.ledger.positions,
            self._pending,
            self.last,
            self._last_ts,
        )
        borrow = bool(self._borrow)
        for bar in bars:
            symbol = bar.symbol
            if borrow and positions.get(symbol, 0) < 0:
                self._accrue_borrow(bar)
            last_ts[symbol] = bar.ts
            if pending.get(symbol):
                fills += self._fill_pending(bar, pending[symbol])
            last[symbol] = bar.close
        return fills

    def _accrue_borrow(self, bar: Bar) -> None:
        since = self._last_ts.get(bar.symbol)
        if since is None:
            return
        seconds = Decimal(round((bar.ts - since).total_seconds()))
        value = -self.ledger.positions[bar.symbol] * money(self.last[bar.symbol])
        fee = value * self._borrow * seconds / SECONDS_PER_BORROW_YEAR
        self.ledger.cash -= fee
        self.ledger.charges.append(Charge(bar.symbol, bar.ts, "borrow", fee))

    def _fill_pending(self, bar: Bar, pending: dict[str, tuple[Order, int]]) -> list[Fill]:
        fills = []
        prices = (bar.open, bar.high, bar.low, bar.close)
        for oid, (order, remaining) in list(pending.items()):
            if order.bar_ts >= bar.ts:
                continue
            if not all(math.isfinite(p) and p > 0 for p in prices):
                self._event(order, bar.ts, "held", "the bar has a missing or invalid price")
                continue
            price = self._trigger(order, bar)
            if price is None:
                continue
            quantity = remaining
            if self.config.participation is not None:
                cap = math.floor(self.config.participation * bar.volume)
                if cap <= 0:
                    self._event(order, bar.ts, "held", "zero volume under the participation cap")
                    continue
                quantity = min(quantity, cap)
            fill = self._fill(order, bar, price, quantity)
            if fill is None:
                del pending[oid]
                continue
            fills.append(fill)
            left = remaining - quantity
            if left:
                pending[oid] = (order, left)
                self._event(
                    order,
                    bar.ts,
                    "held",
                    f"partial fill {quantity} of {remaining}; {left} carried over",
                )
            else:
                del pending[oid]
        return fills

    def mark(self) -> tuple[float, float]:
        """Equity and gross exposure (USD, float) at the last closes, for decisions and the
        equity curve; the exact books are :attr:`ledger`."""
        value = gross = 0.0
        last = self.last
        for s, q in self.ledger.positions.items():
            if q:
                v = q * last[s]
                value += v
                gross += abs(v)
        return float(self.ledger.cash) + value, gross

    def _trigger(self, order: Order, bar: Bar) -> Decimal | None:
        o, h, lo = money(bar.open), money(bar.high), money(bar.low)
        if order.type == "market":
            return o
        if order.type == "limit":
            lim = order.limit_price
            assert lim is not None
            if order.side == "buy":
                return min(o, lim) if lo <= lim else None
            return max(o, lim) if h >= lim else None
        stop = order.stop_price
        assert stop is not None
        if order.side == "buy":
            return max(o, stop) if h >= stop else None
        return min(o, stop) if lo <= stop else None

    def _fill(self, order: Order, bar: Bar, price: Decimal, quantity: int) -> Fill | None:
        c = self.config.costs
        impact = 0.0
        if c.impact_k and bar.volume > 0:
            impact = c.impact_k * bar.volatility * math.sqrt(quantity / bar.volume)
        frac = money((c.slippage_bps + c.half_spread_bps) / 1e4 + impact)
        sign = 1 if order.side == "buy" else -1
        fill_price = price * (Decimal(1) + sign * frac)
        notional = fill_price * quantity
        commission = max(c.commission_per_share * quantity, c.commission_min) + (
            notional * money(c.commission_bps / 1e4)
        )
        commission = commission.quantize(CENT, rounding=ROUND_HALF_EVEN)
        signed = sign * quantity
        cash_after = self.ledger.cash - Decimal(signed) * fill_price - commission
        positions = dict(self.ledger.positions)
        positions[order.symbol] = positions.get(order.symbol, 0) + signed
        if not self._clearly_within_buying_power(positions, order.symbol, cash_after, fill_price):
            equity, gross = self._exact_exposure(positions, order.symbol, cash_after, fill_price)
            if equity <= 0 or gross > equity * money(self.config.max_leverage):
                self._event(
                    order,
                    bar.ts,
                    "rejected",
                    f"insufficient buying power: gross {gross:.2f} after the fill would "
                    f"exceed {self.config.max_leverage} x equity {equity:.2f}",
                )
                return None
        self.ledger.cash = cash_after
        self.ledger.positions[order.symbol] = positions[order.symbol]  # in place: callers hold it
        fill = Fill(
            order.client_order_id,
            order.symbol,
            bar.ts,
            signed,
            fill_price,
            commission,
            abs(fill_price - price) * quantity,
            order.bar_ts,
        )
        self.ledger.fills.append(fill)
        return fill

    def _clearly_within_buying_power(
        self, positions: dict[str, int], symbol: str, cash: Decimal, price: Decimal
    ) -> bool:
        """A float check with a 0.1% margin (far above float error); the exact Decimal check
        decides whenever this one is not clear."""
        equity = float(cash)
        gross = 0.0
        for s, q in positions.items():
            if q:
                v = q * (float(price) if s == symbol else self.last[s])
                equity += v
                gross += abs(v)
        return equity > 0 and gross < 0.999 * equity * self.config.max_leverage

    def _exact_exposure(
        self, positions: dict[str, int], symbol: str, cash: Decimal, price: Decimal
    ) -> tuple[Decimal, Decimal]:
        prices = {s: money(self.last[s]) for s, q in positions.items() if q and s != symbol}
        prices[symbol] = price
        values = [Decimal(q) * prices[s] for s, q in positions.items() if q]
        return cash + sum(values, Decimal(0)), sum(map(abs, values), Decimal(0))
