"""Pre-trade checks: every order the trading path would send passes them first, in the backtest
and live alike; each refusal is a :class:`RiskEvent` naming its rule and the numbers that broke
it.

Orders are checked in sequence and projected onto the book: filled positions, plus the orders
still working, plus the orders accepted so far in the call. With ``p`` the projected position
before an order and ``q`` its signed quantity, the order *cuts exposure* when ``|p + q| < |p|``
and ``p + q`` does not change sign. Such an order is never refused by ``restricted``,
``max_order_notional``, ``short_sale``, ``max_position``, ``max_gross``, ``max_net`` or
``buying_power`` (a position is never trapped), but it is by ``halted``, ``trading_hours``,
``no_volume``, ``price_band`` and ``max_orders_per_minute``.

The rules, in the order they are checked (the first that fails names the refusal): ``halted``,
``reducing``, ``trading_hours``, ``restricted``, ``no_volume``, ``price_band``,
``max_order_notional``, ``short_sale``, ``max_position``, ``max_gross``, ``max_net``,
``buying_power``, ``max_orders_per_minute``.

This runs on the backtest's hot path (once per bar): plain floats and dicts, and the exchange
calendar is read once per calendar year.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from pipelines.execution.orders import Order
from pipelines.risk.events import RiskEvent, TradingState

MINUTE = timedelta(minutes=1)

RULES = (
    "halted",
    "reducing",
    "trading_hours",
    "restricted",
    "no_volume",
    "price_band",
    "max_order_notional",
    "short_sale",
    "max_position",
    "max_gross",
    "max_net",
    "buying_power",
    "max_orders_per_minute",
)
"""The rules a refusal can name, in the order they are checked."""


@dataclass(frozen=True)
class RiskConfig:
    """The pre-trade checks' limits; ``None`` turns a check off.

    - ``max_order_notional``: USD per order (shares x sizing price).
    - ``max_position``: ``|position value after the order| / equity``.
    - ``max_gross``: ``sum of |position values| / equity`` after the order.
    - ``max_net``: ``|sum of position values| / equity`` after the order.
    - ``max_orders_per_minute``: orders accepted in the trailing 60 seconds.
    - ``price_band``: ``|sizing price / last traded price - 1|`` (a fat finger or a stale bar);
      a limit or stop order's own price is held to the same band.
    - ``trading_hours``: only while ``calendar``'s regular session is open (open <= now <=
      close, early closes included).
    - ``restricted``: symbols in which no exposure may be added.
    - ``allow_short`` False (or a symbol outside :attr:`Book.shortable`): no order may leave a
      position short, or make a short larger.
    - ``min_bar_volume``: shares the symbol's last bar must have traded (an index such as VIX
      trades none).

    Example: ``RiskConfig(max_order_notional=250_000, max_position=0.10, max_gross=1.0,
    max_net=1.0, max_orders_per_minute=120, price_band=0.10)`` refuses an order above 250,000
    USD, a position above 10% of equity, gross or net exposure above 100% of equity, the 121st
    order within a minute, and an order sized at a price more than 10% from the last trade.
    """

    max_order_notional: float | None = 250_000.0
    max_position: float | None = 0.10
    max_gross: float | None = 1.0
    max_net: float | None = 1.0
    max_orders_per_minute: int | None = 120
    price_band: float | None = 0.10
    trading_hours: bool = True
    calendar: str = "XNYS"
    restricted: frozenset[str] = frozenset()
    allow_short: bool = True
    min_bar_volume: float = 1.0

    def __post_init__(self) -> None:
        for name in ("max_order_notional", "max_position", "max_gross", "max_net", "price_band"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive or None (off), got {value}")
        if self.max_orders_per_minute is not None and self.max_orders_per_minute < 1:
            raise ValueError(
                f"max_orders_per_minute must be at least 1, or None (off), got "
                f"{self.max_orders_per_minute}"
            )
        if not self.min_bar_volume >= 0:
            raise ValueError(f"min_bar_volume must be 0 or more shares, got {self.min_bar_volume}")
        if not isinstance(self.restricted, frozenset):
            object.__setattr__(self, "restricted", frozenset(self.restricted))


@dataclass(frozen=True)
class MarketView:
    """The market at decision time ``now`` (UTC, tz-aware): the price each symbol's orders
    were sized at (``prices``, the bar close, USD), the latest traded prices (``last_prices``,
    USD; in a backtest the same mapping) and each symbol's last bar volume (``volumes``,
    shares). Held or working symbols without an order need a price in one of the two price
    mappings unless :attr:`Book.gross` and :attr:`Book.net` are given."""

    now: datetime
    prices: Mapping[str, float]
    last_prices: Mapping[str, float]
    volumes: Mapping[str, float]


@dataclass(frozen=True)
class Book:
    """The account the orders are projected onto: ``equity`` and ``buying_power`` (USD
    available for new gross exposure), filled ``positions`` and the signed remaining shares of
    the orders still ``working`` (after the cancels the decision asked for), per symbol; the
    ``shortable`` symbols (None: every symbol may be sold short when shorting is allowed).

    ``gross`` and ``net``: the filled positions' gross and net value (USD) as the broker marks
    them; None: valued here at the market's prices. Working orders are always valued here."""

    equity: float
    buying_power: float
    positions: Mapping[str, int]
    working: Mapping[str, int]
    shortable: frozenset[str] | None = None
    gross: float | None = None
    net: float | None = None


