"""Reconciliation at start-up: what the record knows against what the broker says, with a
hand-written broker holding plain dicts (no network): fills learnt over REST are booked once,
an order written but never sent is sent while its bar is current and marked never_sent after,
and a position or an open order the record does not explain fails closed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Literal

import polars as pl
import pytest

from pipelines.backtest.strategy import ModelStrategy, SizingConfig
from pipelines.data.store import BarStore
from pipelines.execution.orders import Order
from pipelines.execution.path import PathConfig, PathState, Signals
from pipelines.live.broker import BrokerAccount, BrokerOrder, FeedEvent
from pipelines.live.session import LiveSession, SessionConfig
from pipelines.live.signals import BarSignals
from pipelines.live.store import LiveStore
from pipelines.risk.killswitch import KillSwitch

SESSION_DAY = datetime(2019, 2, 15, tzinfo=UTC).date()
BAR = datetime(2019, 2, 15, 15, 0, tzinfo=UTC)


@dataclass
class DictBroker:
    """A broker of plain dicts: orders by client id, positions by symbol."""

    now: datetime
    orders: dict[str, BrokerOrder] = field(default_factory=dict)
    held: dict[str, int] = field(default_factory=dict)
    sent: list[str] = field(default_factory=list)

    def account(self) -> BrokerAccount:
        return BrokerAccount(1e6, 1e6, Decimal("1000000"), 0.0, 0.0)

    def positions(self) -> dict[str, int]:
        return {s: q for s, q in self.held.items() if q}

    def open_orders(self) -> list[BrokerOrder]:
        return [o for o in self.orders.values() if o.open]

    def order(self, client_order_id: str) -> BrokerOrder | None:
        return self.orders.get(client_order_id)

    def submit(self, order: Order) -> BrokerOrder:
        self.sent.append(order.client_order_id)
        o = BrokerOrder(
            f"b-{order.client_order_id[:6]}",
            order.client_order_id,
            order.symbol,
            order.side,
            order.quantity,
            0,
            None,
            "new",
        )
        self.orders.setdefault(order.client_order_id, o)
        return self.orders[order.client_order_id]

    def cancel(self, order_id: str) -> None:
        for cid, o in self.orders.items():
            if o.id == order_id and o.open:
                self.orders[cid] = replace(o, status="canceled")

    def clock(self) -> datetime:
        return self.now

    def minute_bars(self, symbols: Sequence[str], start: datetime, end: datetime) -> pl.DataFrame:
        return pl.DataFrame(
            schema={
                "symbol": pl.String,
                "ts": pl.Datetime("us", "UTC"),
                **{c: pl.Float64 for c in ("open", "high", "low", "close", "volume")},
            }
        )


class NoFeed:
    def start(self, symbols: Sequence[str]) -> None: ...
    def get(self, timeout: float) -> FeedEvent | None:
        return None

    def reconnect(self, which: str) -> None: ...
    def stop(self) -> None: ...


def _session(tmp_path: Path, broker: DictBroker) -> tuple[LiveSession, LiveStore, KillSwitch]:
    db = BarStore(f"sqlite:///{tmp_path / 'live.db'}")
    db.migrate()
    store = LiveStore(db.engine, "model")
    switch = KillSwitch(db.engine)
    strategy = ModelStrategy(SizingConfig(), name="model")
    live = LiveSession(
        SessionConfig(session=SESSION_DAY, attempt=2, symbols=("AAA", "BBB"), minutes=15),
        path=PathConfig(strategy="model"),
        strategy=strategy,
        signals=None,  # type: ignore[arg-type]
        broker=broker,
        feed=NoFeed(),
        store=store,
        switch=switch,
        clock=lambda: broker.now,
        history=pl.DataFrame(),
    )
    return live, store, switch


def _decide(
    store: LiveStore, *orders: Order, bar_ts: datetime = BAR, cancels: Sequence[str] = ()
) -> None:
    """Record a decision of ``bar_ts`` with ``orders`` (pending) and ``cancels``."""
    strategy = ModelStrategy(SizingConfig(), name="model")
    store.record_decision(
        session=SESSION_DAY,
        attempt=1,
        bar_ts=bar_ts,
        decided_at=bar_ts + timedelta(minutes=15),
        features_sha256="0" * 64,
        state=PathState.create(("AAA", "BBB"), strategy, PathConfig()),
        equity=1e6,
        predictions={},
        intended={},
        orders=list(orders),
        cancels=list(cancels),
        positions={},
    )


BUY = Order.create("model", "AAA", BAR, "target:100", "buy", 100)


def test_a_fill_learnt_over_rest_is_booked_once(tmp_path: Path) -> None:
    broker = DictBroker(BAR + timedelta(minutes=20))
    live, store, switch = _session(tmp_path, broker)
    _decide(store, BUY)
    broker.submit(BUY)
    broker.orders[BUY.client_order_id] = replace(
        broker.orders[BUY.client_order_id],
        filled_qty=40,
        status="partially_filled",
        filled_avg_price=Decimal("10.01"),
    )
    broker.held["AAA"] = 40
    live.reconcile(startup=True)
    live.reconcile()
    assert store.booked(BUY.client_order_id) == 40
    assert len(store.fills()) == 1 and store.fills()[0]["price"] == "10.01"
    assert store.expected_positions() == {"AAA": 40}
    assert not switch.tripped() and live.result.halted is None


def test_an_order_written_but_not_sent_is_sent_while_its_bar_is_current(tmp_path: Path) -> None:
    broker = DictBroker(BAR + timedelta(minutes=16))  # the crash came before the send
    live, store, _ = _session(tmp_path, broker)
    _decide(store, BUY)
    live.reconcile(startup=True)
    assert broker.sent == [BUY.client_order_id]
    live.reconcile(startup=True)  # a second restart: the broker has it, nothing is resent
    assert broker.sent == [BUY.client_order_id]
    assert store.orders()[BUY.client_order_id].status == "new"


def test_an_order_not_sent_before_its_bar_passed_is_never_sent(tmp_path: Path) -> None:
    broker = DictBroker(BAR + timedelta(minutes=45))
    live, store, _ = _session(tmp_path, broker)
    _decide(store, BUY)
    live.reconcile(startup=True)
    assert broker.sent == []
    assert store.orders()[BUY.client_order_id].status == "never_sent"


@pytest.mark.parametrize("what", ["position", "order"])
def test_what_the_record_does_not_explain_fails_closed(tmp_path: Path, what: str) -> None:
    broker = DictBroker(BAR + timedelta(minutes=20))
    live, _, switch = _session(tmp_path, broker)
    if what == "position":
        broker.held["BBB"] = 7
    else:
        broker.submit(Order.create("someone", "BBB", BAR, "manual", "sell", 5))
        broker.sent.clear()
    live.reconcile(startup=True)
    assert switch.tripped()
    assert live.result.halted is not None and "BBB" in live.result.halted
    assert live.result.mismatches == 1  # quantdag_live_reconciliation_mismatches_total
    assert switch.status().reason.startswith("reconciliation:")
    assert broker.sent == []  # nothing guessed: the unknown is not closed or cancelled
    assert any(e.rule == "reconciliation" and e.kind == "kill_switch" for e in switch.events())


class NoSignals:
    def on_bars(self, bars: pl.DataFrame) -> BarSignals:
        return BarSignals(Signals.empty(bars.height), "0" * 64, {})


def test_an_unknown_order_seen_at_a_bar_halts_before_deciding(tmp_path: Path) -> None:
    broker = DictBroker(BAR + timedelta(minutes=20))
    live, store, switch = _session(tmp_path, broker)
    live.signals = NoSignals()  # type: ignore[assignment]
    broker.submit(Order.create("someone", "AAA", BAR, "manual", "buy", 5))
    bars = pl.DataFrame(
        {
            "symbol": ["AAA"],
            "ts": [BAR],
            "open": [10.0],
            "high": [10.5],
            "low": [9.5],
            "close": [10.2],
            "volume": [1000.0],
        }
    )
    live._on_bars(bars, BAR + timedelta(minutes=15))
    assert switch.tripped() and live.result.halted is not None
    assert store.decisions(SESSION_DAY) == []  # nothing decided, nothing sent
    assert broker.sent == [  # only the stranger's own order
        Order.create("someone", "AAA", BAR, "manual", "buy", 5).client_order_id
    ]


def test_slippage_is_a_cost_on_both_sides_and_the_fill_ratio_counts_this_attempt_only(
    tmp_path: Path,
) -> None:
    """Against the decided bar's close of 100: a buy filled at 100.10 and a sell filled at
    99.90 both cost +10 bps; a sell filled at 100.10 is -10 bps (an improvement). A fill of an
    order an earlier attempt sent is booked but is not in this attempt's fill ratio."""
    live, _, _ = _session(tmp_path, DictBroker(BAR + timedelta(minutes=20)))

    def fill(cid: str, side: Literal["buy", "sell"], price: str, ours: bool = True) -> None:
        live._decided_at_close[cid] = 100.0
        if ours:
            live._sent_here.add(cid)
        order = BrokerOrder("b-" + cid, cid, "AAA", side, 10, 10, Decimal(price), "filled")
        live._count_fill(order, 10, Decimal(price))

    fill("buy-1", "buy", "100.10")
    fill("sell-1", "sell", "99.90")
    fill("sell-2", "sell", "100.10")
    fill("earlier", "buy", "100.00", ours=False)
    bps = [round(b, 6) for b, _ in live.result.slippage_bps]
    assert bps == [10.0, 10.0, -10.0, 0.0]
    assert live.result.fills == 4 and live.result.shares_filled == 30
