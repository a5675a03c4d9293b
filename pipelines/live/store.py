"""The live session's record in the trading database (tables ``live_*``, migration 0004).

Orders are written before they are sent (status ``pending``), so that after a crash the
restarted session knows every id it may have sent and asks the broker about each; decisions are
written with the path's state after them, so a restart resumes from the last decided bar.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from pipelines.data import tables as T
from pipelines.execution.orders import Order
from pipelines.execution.path import PathState
from pipelines.live.aggregate import MinuteBar
from pipelines.live.broker import BrokerOrder

_INSERTS: dict[str, Callable[[sa.Table], postgresql.Insert | sqlite.Insert]] = {
    "postgresql": postgresql.insert,
    "sqlite": sqlite.insert,
}


@dataclass(frozen=True)
class StoredOrder:
    """An order the session meant (``live_orders``)."""

    client_order_id: str
    symbol: str
    bar_ts: datetime
    intent: str
    side: str
    qty: int
    status: str
    filled_qty: int
    broker_id: str | None

    @property
    def signed_filled(self) -> int:
        return self.filled_qty if self.side == "buy" else -self.filled_qty


_BROKER_FINAL = ("filled", "canceled", "expired", "rejected")
_FINAL = (
    "filled",
    "canceled",
    "expired",
    "rejected",
    "never_sent",
    "not_sent",
    "not_needed",
    "dry_run",
)


class LiveStore:
    """Reads and writes of one strategy's live record on ``engine``.

    The orders, their booked fill quantities and the execution ids are also kept in memory
    (read once, then written through): a report that changes nothing costs no database write,
    and the bar's decision does not wait on reads. One process writes a strategy's record at a
    time (the live tag's concurrency limit of 1)."""

    def __init__(self, engine: sa.Engine, strategy: str) -> None:
        self.engine = engine
        self.strategy = strategy
        self._cache: dict[str, StoredOrder] | None = None
        self._booked: dict[str, int] = {}
        self._notional: dict[str, Decimal] = {}
        self._execs: set[str] = set()
        self.status_changes: Counter[str] = Counter()
        """Orders that reached each status through this store (this process), for metrics."""

    def _orders_cache(self) -> dict[str, StoredOrder]:
        if self._cache is None:
            c = T.live_orders.c
            f = T.live_fills.c
            query = sa.select(
                c.client_order_id,
                c.symbol,
                c.bar_ts,
                c.intent,
                c.side,
                c.qty,
                c.status,
                c.filled_qty,
                c.broker_id,
            ).where(c.strategy == self.strategy)
            with self.engine.connect() as conn:
                cache = {r[0]: StoredOrder(*r) for r in conn.execute(query).all()}
                mine = sa.select(c.client_order_id).where(c.strategy == self.strategy)
                fills = conn.execute(
                    sa.select(f.execution_id, f.client_order_id, f.qty, f.price).where(
                        f.client_order_id.in_(mine)
                    )
                ).all()
            self._booked, self._notional, self._execs = {}, {}, set()
            for execution, cid, qty, price in fills:
                self._execs.add(execution)
                self._booked[cid] = self._booked.get(cid, 0) + int(qty)
                self._notional[cid] = self._notional.get(cid, Decimal(0)) + Decimal(price) * qty
            self._cache = cache
        return self._cache

    # -- minute bars -------------------------------------------------------------------------

    def record_minutes(
        self, session: date, rows: Iterable[tuple[MinuteBar, str, bool]], at: datetime
    ) -> None:
        """Minute bars received (bar, source, late), in one transaction; a bar already stored
        keeps its first version and counts one more update."""
        values = [
            {
                "symbol": bar.symbol,
                "ts": bar.ts,
                "session": session.isoformat(),
                "open": bar.open,
                "high": bar.high,
                "low": bar.low,
                "close": bar.close,
                "volume": bar.volume,
                "source": source,
                "received_at": at,
                "late": late,
                "updates": 0,
            }
            for bar, source, late in rows
        ]
        if not values:
            return
        table = T.live_minute_bars
        insert = _INSERTS[self.engine.dialect.name](table)
        stmt = insert.on_conflict_do_update(
            index_elements=[table.c.symbol, table.c.ts],
            set_={"updates": table.c.updates + 1},
        )
        with self.engine.begin() as conn:
            conn.execute(stmt, values)

    def minutes(self, session: date) -> list[MinuteBar]:
        """The session's minute bars as first received, in time order (late ones excluded)."""
        c = T.live_minute_bars.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(c.symbol, c.ts, c.open, c.high, c.low, c.close, c.volume)
                .where(c.session == session.isoformat(), c.late.is_(False))
                .order_by(c.ts, c.symbol)
            ).all()
        return [MinuteBar(*r) for r in rows]

    # -- decisions ---------------------------------------------------------------------------

    def record_decision(
        self,
        *,
        session: date,
        attempt: int,
        bar_ts: datetime,
        decided_at: datetime,
        features_sha256: str,
        state: PathState,
        equity: float,
        predictions: dict[str, Any],
        intended: dict[str, int],
        orders: Sequence[Order],
        cancels: Sequence[str],
        positions: dict[str, int],
    ) -> None:
        """The decision of one bar and the orders it means to send (``pending``), at once."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.insert(T.live_decisions).values(
                    strategy=self.strategy,
                    bar_ts=bar_ts,
                    session=session.isoformat(),
                    attempt=attempt,
                    decided_at=decided_at,
                    features_sha256=features_sha256,
                    state=state.risk.state.value,
                    equity=equity,
                    path_state=json.dumps(state.to_dict()),
                    predictions=json.dumps(predictions),
                    intended=json.dumps(intended),
                    orders=json.dumps([_order_json(o) for o in orders]),
                    cancels=json.dumps(list(cancels)),
                    positions=json.dumps(positions),
                )
            )
            for o in orders:
                self._insert_order(conn, session, o, decided_at)

    def _insert_order(self, conn: sa.Connection, session: date, o: Order, at: datetime) -> None:
        cache = self._orders_cache()
        if o.client_order_id in cache:
            return
        conn.execute(
            sa.insert(T.live_orders).values(
                client_order_id=o.client_order_id,
                strategy=self.strategy,
                session=session.isoformat(),
                symbol=o.symbol,
                bar_ts=o.bar_ts,
                intent=o.intent,
                side=o.side,
                qty=o.quantity,
                created_at=at,
                broker_id=None,
                status="pending",
                filled_qty=0,
                filled_avg_price=None,
                updated_at=at,
                reason=None,
            )
        )
        cache[o.client_order_id] = StoredOrder(
            o.client_order_id, o.symbol, o.bar_ts, o.intent, o.side, o.quantity, "pending", 0, None
        )
        self.status_changes["pending"] += 1

    def record_order(self, session: date, order: Order, at: datetime) -> None:
        """An order sent outside a decision (a close at a stop, a flatten)."""
        with self.engine.begin() as conn:
            self._insert_order(conn, session, order, at)

    def last_state(self) -> tuple[datetime, PathState] | None:
        """The newest decided bar and the path's state after it."""
        c = T.live_decisions.c
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(c.bar_ts, c.path_state)
                .where(c.strategy == self.strategy)
                .order_by(c.bar_ts.desc())
                .limit(1)
            ).first()
        if row is None:
            return None
        return row[0], PathState.from_dict(json.loads(row[1]))

    def decisions(self, session: date) -> list[dict[str, Any]]:
        """The session's decisions, in bar order (JSON columns decoded)."""
        c = T.live_decisions.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(T.live_decisions)
                .where(c.strategy == self.strategy, c.session == session.isoformat())
                .order_by(c.bar_ts)
            ).mappings()
            out = []
            for r in rows:
                d = dict(r)
                for k in (
                    "path_state",
                    "predictions",
                    "intended",
                    "orders",
                    "cancels",
                    "positions",
                ):
                    d[k] = json.loads(d[k])
                out.append(d)
        return out

    # -- orders and fills --------------------------------------------------------------------

    def orders(self, *, open_only: bool = False) -> dict[str, StoredOrder]:
        """Every order of the strategy by client id (``open_only``: not final)."""
        cache = self._orders_cache()
        if open_only:
            return {k: o for k, o in cache.items() if o.status not in _FINAL}
        return dict(cache)

    def update_order(self, order: BrokerOrder, at: datetime, reason: str | None = None) -> None:
        """What the broker says of one of our orders; ``filled_qty`` never goes down (a stale
        report after a newer one changes nothing). A report that changes nothing writes
        nothing."""
        known = self._orders_cache().get(order.client_order_id)
        if known is None:
            return
        filled = max(known.filled_qty, order.filled_qty)
        # The broker's own end of an order is not undone by an older report of it (a queued
        # stream event); a local mark (never_sent, not_sent) yields to what the broker says.
        stale = order.filled_qty < known.filled_qty or (
            known.status in _BROKER_FINAL and order.status not in _BROKER_FINAL
        )
        status = known.status if stale else order.status
        if reason is None and (status, filled, known.broker_id) == (
            known.status,
            known.filled_qty,
            order.id,
        ):
            return
        c = T.live_orders.c
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(T.live_orders)
                .where(c.client_order_id == order.client_order_id)
                .values(
                    broker_id=order.id,
                    status=status,
                    filled_qty=filled,
                    filled_avg_price=None
                    if order.filled_avg_price is None
                    else str(order.filled_avg_price),
                    updated_at=at,
                    **({"reason": reason} if reason else {}),
                )
            )
        self._orders_cache()[order.client_order_id] = replace(
            known, status=status, filled_qty=filled, broker_id=order.id
        )
        if status != known.status:
            self.status_changes[status] += 1

    def resize_order(
        self, client_order_id: str, side: str, qty: int, reason: str, at: datetime
    ) -> None:
        """Re-size an order not yet sent (a fill raced the cancel it follows): its side and
        quantity as they will be sent, so that its fills are signed and counted right."""
        c = T.live_orders.c
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(T.live_orders)
                .where(c.client_order_id == client_order_id)
                .values(side=side, qty=qty, reason=reason, updated_at=at)
            )
        cache = self._orders_cache()
        if client_order_id in cache:
            cache[client_order_id] = replace(cache[client_order_id], side=side, qty=qty)

    def mark_order(self, client_order_id: str, status: str, reason: str, at: datetime) -> None:
        """Set an order's status without the broker (e.g. ``never_sent`` after a crash)."""
        c = T.live_orders.c
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(T.live_orders)
                .where(c.client_order_id == client_order_id)
                .values(status=status, reason=reason, updated_at=at)
            )
        cache = self._orders_cache()
        if client_order_id in cache:
            if cache[client_order_id].status != status:
                self.status_changes[status] += 1
            cache[client_order_id] = replace(cache[client_order_id], status=status)

    def record_fill(
        self,
        execution_id: str,
        client_order_id: str,
        symbol: str,
        side: str,
        qty: int,
        price: Decimal,
        ts: datetime,
        source: str,
    ) -> bool:
        """One execution, once (False: already recorded under this id)."""
        self._orders_cache()
        if execution_id in self._execs:
            return False
        with self.engine.begin() as conn:
            conn.execute(
                sa.insert(T.live_fills).values(
                    execution_id=execution_id,
                    client_order_id=client_order_id,
                    symbol=symbol,
                    side=side,
                    qty=qty,
                    price=str(price),
                    ts=ts,
                    source=source,
                )
            )
        self._execs.add(execution_id)
        self._booked[client_order_id] = self._booked.get(client_order_id, 0) + qty
        self._notional[client_order_id] = (
            self._notional.get(client_order_id, Decimal(0)) + price * qty
        )
        return True

    def has_order(self, client_order_id: str) -> bool:
        return client_order_id in self._orders_cache()

    def booked(self, client_order_id: str) -> int:
        """Shares of the order's fills recorded so far."""
        self._orders_cache()
        return self._booked.get(client_order_id, 0)

    def booked_notional(self, client_order_id: str) -> Decimal:
        """USD of the order's fills recorded so far (price x shares, exact)."""
        self._orders_cache()
        return self._notional.get(client_order_id, Decimal(0))

    def fills(self) -> list[dict[str, Any]]:
        """The strategy's fills, oldest first."""
        c, f = T.live_orders.c, T.live_fills.c
        mine = sa.select(c.client_order_id).where(c.strategy == self.strategy)
        query = sa.select(T.live_fills).where(f.client_order_id.in_(mine)).order_by(f.ts)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def expected_positions(self) -> dict[str, int]:
        """Symbol -> signed shares our orders have filled, as far as we know."""
        out: dict[str, int] = {}
        for o in self.orders().values():
            if o.filled_qty:
                out[o.symbol] = out.get(o.symbol, 0) + o.signed_filled
        return {s: q for s, q in out.items() if q}

    def record_positions(
        self, session: date, ts: datetime, held: dict[str, int], expected: dict[str, int]
    ) -> None:
        c = T.live_positions.c
        with self.engine.begin() as conn:
            conn.execute(
                sa.delete(T.live_positions).where(c.session == session.isoformat(), c.ts == ts)
            )
            for symbol in sorted(set(held) | set(expected)):
                conn.execute(
                    sa.insert(T.live_positions).values(
                        session=session.isoformat(),
                        ts=ts,
                        symbol=symbol,
                        qty=held.get(symbol, 0),
                        expected=expected.get(symbol, 0),
                    )
                )


def _order_json(o: Order) -> dict[str, Any]:
    return {
        "client_order_id": o.client_order_id,
        "symbol": o.symbol,
        "side": o.side,
        "qty": o.quantity,
        "intent": o.intent,
    }
