"""A simulated broker with an exact ledger.

Orders submitted on bar t fill on a later bar of their symbol: market orders at that bar's open,
limit orders when the bar trades through the limit (at the better of open and limit), stop
orders when it reaches the stop (at the worse of open and stop). A participation cap limits a
fill to a share of the bar's volume; the rest stays open and carries over. Each fill pays
slippage (fixed bps + half the spread + a square-root impact, ``impact_k`` x volatility x
sqrt(quantity / volume)) and a commission (per share with a minimum, plus bps of notional).
A short position pays a borrow fee: ``borrow_bps`` a year (360-day count) of its value at the
previous close, accrued exactly over the calendar time between the symbol's bars; whole cents of
the running total are booked (half even), so the books hold no fraction of a cent and lose
none.
Money is booked in ``Decimal``; nothing is silently dropped: every rejected or held order is
recorded with its reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

import numpy as np

from pipelines.execution.batch import Bar, BarBatch
from pipelines.execution.orders import Order

__all__ = [
    "Bar",
    "BarBatch",
    "BrokerConfig",
    "CostModel",
    "Fill",
    "Ledger",
    "SimulatedBroker",
    "money",
]

CENT = Decimal("0.01")
MICROS_PER_BORROW_YEAR = Decimal(360 * 86400 * 1_000_000)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(ts: datetime) -> int:
    return (ts - EPOCH) // timedelta(microseconds=1)


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
    kind: str  # "rejected" | "held" | "canceled"
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
        self.ids = {x: i for i, x in enumerate(sorted(symbols))}
        self._close = np.zeros(len(self.ids))  # last close per symbol id (0 before any)
        self._qty = np.zeros(len(self.ids))  # the ledger's positions, as floats, for marking
        self._seen_us = np.zeros(len(self.ids), dtype=np.int64)  # its bar's time, UTC us
        self._borrow = money(config.costs.borrow_bps / 1e4)
        self._accrued: dict[str, Decimal] = {}  # exact borrow owed per symbol, ever
        self._booked: dict[str, Decimal] = {}  # of which booked, in whole cents
        self._frac = money((config.costs.slippage_bps + config.costs.half_spread_bps) / 1e4)
        self._commission_bps = money(config.costs.commission_bps / 1e4)

    @property
    def open_orders(self) -> dict[str, tuple[Order, int]]:
        """Orders not yet (fully) filled: id -> (order, shares remaining)."""
        return {oid: v for pending in self._pending.values() for oid, v in pending.items()}

    def working(self, symbol: str) -> list[tuple[Order, int]]:
        """``symbol``'s orders still working: (order, shares remaining), in submission order."""
        pending = self._pending.get(symbol)
        return list(pending.values()) if pending else []

    @property
    def working_symbols(self) -> list[str]:
        """The symbols with an order still working."""
        return list(self._pending)

    def cancel(self, client_order_id: str, ts: datetime, reason: str) -> bool:
        """Cancel what is left of an order (recorded as a ``canceled`` event with ``reason``);
        False when no such order is working (filled, canceled or never accepted)."""
        for symbol, pending in self._pending.items():
            entry = pending.pop(client_order_id, None)
            if entry is not None:
                if not pending:
                    del self._pending[symbol]
                order, left = entry
                self._event(order, ts, "canceled", f"{reason}; {left} of {order.quantity} left")
                return True
        return False

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
        if bar.symbol not in self.ids:
            raise ValueError(f"{bar.symbol} is not one of the broker's symbols")
        return self.on_batch(BarBatch.of([bar], self.ids))

    def on_batch(self, batch: BarBatch) -> list[Fill]:
        """:meth:`on_bar` for every bar of ``batch`` (one time): borrow on shorts held into
        it, then fills at its prices; the closes are marked after all fills."""
        fills: list[Fill] = []
        if self._borrow:
            for symbol in [x for x, q in self.ledger.positions.items() if q < 0]:
                i = batch.index(symbol)
                if i is not None:
                    self._accrue_borrow(symbol, batch.ts)
        for symbol in list(self._pending):
            i = batch.index(symbol)
            if i is not None:
                pending = self._pending[symbol]
                fills += self._fill_pending(batch[symbol], pending)
                if not pending:
                    del self._pending[symbol]
        self._close[batch.ids] = batch.close
        self._seen_us[batch.ids] = _micros(batch.ts)
        return fills

    def last(self, symbol: str) -> float:
        """The last close seen of ``symbol`` (NaN before its first bar)."""
        return float(self._close[self.ids[symbol]])

    def _accrue_borrow(self, symbol: str, ts: datetime) -> None:
        since = int(self._seen_us[self.ids[symbol]])
        if not since:
            return
        micros = Decimal(_micros(ts) - since)
        value = -self.ledger.positions[symbol] * money(self.last(symbol))
        accrued = self._accrued.get(symbol, Decimal(0)) + (
            value * self._borrow * micros / MICROS_PER_BORROW_YEAR
        )
        self._accrued[symbol] = accrued
        # Book whole cents of the exact running total: no fraction is lost to rounding each
        # bar's sliver down, and the books never hold a fraction of a cent.
        fee = accrued.quantize(CENT, rounding=ROUND_HALF_EVEN) - self._booked.get(
            symbol, Decimal(0)
        )
        if fee:
            self._booked[symbol] = self._booked.get(symbol, Decimal(0)) + fee
            self.ledger.cash -= fee
            self.ledger.charges.append(Charge(symbol, ts, "borrow", fee))

    def _fill_pending(self, bar: Bar, pending: dict[str, tuple[Order, int]]) -> list[Fill]:
        fills = []
        low = min(bar.open, bar.high, bar.low, bar.close)
        valid = low > 0 and math.isfinite(bar.open + bar.high + bar.low + bar.close)
        # The participation cap is the symbol's, per bar: every order of the symbol shares it.
        p = self.config.participation
        cap = None if p is None else math.floor(p * bar.volume)
        room = cap
        for oid, (order, remaining) in list(pending.items()):
            if order.bar_ts >= bar.ts:
                continue
            if not valid:
                self._event(order, bar.ts, "held", "the bar has a missing or invalid price")
                continue
            price = self._trigger(order, bar)
            if price is None:
                continue
            quantity = remaining
            if room is not None:
                if room <= 0:
                    self._event(
                        order,
                        bar.ts,
                        "held",
                        "zero volume under the participation cap"
                        if not cap
                        else "the bar's participation cap is used up",
                    )
                    continue
                quantity = min(quantity, room)
            fill = self._fill(order, bar, price, quantity)
            if fill is None:
                del pending[oid]
                continue
            if room is not None:
                room -= quantity
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

    def mark(self) -> tuple[float, float, float]:
        """Equity, gross and net exposure (USD, float) at the last closes, for decisions and
        the equity curve; the exact books are :attr:`ledger`."""
        values = self._qty * self._close
        net = float(values.sum())
        return float(self.ledger.cash) + net, float(np.abs(values).sum()), net

    def _trigger(self, order: Order, bar: Bar) -> Decimal | None:
        o = money(bar.open)
        if order.type == "market":
            return o
        h, lo = money(bar.high), money(bar.low)
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
            if not math.isfinite(bar.volatility):
                raise ValueError(
                    f"{order.symbol} at {bar.ts.isoformat()}: no volatility to price the impact "
                    "of a fill with (impact_k > 0); give every traded bar one"
                )
            impact = c.impact_k * bar.volatility * math.sqrt(quantity / bar.volume)
        frac = money((c.slippage_bps + c.half_spread_bps) / 1e4 + impact) if impact else self._frac
        sign = 1 if order.side == "buy" else -1
        fill_price = price * (Decimal(1) + sign * frac)
        commission = max(c.commission_per_share * quantity, c.commission_min)
        if c.commission_bps:
            commission += fill_price * quantity * self._commission_bps
        commission = commission.quantize(CENT, rounding=ROUND_HALF_EVEN)
        signed = sign * quantity
        cash_after = self.ledger.cash - Decimal(signed) * fill_price - commission
        held = self.ledger.positions.get(order.symbol, 0) + signed
        if not self._clearly_within_buying_power(order.symbol, held, cash_after, fill_price):
            positions = {**self.ledger.positions, order.symbol: held}
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
        self.ledger.positions[order.symbol] = held  # in place: callers hold the dict
        self._qty[self.ids[order.symbol]] = held
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
        self, symbol: str, held: int, cash: Decimal, price: Decimal
    ) -> bool:
        """A float check with a 0.1% margin (far above float error); the exact Decimal check
        decides whenever this one is not clear."""
        values = self._qty * self._close
        values[self.ids[symbol]] = held * float(price)
        equity = float(cash) + float(values.sum())
        gross = float(np.abs(values).sum())
        return equity > 0 and gross < 0.999 * equity * self.config.max_leverage

    def _exact_exposure(
        self, positions: dict[str, int], symbol: str, cash: Decimal, price: Decimal
    ) -> tuple[Decimal, Decimal]:
        prices = {s: money(self.last(s)) for s, q in positions.items() if q and s != symbol}
        prices[symbol] = price
        values = [Decimal(q) * prices[s] for s, q in positions.items() if q]
        return cash + sum(values, Decimal(0)), sum(map(abs, values), Decimal(0))