# -- trading hours ----------------------------------------------------------------------------
_SESSIONS: dict[tuple[str, int], tuple[list[datetime], list[datetime]]] = {}
_CURRENT: dict[str, tuple[datetime, datetime]] = {}


def _year_sessions(calendar: str, year: int) -> tuple[list[datetime], list[datetime]]:
    """Regular opens and closes (UTC) of the sessions around the UTC year ``year`` (a week
    either side, so that a session straddling New Year in UTC is found)."""
    key = (calendar, year)
    found = _SESSIONS.get(key)
    if found is None:
        from pipelines.bars.calendar import sessions_between

        frame = sessions_between(calendar, date(year - 1, 12, 24), date(year + 1, 1, 7))
        window = frame.window("regular")
        found = _SESSIONS[key] = (window["start"].to_list(), window["end"].to_list())
    return found


def market_open(calendar: str, now: datetime) -> bool:
    """Whether ``calendar``'s regular session is open at ``now`` (tz-aware): its open <= now <=
    its close, early closes included. The calendar is read once per year and the session found
    last is remembered, so a call costs two comparisons within a session.

    Example: ``market_open("XNYS", datetime(2019, 11, 29, 18, 0, tzinfo=UTC))`` is True (the
    early close at 13:00 New York time), at 18:01 it is False."""
    current = _CURRENT.get(calendar)
    if current is not None and current[0] <= now <= current[1]:
        return True
    opens, closes = _year_sessions(calendar, now.year)
    i = bisect_right(opens, now) - 1
    if i < 0 or now > closes[i]:
        return False
    _CURRENT[calendar] = (opens[i], closes[i])
    return True


# -- the checks -------------------------------------------------------------------------------
def _refusal(
    now: datetime, order: Order, price: float, rule: str, detail: str, **numbers: float
) -> RiskEvent:
    return RiskEvent(
        now,
        "refused",
        rule,
        f"{order.side} {order.quantity} {order.symbol}: {detail}",
        symbol=order.symbol,
        client_order_id=order.client_order_id,
        values={"quantity": float(order.signed_quantity), "price": price, **numbers},
    )


