"""Orders with deterministic, idempotent identifiers.

``client_order_id`` is a pure function of strategy, symbol, bar and intent: submitting the same
decision twice (a retried run, a replayed bar) yields the same id, and a broker that has seen it
ignores the repeat.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal

Side = Literal["buy", "sell"]
OrderType = Literal["market", "limit", "stop"]


def client_order_id(strategy: str, symbol: str, bar_ts: datetime, intent: str) -> str:
    """A 32-character id from what the order means. Example:
    ``client_order_id("ma_cross", "AAPL", ts, "enter_long")``."""
    if bar_ts.tzinfo is None:
        raise ValueError("bar_ts must be timezone-aware (UTC)")
    key = "|".join((strategy, symbol, bar_ts.isoformat(), intent))
    return hashlib.sha256(key.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Order:
    """An order for ``quantity`` whole shares (> 0) on ``side``. Prices are Decimals in USD."""

    client_order_id: str
    strategy: str
    symbol: str
    bar_ts: datetime
    intent: str
    side: Side
    quantity: int
    type: OrderType = "market"
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None

    @classmethod
    def create(
        cls,
        strategy: str,
        symbol: str,
        bar_ts: datetime,
        intent: str,
        side: Side,
        quantity: int,
        type: OrderType = "market",
        limit_price: Decimal | None = None,
        stop_price: Decimal | None = None,
    ) -> Order:
        return cls(
            client_order_id(strategy, symbol, bar_ts, intent),
            strategy,
            symbol,
            bar_ts,
            intent,
            side,
            quantity,
            type,
            limit_price,
            stop_price,
        )

    @property
    def signed_quantity(self) -> int:
        return self.quantity if self.side == "buy" else -self.quantity
