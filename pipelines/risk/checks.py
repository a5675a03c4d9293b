"""Pre-trade checks: every order the trading path would send passes them first, in the backtest
and live alike; each refusal is a :class:`RiskEvent` naming its rule and the numbers that broke
it.

Orders are checked in sequence and projected onto the book (positions, working orders and the
orders already accepted). An order *cuts exposure* when it moves the projected position towards
zero without crossing it; such an order is never refused by an exposure cap, an order-size cap,
buying power, a restriction or the short-sale rule (a position is never trapped), but it is by
the trading state HALTED, the market being closed, a symbol without volume, a price outside the
band and the order rate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from pipelines.execution.orders import Order
from pipelines.risk.events import RiskEvent, TradingState

MINUTE = timedelta(minutes=1)


@dataclass(frozen=True)
class RiskConfig:
    """The checks' limits (None: the check is off). Fractions are of equity after the order.
    Example: ``RiskConfig(max_order_notional=250_000, max_position=0.10, max_gross=1.0,
    max_net=1.0, max_orders_per_minute=120, price_band=0.10)`` refuses an order above 250,000
    USD, a position above 10% of equity, gross or net exposure above 100% of equity, the 121st
    order of a minute, and an order sized at a price more than 10% away from the last trade.
    ``trading_hours`` refuses orders while the ``calendar``'s regular session is closed (early
    closes included); ``restricted`` symbols are never bought or sold short; ``allow_short``
    False refuses any order that leaves a position short; ``min_bar_volume`` (shares) refuses
    orders in a symbol whose last bar traded less (an index such as VIX trades none)."""

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
            raise ValueError("max_orders_per_minute must be at least 1, or None (off)")


@dataclass(frozen=True)
class MarketView:
    """The market at decision time ``now`` (UTC): the price each symbol's orders were sized at
    (``prices``, the bar close, USD), the latest trades (``last_prices``) and the symbols' last
    bar volumes (shares)."""

    now: datetime
    prices: Mapping[str, float]
    last_prices: Mapping[str, float]
    volumes: Mapping[str, float]


@dataclass(frozen=True)
class Book:
    """The account the orders are projected onto: ``equity`` and ``buying_power`` (USD), filled
    ``positions`` and ``working`` orders (signed shares per symbol), the ``shortable`` symbols
    (None: all), and the filled positions' ``gross`` and ``net`` value at the last prices (USD;
    None: valued here from ``positions``)."""

    equity: float
    buying_power: float
    positions: Mapping[str, int]
    working: Mapping[str, int]
    shortable: frozenset[str] | None = None
    gross: float | None = None
    net: float | None = None


_HOURS: dict[tuple[str, int], dict[date, tuple[datetime, datetime]]] = {}


def market_hours(calendar: str, day: date) -> tuple[datetime, datetime] | None:
    """The regular session's open and close (UTC) of ``day`` on ``calendar``, None on a day
    without a session. The calendar is read once per year."""
    key = (calendar, day.year)
    year = _HOURS.get(key)
    if year is None:
        from pipelines.bars.calendar import sessions_between

        frame = sessions_between(calendar, date(day.year, 1, 1), date(day.year, 12, 31))
        window = frame.window("regular")
        year = _HOURS[key] = {
            d: (o, c)
            for d, o, c in zip(
                window["session_date"].to_list(),
                window["start"].to_list(),
                window["end"].to_list(),
                strict=True,
            )
        }
    return year.get(day)


_NEW_YORK = ZoneInfo("America/New_York")


def _is_open(calendar: str, now: datetime) -> bool:
    day = now.astimezone(_NEW_YORK).date()
    hours = market_hours(calendar, day)
    return hours is not None and hours[0] <= now <= hours[1]


def check_orders(
    orders: Sequence[Order],
    *,
    config: RiskConfig,
    state: TradingState,
    market: MarketView,
    book: Book,
    recent: tuple[datetime, ...],
) -> tuple[list[Order], list[RiskEvent], tuple[datetime, ...]]:
    """The accepted orders, one ``refused`` event per refused order, and the times of the
    orders accepted within the last minute (the rate check's memory)."""
    now = market.now
    window = tuple(t for t in recent if now - t < MINUTE)
    accepted: list[Order] = []
    events: list[RiskEvent] = []
    projected: dict[str, int] = {}
    open_now: bool | None = None
    equity = book.equity
    gross, net = _exposure(book, market)
    spent = 0.0

    for order in orders:
        symbol = order.symbol
        before = projected.get(symbol, book.positions.get(symbol, 0) + book.working.get(symbol, 0))
        q = order.signed_quantity
        after = before + q
        cuts = abs(after) < abs(before) and after * before >= 0
        price = market.prices.get(symbol, math.nan)
        last = market.last_prices.get(symbol, price)

        def refuse(
            rule: str,
            detail: str,
            _o: Order = order,
            _q: int = q,
            _p: float = price,
            **numbers: float,
        ) -> None:
            events.append(
                RiskEvent(
                    now,
                    "refused",
                    rule,
                    f"{_o.side} {_o.quantity} {_o.symbol}: {detail}",
                    symbol=_o.symbol,
                    client_order_id=_o.client_order_id,
                    values={"quantity": float(_q), "price": _p, **numbers},
                )
            )

        if state is TradingState.HALTED:
            refuse("halted", "trading is HALTED: only cancels are sent")
            continue
        if state is TradingState.REDUCING and not cuts:
            refuse(
                "reducing",
                f"trading is REDUCING: the order takes the position from {before} to {after} "
                "shares, which does not cut exposure",
                before=float(before),
                after=float(after),
            )
            continue
        if config.trading_hours:
            if open_now is None:
                open_now = _is_open(config.calendar, now)
            if not open_now:
                refuse(
                    "trading_hours",
                    f"the {config.calendar} market is closed at {now:%Y-%m-%d %H:%M} UTC",
                )
                continue
        volume = market.volumes.get(symbol, 0.0)
        if not volume >= config.min_bar_volume:
            refuse(
                "no_volume",
                f"the last bar traded {volume:g} shares, below {config.min_bar_volume:g}",
                volume=volume,
            )
            continue
        if not (price > 0 and math.isfinite(price)):
            refuse("price_band", "no valid price to size the order at")
            continue
        if config.price_band is not None and last > 0 and abs(price / last - 1) > config.price_band:
            refuse(
                "price_band",
                f"sized at {price:.4f}, {abs(price / last - 1):.2%} from the last trade "
                f"{last:.4f} (band {config.price_band:.2%})",
                last_price=last,
            )
            continue
        if config.max_orders_per_minute is not None and len(window) >= config.max_orders_per_minute:
            refuse(
                "max_orders_per_minute",
                f"{len(window)} orders in the last minute (limit {config.max_orders_per_minute})",
                orders=float(len(window)),
            )
            continue
        notional = abs(q) * price
        value_after = after * price
        value_before = before * price
        new_gross = gross - abs(value_before) + abs(value_after)
        new_net = net - value_before + value_after
        if not cuts:
            if symbol in config.restricted:
                refuse("restricted", f"{symbol} is on the restricted list")
                continue
            if config.max_order_notional is not None and notional > config.max_order_notional:
                refuse(
                    "max_order_notional",
                    f"{notional:,.2f} USD above the limit {config.max_order_notional:,.2f} USD",
                    notional=notional,
                    limit=config.max_order_notional,
                )
                continue
            if after < 0 and (
                not config.allow_short
                or (book.shortable is not None and symbol not in book.shortable)
            ):
                refuse(
                    "short_sale",
                    f"the order leaves {after} shares short and {symbol} may not be sold short",
                    after=float(after),
                )
                continue
            if (
                config.max_position is not None
                and equity > 0
                and abs(value_after) > config.max_position * equity
            ):
                refuse(
                    "max_position",
                    f"position {abs(value_after):,.2f} USD is "
                    f"{abs(value_after) / equity:.2%} of equity (limit {config.max_position:.2%})",
                    position=abs(value_after),
                    equity=equity,
                )
                continue
            if equity <= 0:
                refuse("max_gross", f"equity {equity:,.2f} USD: no new exposure", equity=equity)
                continue
            if config.max_gross is not None and new_gross > config.max_gross * equity:
                refuse(
                    "max_gross",
                    f"gross {new_gross:,.2f} USD would be {new_gross / equity:.2%} of equity "
                    f"(limit {config.max_gross:.2%})",
                    gross=new_gross,
                    equity=equity,
                )
                continue
            if config.max_net is not None and abs(new_net) > config.max_net * equity:
                refuse(
                    "max_net",
                    f"net {new_net:,.2f} USD would be {abs(new_net) / equity:.2%} of equity "
                    f"(limit {config.max_net:.2%})",
                    net=new_net,
                    equity=equity,
                )
                continue
            added = new_gross - gross
            if added > 0 and spent + added > book.buying_power:
                refuse(
                    "buying_power",
                    f"adds {added:,.2f} USD of gross exposure with "
                    f"{book.buying_power - spent:,.2f} USD of buying power left",
                    added=added,
                    buying_power=book.buying_power - spent,
                )
                continue
            if added > 0:
                spent += added
        accepted.append(order)
        projected[symbol] = after
        gross, net = new_gross, new_net
        window = (*window, now)
    return accepted, events, window


def _exposure(book: Book, market: MarketView) -> tuple[float, float]:
    """Gross and net value (USD) of the positions with their working orders, at the decision
    prices where known, else the last trades."""

    def price(symbol: str) -> float:
        return market.prices.get(symbol) or market.last_prices.get(symbol, 0.0)

    if book.gross is None or book.net is None:
        gross = net = 0.0
        for symbol, shares in book.positions.items():
            if shares:
                value = shares * price(symbol)
                gross += abs(value)
                net += value
    else:
        gross, net = book.gross, book.net
    for symbol, shares in book.working.items():
        if shares:
            held = book.positions.get(symbol, 0)
            p = price(symbol)
            gross += abs((held + shares) * p) - abs(held * p)
            net += shares * p
    return gross, net
