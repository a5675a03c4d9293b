"""What the live session needs of a broker and a market-data feed (ports), as plain values.

:class:`pipelines.live.alpaca.AlpacaBroker` and :class:`pipelines.live.alpaca.AlpacaFeed` put
alpaca-py behind them; tests may put anything that keeps the contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal, Protocol

import polars as pl

from pipelines.execution.orders import Order
from pipelines.live.aggregate import MinuteBar

FINAL = frozenset({"filled", "canceled", "expired", "rejected", "replaced", "done_for_day"})
"""Order statuses after which nothing more fills."""


class BrokerError(RuntimeError):
    """The broker refused or failed a request in a way a retry will not mend."""


class OrderRefused(BrokerError):
    """The broker answered an order with a definite no (HTTP 403 or 422: buying power, shares
    available, not shortable, invalid): the order does not exist there, and sending it again
    would meet the same answer."""


@dataclass(frozen=True)
class BrokerAccount:
    """The account as the broker reports it: ``equity``, ``buying_power`` and the market value
    of the long and short positions in USD (floats as sent), ``cash`` exact."""

    equity: float
    buying_power: float
    cash: Decimal
    long_market_value: float
    short_market_value: float


@dataclass(frozen=True)
class BrokerOrder:
    """One order at the broker: ``qty`` and ``filled_qty`` in whole shares, the average fill
    price exact (None before any fill), ``status`` in Alpaca's words (new, partially_filled,
    filled, canceled, expired, rejected, ...)."""

    id: str
    client_order_id: str
    symbol: str
    side: Literal["buy", "sell"]
    qty: int
    filled_qty: int
    filled_avg_price: Decimal | None
    status: str

    @property
    def open(self) -> bool:
        return self.status not in FINAL

    @property
    def remaining(self) -> int:
        """Signed shares still to fill (+ buy, - sell); 0 once final."""
        left = self.qty - self.filled_qty if self.open else 0
        return left if self.side == "buy" else -left


@dataclass(frozen=True)
class TradeUpdate:
    """One trade-stream event: ``event`` (new, partial_fill, fill, canceled, expired, rejected,
    ...), the order after it, and for fills the ``execution_id``, ``qty`` and exact ``price``."""

    event: str
    order: BrokerOrder
    at: datetime
    execution_id: str | None = None
    qty: int | None = None
    price: Decimal | None = None


class BrokerPort(Protocol):
    """Orders, positions and the account (REST)."""

    def account(self) -> BrokerAccount: ...

    def positions(self) -> dict[str, int]:
        """Symbol -> signed shares held (symbols with none left out)."""
        ...

    def open_orders(self) -> list[BrokerOrder]: ...

    def order(self, client_order_id: str) -> BrokerOrder | None:
        """The order with this client id, None when the broker has none."""
        ...

    def submit(self, order: Order) -> BrokerOrder:
        """Send ``order``; a client id the broker already holds is answered with that order,
        never with a second one."""
        ...

    def cancel(self, order_id: str) -> None:
        """Ask for what is left of the order to be cancelled (no error if it is final)."""
        ...

    def clock(self) -> datetime:
        """The broker's time (UTC)."""
        ...

    def minute_bars(self, symbols: Sequence[str], start: datetime, end: datetime) -> pl.DataFrame:
        """Minute bars (``symbol``, ``ts`` start UTC, OHLCV) starting in [start, end)."""
        ...


FeedKind = Literal["bar", "updated_bar", "trade"]


@dataclass(frozen=True)
class FeedEvent:
    """One message from the streams: a minute ``bar`` (or its correction) or a ``trade``
    update; ``received`` is when it arrived (perf counter, ns)."""

    kind: FeedKind
    bar: MinuteBar | None = None
    trade: TradeUpdate | None = None
    received: int = 0


class FeedPort(Protocol):
    """The market-data and trade-update streams, read from the session's thread."""

    def start(self, symbols: Sequence[str]) -> None: ...

    def get(self, timeout: float) -> FeedEvent | None:
        """The next event, or None after ``timeout`` seconds without one."""
        ...

    def reconnect(self, which: Literal["data", "trades"]) -> None:
        """Drop and reopen one stream (after a stall)."""
        ...

    def stop(self) -> None: ...
