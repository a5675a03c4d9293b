"""What the session sends when the book moves under it: a crash between a decision and its
sending, a cancel not confirmed in time, a fill racing the cancel of a flatten, a refusal of
one order, a stop after failing closed. Exposure never exceeds what the decision meant."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pipelines.execution.orders import Order
from pipelines.live.broker import OrderRefused, TradeUpdate
from pipelines.live.session import SessionSuperseded, _BookMoving
from tests.live.test_reconcile import BAR, DictBroker, _decide, _session

B1 = BAR + timedelta(minutes=15)


def _exposure(broker: DictBroker, symbol: str = "AAA") -> int:
    """The position and the signed remainder of the open orders."""
    return broker.held.get(symbol, 0) + sum(
        o.remaining for o in broker.open_orders() if o.symbol == symbol
    )


def _working(tmp_path: Path, broker: DictBroker, order: Order) -> Any:
    live, store, switch = _session(tmp_path, broker)
    _decide(store, order, bar_ts=BAR)
    broker.submit(order)
    live._book(broker.orders[order.client_order_id], BAR)
    return live, store, switch


W = Order.create("model", "AAA", BAR, "target:100", "buy", 100)
NEW = Order.create("model", "AAA", B1, "target:150", "buy", 150)


def test_a_crash_before_sending_resends_sized_from_the_book(tmp_path: Path) -> None:
    """Decided at B1: cancel W (buy 100, working), buy 150; killed before either went out."""
    broker = DictBroker(B1 + timedelta(minutes=15, seconds=5))
    _, store, _ = _working(tmp_path, broker, W)
    _decide(store, NEW, bar_ts=B1, cancels=[W.client_order_id])
    relaunch, _, _ = _session(tmp_path, broker)
    relaunch.reconcile(startup=True)
    assert _exposure(broker) == 150  # not 250: W still works, 50 more are sent


def test_a_crash_after_the_cancel_resends_what_the_fill_left(tmp_path: Path) -> None:
    broker = DictBroker(B1 + timedelta(minutes=15, seconds=5))
    _, store, _ = _working(tmp_path, broker, W)
    _decide(store, NEW, bar_ts=B1, cancels=[W.client_order_id])
    w = broker.orders[W.client_order_id]
    broker.orders[W.client_order_id] = replace(
        w, status="canceled", filled_qty=60, filled_avg_price=Decimal("10")
    )
    broker.held["AAA"] = 60
    relaunch, store2, _ = _session(tmp_path, broker)
    relaunch.reconcile(startup=True)
    assert _exposure(broker) == 150
    assert store2.orders()[NEW.client_order_id].qty == 90  # the record says what was sent


def test_an_unconfirmed_cancel_holds_back_its_replacement(tmp_path: Path) -> None:
    broker = DictBroker(B1 + timedelta(minutes=15))
    live, store, _ = _working(tmp_path, broker, W)
    live.config = replace(live.config, cancel_timeout_s=0.05)

    def pending_cancel(order_id: str) -> None:
        cid = W.client_order_id
        broker.orders[cid] = replace(broker.orders[cid], status="pending_cancel")

    broker.cancel = pending_cancel  # type: ignore[method-assign]
    _decide(store, NEW, bar_ts=B1, cancels=[W.client_order_id])
    live._send([NEW], {NEW.client_order_id: [W.client_order_id]}, broker.now, [W.client_order_id])
    assert NEW.client_order_id not in broker.sent
    assert store.orders()[NEW.client_order_id].status == "not_sent"
    cid = W.client_order_id  # the cancel then loses the race
    broker.orders[cid] = replace(
        broker.orders[cid], status="filled", filled_qty=100, filled_avg_price=Decimal("10")
    )
    broker.held["AAA"] = 100
    assert _exposure(broker) <= 150


def test_a_flatten_is_sized_after_the_cancels_of_its_symbol(tmp_path: Path) -> None:
    """Long 100 with a sell of 50 working; the switch trips: cancel it, flatten. The sell
    fills while its cancel is in flight: the flatten sells the 50 left, not 100."""
    broker = DictBroker(B1 + timedelta(minutes=15))
    broker.held["AAA"] = 100
    sell = Order.create("model", "AAA", BAR, "target:50", "sell", 50)
    live, store, _ = _working(tmp_path, broker, sell)
    broker.held["AAA"] = 100

    def cancel_loses_race(order_id: str) -> None:
        cid = sell.client_order_id
        broker.orders[cid] = replace(
            broker.orders[cid], status="filled", filled_qty=50, filled_avg_price=Decimal("10")
        )
        broker.held["AAA"] = 50

    broker.cancel = cancel_loses_race  # type: ignore[method-assign]
    flatten = Order.create("model", "AAA", B1, "flatten", "sell", 100)
    _decide(store, flatten, bar_ts=B1, cancels=[sell.client_order_id])
    live._send([flatten], {}, broker.now, [sell.client_order_id])
    assert broker.orders[flatten.client_order_id].qty == 50
    assert broker.orders[flatten.client_order_id].side == "sell"


def test_a_renet_that_turns_the_side_is_recorded_so_the_account_still_reconciles(
    tmp_path: Path,
) -> None:
    broker = DictBroker(B1 + timedelta(minutes=15))
    live, store, _ = _working(tmp_path, broker, W)

    def cancel_loses_race(order_id: str) -> None:
        cid = W.client_order_id
        broker.orders[cid] = replace(
            broker.orders[cid], status="filled", filled_qty=100, filled_avg_price=Decimal("10")
        )
        broker.held["AAA"] = 100

    broker.cancel = cancel_loses_race  # type: ignore[method-assign]
    half = Order.create("model", "AAA", B1, "target:50", "buy", 50)
    _decide(store, half, bar_ts=B1, cancels=[W.client_order_id])
    live._send([half], {half.client_order_id: [W.client_order_id]}, broker.now, [W.client_order_id])
    sent = broker.orders[half.client_order_id]
    assert (sent.side, sent.qty) == ("sell", 50)
    assert (
        store.orders()[half.client_order_id].side,
        store.orders()[half.client_order_id].qty,
    ) == (
        "sell",
        50,
    )
    broker.orders[half.client_order_id] = replace(
        sent, status="filled", filled_qty=50, filled_avg_price=Decimal("10")
    )
    broker.held["AAA"] = 50
    live.reconcile()
    assert live.result.halted is None and store.expected_positions() == {"AAA": 50}


def test_a_refused_order_is_rejected_and_the_others_go_on(tmp_path: Path) -> None:
    broker = DictBroker(B1 + timedelta(minutes=1))
    live, store, switch = _session(tmp_path, broker)
    submit = broker.submit

    def refuse_bbb(order: Order) -> Any:
        if order.symbol == "BBB":
            raise OrderRefused("Alpaca refused it: HTTP 403: insufficient qty available")
        return submit(order)

    broker.submit = refuse_bbb  # type: ignore[method-assign]
    a = Order.create("model", "AAA", BAR, "target:100", "buy", 100)
    b = Order.create("model", "BBB", BAR, "target:-100", "sell", 100)
    _decide(store, a, b, bar_ts=BAR)
    live._send([a, b], {}, B1)
    orders = store.orders()
    assert orders[b.client_order_id].status == "rejected"
    assert orders[a.client_order_id].status != "pending" and a.client_order_id in broker.sent
    relaunch, _, _ = _session(tmp_path, broker)
    relaunch.reconcile(startup=True)  # nothing left to resend, nothing to fail on
    assert relaunch.result.halted is None and not switch.tripped()


def test_nothing_is_resent_or_flattened_once_the_session_failed_closed(tmp_path: Path) -> None:
    broker = DictBroker(B1 + timedelta(minutes=1))
    live, store, switch = _session(tmp_path, broker)
    live.config = replace(live.config, on_stop="flatten")
    pending = Order.create("model", "AAA", BAR, "target:100", "buy", 100)
    _decide(store, pending, bar_ts=BAR)  # decided, never sent
    broker.submit(Order.create("someone", "AAA", BAR, "manual", "buy", 500))
    broker.held["ZZZ"] = 7  # a position this strategy never traded
    broker.sent.clear()
    live.reconcile(startup=True)
    live._on_stop()
    assert switch.tripped() and live.result.halted
    assert broker.sent == []
    assert store.orders()[pending.client_order_id].status == "never_sent"


def test_a_late_resend_may_only_cut_exposure(tmp_path: Path) -> None:
    broker = DictBroker(BAR + timedelta(minutes=29))  # 14 minutes after its bar ended
    live, store, _ = _session(tmp_path, broker)
    live.path = replace(live.path, limits=replace(live.path.limits, max_data_age_s=60.0))
    _decide(store, W, bar_ts=BAR)
    live.reconcile(startup=True)
    assert broker.sent == []
    assert store.orders()[W.client_order_id].status == "never_sent"


def test_the_book_is_read_as_of_one_moment(tmp_path: Path) -> None:
    """W fills just after the positions were read: the open orders read next no longer show
    it. Positions and orders are read again until they agree (held 100, nothing working), not
    taken torn (held 0, nothing working: 100 shares missing, and bought again)."""
    broker = DictBroker(B1 + timedelta(minutes=15))
    live, _, _ = _working(tmp_path, broker, W)
    positions = broker.positions
    reads = []

    def positions_then_fill() -> dict[str, int]:
        held = positions()
        if not reads:
            cid = W.client_order_id
            broker.orders[cid] = replace(
                broker.orders[cid], status="filled", filled_qty=100, filled_avg_price=Decimal("10")
            )
            broker.held["AAA"] = 100
        reads.append(held)
        return held

    broker.positions = positions_then_fill  # type: ignore[method-assign]
    assert live._book_now() == ({"AAA": 100}, {})
    assert reads[0] == {}  # the first read was taken before the fill


def test_a_fill_learnt_partly_from_the_stream_and_partly_over_rest_keeps_its_money(
    tmp_path: Path,
) -> None:
    broker = DictBroker(B1)
    live, store, _ = _session(tmp_path, broker)
    order = Order.create("model", "AAA", BAR, "target:100", "buy", 100)
    _decide(store, order, bar_ts=BAR)
    sent = broker.submit(order)
    part = replace(sent, filled_qty=40, filled_avg_price=Decimal("100"), status="partially_filled")
    live._book(part, B1, TradeUpdate("partial_fill", part, B1, "E1", 40, Decimal("100")))
    # E2 (60 at 110) is learnt over REST first: the order's average is 106 over all 100.
    full = replace(sent, filled_qty=100, filled_avg_price=Decimal("106"), status="filled")
    live._book(full, B1)
    live._book(full, B1, TradeUpdate("fill", full, B1, "E2", 60, Decimal("110")))  # late: skipped
    fills = [(int(f["qty"]), Decimal(f["price"])) for f in store.fills()]
    assert sorted(fills) == [(40, Decimal("100")), (60, Decimal("110"))]


def test_a_late_stream_event_does_not_reopen_an_order_the_broker_ended(tmp_path: Path) -> None:
    broker = DictBroker(B1)
    live, store, _ = _session(tmp_path, broker)
    order = Order.create("model", "AAA", BAR, "target:100", "buy", 100)
    _decide(store, order, bar_ts=BAR)
    sent = broker.submit(order)
    live._book(replace(sent, status="canceled"), B1)  # REST: canceled, nothing filled
    live._book(sent, B1, TradeUpdate("new", sent, BAR, None, None, None))  # the queued "new"
    assert store.orders()[order.client_order_id].status == "canceled"


def test_a_resize_never_takes_the_position_through_zero(tmp_path: Path) -> None:
    """Flat with a buy of 50 working; the bar wants short 100: cancel it, sell 100. The buy
    fills while its cancel is in flight: the sell is re-sized to close the 50 only (Alpaca
    refuses one order through zero); the other side waits for the next bar."""
    broker = DictBroker(B1 + timedelta(minutes=15))
    buy = Order.create("model", "AAA", BAR, "target:50", "buy", 50)
    live, store, _ = _working(tmp_path, broker, buy)

    def cancel_loses_race(order_id: str) -> None:
        cid = buy.client_order_id
        broker.orders[cid] = replace(
            broker.orders[cid], status="filled", filled_qty=50, filled_avg_price=Decimal("10")
        )
        broker.held["AAA"] = 50

    broker.cancel = cancel_loses_race  # type: ignore[method-assign]
    short = Order.create("model", "AAA", B1, "target:-100", "sell", 100)
    _decide(store, short, bar_ts=B1, cancels=[buy.client_order_id])
    live._send(
        [short], {short.client_order_id: [buy.client_order_id]}, broker.now, [buy.client_order_id]
    )
    sent = broker.orders[short.client_order_id]
    assert (sent.side, sent.qty) == ("sell", 50)


@pytest.mark.parametrize("why", ["lease", "stop", "close"])
def test_a_startup_resend_honours_the_lease_the_stop_and_the_close(
    tmp_path: Path, why: str
) -> None:
    at = B1 + timedelta(minutes=1) if why != "close" else BAR + timedelta(minutes=26)
    broker = DictBroker(at)
    live, store, _ = _session(tmp_path, broker)
    if why == "close":
        live.close = BAR + timedelta(minutes=20)  # the session ended before the relaunch
    if why == "stop":
        live._stop.set()
    if why == "lease":
        live._lease = lambda: False
    _decide(store, W, bar_ts=BAR)
    if why == "lease":
        with pytest.raises(SessionSuperseded):
            live.reconcile(startup=True)
    else:
        live.reconcile(startup=True)
        assert store.orders()[W.client_order_id].status == "never_sent"
    assert broker.sent == []


def test_the_book_is_not_taken_torn_while_fills_keep_coming(tmp_path: Path) -> None:
    broker = DictBroker(B1 + timedelta(minutes=15))
    live, _, _ = _working(tmp_path, broker, W)
    reads = iter(range(100))
    open_orders = broker.open_orders

    def ever_changing() -> list[Any]:
        k = next(reads)
        return [replace(o, filled_qty=k) for o in open_orders()]

    broker.open_orders = ever_changing  # type: ignore[method-assign]
    with pytest.raises(_BookMoving):
        live._book_now()