def check_orders(
    orders: Sequence[Order],
    *,
    config: RiskConfig,
    state: TradingState,
    market: MarketView,
    book: Book,
    recent: tuple[datetime, ...],
) -> tuple[list[Order], list[RiskEvent], tuple[datetime, ...]]:
    """Check ``orders`` in sequence (see the module docstring for the rules).

    Returns the accepted orders, one ``refused`` :class:`RiskEvent` per refused order (``rule``
    the check's name, ``detail`` a line with the numbers, ``values`` those numbers: the signed
    ``quantity`` in shares, the sizing ``price`` in USD, and the rule's figures with its
    ``limit``), and the times of the orders accepted within the last minute, ``recent``
    included (pass it back at the next call for the per-minute rate).

    Raises ValueError when ``market.now`` is naive, equity or buying power is not a finite
    number, or a held or working symbol has no valid price to value it at.
    """
    now = market.now
    if now.tzinfo is None:
        raise ValueError(f"MarketView.now {now} has no time zone: pass a UTC instant")
    equity, buying_power = book.equity, book.buying_power
    if not (math.isfinite(equity) and math.isfinite(buying_power)):
        raise ValueError(
            f"Book.equity {equity} and buying_power {buying_power} must be finite USD amounts"
        )
    window = [t for t in recent if now - t < MINUTE]
    accepted: list[Order] = []
    events: list[RiskEvent] = []
    if not orders:
        return accepted, events, tuple(window)
    rate = config.max_orders_per_minute
    band = config.price_band
    prices, last_prices, volumes = market.prices, market.last_prices, market.volumes
    positions, working = book.positions, book.working
    open_now = not config.trading_hours or market_open(config.calendar, now)
    projected: dict[str, int] = {}
    gross, net, working_added = _exposure(book, market)
    # Buying power the broker reports is net of filled positions only: what the orders still
    # working will add is spent already.
    spent = working_added

    for order in orders:
        symbol = order.symbol
        before = projected.get(symbol)
        if before is None:
            before = positions.get(symbol, 0) + working.get(symbol, 0)
        after = before + order.signed_quantity
        cuts = abs(after) < abs(before) and after * before >= 0
        price = prices.get(symbol, math.nan)
        volume = volumes.get(symbol, math.nan)
        added = 0.0
        refused: RiskEvent | None = None
        if state is TradingState.HALTED:
            refused = _refusal(now, order, price, "halted", "trading is HALTED: only cancels")
        elif state is TradingState.REDUCING and not cuts:
            refused = _refusal(
                now,
                order,
                price,
                "reducing",
                f"trading is REDUCING and the order takes the position from {before} to "
                f"{after} shares, which does not cut exposure",
                before=float(before),
                after=float(after),
            )
        elif not open_now:
            refused = _refusal(
                now,
                order,
                price,
                "trading_hours",
                f"the {config.calendar} regular session is closed at {now.isoformat()}",
            )
        elif not cuts and symbol in config.restricted:
            refused = _refusal(now, order, price, "restricted", f"{symbol} is restricted")
        elif not volume >= config.min_bar_volume:
            refused = _refusal(
                now,
                order,
                price,
                "no_volume",
                f"the last bar traded {volume:g} shares (at least {config.min_bar_volume:g} "
                "needed)",
                volume=volume,
                limit=config.min_bar_volume,
            )
        elif not (price > 0 and math.isfinite(price)):
            refused = _refusal(
                now, order, price, "price_band", f"no valid price to size it at ({price})"
            )
        elif band is not None:
            refused = _band_refusal(order, price, last_prices.get(symbol, math.nan), band, now)
        value_before = before * price
        value_after = after * price
        new_gross = gross - abs(value_before) + abs(value_after)
        new_net = net - value_before + value_after
        if refused is None and not cuts:
            refused = _exposure_refusal(
                config, book, order, price, now, before, after, new_gross, new_net, equity
            )
            added = new_gross - gross
            if refused is None and added > 0 and added > buying_power - spent:
                refused = _refusal(
                    now,
                    order,
                    price,
                    "buying_power",
                    f"it adds {added:,.2f} USD of gross exposure with "
                    f"{buying_power - spent:,.2f} USD of buying power left",
                    added=added,
                    limit=buying_power - spent,
                )
        if refused is None and rate is not None and len(window) >= rate:
            refused = _refusal(
                now,
                order,
                price,
                "max_orders_per_minute",
                f"{len(window)} orders accepted in the last minute (limit {rate})",
                orders=float(len(window)),
                limit=float(rate),
            )
        if refused is not None:
            events.append(refused)
            continue
        accepted.append(order)
        projected[symbol] = after
        gross, net = new_gross, new_net
        if added > 0:
            spent += added
        window.append(now)
    return accepted, events, tuple(window)


def _band_refusal(
    order: Order, price: float, last: float, band: float, now: datetime
) -> RiskEvent | None:
    """The refusal of an order sized (or limited, or stopped) at a price further than ``band``
    from the last trade ``last``, or without a last trade to compare with; else None."""
    if not (last > 0 and math.isfinite(last)):
        return _refusal(
            now,
            order,
            price,
            "price_band",
            f"no valid last traded price to check {price:.4f} against ({last})",
            last_price=last,
            limit=band,
        )
    worst = price
    for own in (order.limit_price, order.stop_price):
        if own is not None and abs(float(own) / last - 1) > abs(worst / last - 1):
            worst = float(own)
    off = abs(worst / last - 1)
    if off <= band:
        return None
    return _refusal(
        now,
        order,
        price,
        "price_band",
        f"priced at {worst:.4f}, {off:.2%} from the last trade {last:.4f} (band {band:.2%})",
        order_price=worst,
        last_price=last,
        deviation=off,
        limit=band,
    )


def _exposure_refusal(
    config: RiskConfig,
    book: Book,
    order: Order,
    price: float,
    now: datetime,
    before: int,
    after: int,
    new_gross: float,
    new_net: float,
    equity: float,
) -> RiskEvent | None:
    """The refusal of an order that does not cut exposure by the size, short-sale and exposure
    caps, or None; buying power is checked by the caller, which tracks what was spent."""
    notional = abs(after - before) * price
    cap = config.max_order_notional
    if cap is not None and notional > cap:
        return _refusal(
            now,
            order,
            price,
            "max_order_notional",
            f"{notional:,.2f} USD is above the limit of {cap:,.2f} USD",
            notional=notional,
            limit=cap,
        )
    shortable = book.shortable
    if after < 0 and (
        not config.allow_short or (shortable is not None and order.symbol not in shortable)
    ):
        why = "shorting is off" if not config.allow_short else f"{order.symbol} is not shortable"
        return _refusal(
            now,
            order,
            price,
            "short_sale",
            f"it leaves the position at {after} shares and {why}",
            before=float(before),
            after=float(after),
        )
    value_after = abs(after * price)
    for rule, limit, amount, what in (
        ("max_position", config.max_position, value_after, f"the {order.symbol} position"),
        ("max_gross", config.max_gross, new_gross, "gross exposure"),
        ("max_net", config.max_net, abs(new_net), "net exposure"),
    ):
        if limit is None:
            continue
        if equity <= 0:
            return _refusal(
                now,
                order,
                price,
                rule,
                f"equity is {equity:,.2f} USD: no exposure may be added",
                equity=equity,
                limit=limit,
            )
        if amount > limit * equity:
            return _refusal(
                now,
                order,
                price,
                rule,
                f"{what} would be {amount:,.2f} USD, {amount / equity:.2%} of equity "
                f"{equity:,.2f} USD (limit {limit:.2%})",
                exposure=amount,
                fraction=amount / equity,
                equity=equity,
                limit=limit,
            )
    return None


def _exposure(book: Book, market: MarketView) -> tuple[float, float, float]:
    """Gross and net value (USD) of the positions with their working orders, and the gross the
    working orders add: the positions as the broker marks them (:attr:`Book.gross`/
    :attr:`Book.net`) or at the market's prices, the working orders at the sizing price, else
    the last trade."""
    prices, last = market.prices, market.last_prices

    def price(symbol: str) -> float:
        p = prices.get(symbol, math.nan)
        if not (p > 0 and math.isfinite(p)):
            p = last.get(symbol, math.nan)
            if not (p > 0 and math.isfinite(p)):
                raise ValueError(
                    f"no valid price for {symbol}, which is held or has working orders: put it "
                    "in MarketView.last_prices (or give Book.gross and Book.net from the broker)"
                )
        return p

    positions = book.positions
    if book.gross is None or book.net is None:
        gross = net = 0.0
        for symbol, shares in positions.items():
            if shares:
                value = shares * price(symbol)
                gross += abs(value)
                net += value
    else:
        gross, net = book.gross, book.net
        if not (math.isfinite(gross) and math.isfinite(net)):
            raise ValueError(f"Book.gross {gross} and net {net} must be finite USD amounts")
    added = 0.0
    for symbol, shares in book.working.items():
        if shares:
            held = positions.get(symbol, 0)
            p = price(symbol)
            change = abs((held + shares) * p) - abs(held * p)
            gross += change
            added += max(change, 0.0)
            net += shares * p
    return gross, net, added
