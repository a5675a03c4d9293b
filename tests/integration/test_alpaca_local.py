"""The real alpaca-py clients (REST and both websockets) against the project's local Alpaca,
replaying the bundled 1-minute sample (2019-02-15) over loopback."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from typing import Any

import polars as pl
import pytest
import requests
from alpaca.common.exceptions import APIError
from alpaca.data.historical import StockHistoricalDataClient
from alpaca.data.live import StockDataStream
from alpaca.data.requests import StockBarsRequest
from alpaca.data.timeframe import TimeFrame, TimeFrameUnit
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, OrderStatus, QueryOrderStatus, TimeInForce
from alpaca.trading.requests import (
    GetCalendarRequest,
    GetOrdersRequest,
    LimitOrderRequest,
    MarketOrderRequest,
)
from alpaca.trading.stream import TradingStream

from pipelines.backtest.broker import BrokerConfig, CostModel, SimulatedBroker, money
from pipelines.bars.aggregate import aggregate_bars
from pipelines.execution.batch import Bar, BarBatch
from pipelines.execution.orders import Order
from pipelines.timeframes import Timeframe
from quantdag.testing.alpaca.replay import stored
from quantdag.testing.alpaca_server import Fault, LocalAlpaca, sample_minute_bars

pytestmark = pytest.mark.integration
SESSION = date(2019, 2, 15)
OPEN = datetime(2019, 2, 15, 14, 30, tzinfo=UTC)  # 09:30 New York
CLOSE = datetime(2019, 2, 15, 21, 0, tzinfo=UTC)
KEY, SECRET = "test-key", "test-secret"
COSTS = CostModel(
    slippage_bps=2.0, commission_per_share=Decimal("0.005"), commission_min=Decimal("1")
)
CONFIG = BrokerConfig(costs=COSTS, participation=0.0002, max_leverage=4.0)


@pytest.fixture(scope="module")
def minute_bars() -> pl.DataFrame:
    return sample_minute_bars(SESSION)


@pytest.fixture
def server(minute_bars: pl.DataFrame) -> Iterator[LocalAlpaca]:
    with LocalAlpaca(minute_bars, fill=CONFIG, fill_minutes=15) as srv:
        yield srv


def _trading(server: LocalAlpaca) -> TradingClient:
    return TradingClient(KEY, SECRET, paper=True, url_override=server.url)


def _market(symbol: str, qty: int, cid: str, side: OrderSide = OrderSide.BUY) -> Any:
    return MarketOrderRequest(
        symbol=symbol, qty=qty, side=side, time_in_force=TimeInForce.DAY, client_order_id=cid
    )


def _wait(cond: Callable[[], bool], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for a condition")
        time.sleep(0.02)


class StreamThread:
    """Runs an alpaca-py stream's ``_run_forever`` in a thread with its own loop
    (``stream.run()`` calls ``asyncio.run``: alpaca-py issue #618)."""

    def __init__(self, stream: StockDataStream | TradingStream, drop: Callable[[], None]):
        self.stream, self.drop = stream, drop
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self.stream._run_forever())

    def __enter__(self) -> StreamThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        _wait(lambda: self.stream._loop is not None)
        self.stream.stop()
        # alpaca-py looks at its stop queue between 5-second receives: closing the socket from
        # the server side ends the wait now.
        self.drop()
        self.thread.join(15)
        assert not self.thread.is_alive()


# --------------------------------------------------------------------------- fills


def _expected_fills(
    minute_bars: pl.DataFrame, orders: list[tuple[datetime, Order]]
) -> list[tuple[str, datetime, int, Decimal, Decimal]]:
    """SimulatedBroker run directly on the 15-minute bars: each order is submitted just before
    the fill bar it is eligible for (the bar starting at or after its receipt, within 30 s)."""
    bars = aggregate_bars(
        stored(minute_bars),
        source=Timeframe.parse("1m"),
        target=Timeframe.parse("15m"),
        session="regular",
    )
    broker = SimulatedBroker(Decimal("100000"), set(minute_bars["symbol"]), CONFIG)
    for (ts,), part in bars.group_by("ts", maintain_order=True):
        for received, order in orders:
            if received - timedelta(seconds=30) <= ts and order.client_order_id not in broker.seen:
                # Decided before the bar it fills on, as in the backtest.
                broker.submit(replace(order, bar_ts=ts - timedelta(microseconds=1)))
        batch = BarBatch.of(
            [
                Bar(r["symbol"], ts, r["open"], r["high"], r["low"], r["close"], r["volume"])
                for r in part.iter_rows(named=True)
            ],
            broker.ids,
        )
        broker.on_batch(batch)
    return [(f.symbol, f.ts, f.quantity, f.price, f.commission) for f in broker.ledger.fills]


def test_fills_equal_the_simulated_brokers_with_partials_and_latency(
    server: LocalAlpaca, minute_bars: pl.DataFrame
) -> None:
    client = _trading(server)
    plan: list[tuple[datetime, Order]] = []

    def send(symbol: str, qty: int, side: str, cid: str) -> None:
        received = server.now()
        client.submit_order(_market(symbol, qty, cid, OrderSide(side)))
        order = Order(cid, "t", symbol, received, "t", side, qty)  # type: ignore[arg-type]
        plan.append((received, order))

    send("AAPL", 300, "buy", "a1")  # at 09:30:00: fills on the 09:30 bar's open
    send("MSFT", 1500, "buy", "m1")  # over 0.02% of the bar's volume (1248): partials
    server.advance(OPEN + timedelta(minutes=10))
    # (a buy: Alpaca refuses a sell while the buy a1 is open, and here a1 is open until its
    # bar's end)
    send("AAPL", 100, "buy", "a2")  # at 09:40: too late for 09:30, fills at 09:45's open
    server.advance(OPEN + timedelta(minutes=15, seconds=20))
    send("SPY", 50, "buy", "s1")  # 20 s after the 09:45 bar's start: still that bar's open
    server.advance(OPEN + timedelta(minutes=15, seconds=31))
    send("QQQ", 40, "buy", "q1")  # 31 s after: the 10:00 bar's open
    server.advance(CLOSE)

    got = [(f.symbol, f.ts, f.quantity, f.price, f.commission) for f in server.fills()]
    assert got == _expected_fills(minute_bars, plan)
    by_id: dict[str, list[Any]] = {}
    for f in server.fills():
        by_id.setdefault(f.client_order_id, []).append(f)
    assert by_id["a1"][0].ts == OPEN and by_id["a2"][0].ts == OPEN + timedelta(minutes=15)
    assert by_id["s1"][0].ts == OPEN + timedelta(minutes=15)
    assert by_id["q1"][0].ts == OPEN + timedelta(minutes=30)
    # At the open, after slippage (2 bps against the buyer).
    first = minute_bars.filter(pl.col("symbol") == "AAPL", pl.col("ts") == OPEN).row(0, named=True)
    assert by_id["a1"][0].price == money(first["open"]) * Decimal("1.0002")
    # MSFT filled in parts, each within the cap of its bar's volume.
    assert len(by_id["m1"]) > 1 and sum(f.quantity for f in by_id["m1"]) == 1500
    m1 = client.get_order_by_client_id("m1")
    assert m1.status == OrderStatus.FILLED and float(m1.filled_qty) == 1500
    avg = sum(f.price * f.quantity for f in by_id["m1"]) / 1500
    assert Decimal(m1.filled_avg_price) == avg
    assert server.positions() == {"AAPL": 400, "MSFT": 1500, "SPY": 50, "QQQ": 40}
    positions = {p.symbol: p for p in client.get_all_positions()}
    assert {s: int(p.qty) for s, p in positions.items()} == server.positions()
    assert Decimal(positions["MSFT"].avg_entry_price) == avg
    account = client.get_account()
    equity, gross, _ = server.broker.mark()
    assert float(account.equity) == equity and Decimal(account.cash) == server.broker.ledger.cash
    assert float(account.buying_power) == max(0.0, equity * CONFIG.max_leverage - gross)


def test_orders_are_new_until_their_fill_bar_and_day_orders_expire_at_the_close(
    server: LocalAlpaca,
) -> None:
    client = _trading(server)
    server.advance(OPEN + timedelta(minutes=5))
    far = LimitOrderRequest(symbol="AAPL", qty=10, side="buy", time_in_force="day", limit_price=1.0)
    limit = client.submit_order(far)
    gtc = client.submit_order(
        LimitOrderRequest(symbol="AAPL", qty=10, side="buy", time_in_force="gtc", limit_price=1.0)
    )
    market = client.submit_order(_market("AAPL", 10, "x1"))
    server.advance(OPEN + timedelta(minutes=14, seconds=59))
    assert client.get_order_by_id(market.id).status == OrderStatus.NEW
    server.advance(OPEN + timedelta(minutes=30))
    assert client.get_order_by_id(market.id).status == OrderStatus.FILLED
    assert client.get_order_by_id(limit.id).status == OrderStatus.NEW
    server.advance(CLOSE)
    # Still working at the close itself (an order decided on the last bar sees it there, as
    # the backtest engine does); expired once the fill latency after the close has passed.
    assert client.get_order_by_id(limit.id).status == OrderStatus.NEW
    server.advance(CLOSE + timedelta(seconds=30))
    assert client.get_order_by_id(limit.id).status == OrderStatus.EXPIRED
    assert client.get_order_by_id(gtc.id).status == OrderStatus.NEW
    assert server.done


def test_a_day_order_sent_after_the_close_is_queued_for_the_next_open(server: LocalAlpaca) -> None:
    """Alpaca: a day order "submitted after the close is queued and submitted the following
    trading day" -- not expired, and not filled today."""
    client = _trading(server)
    server.advance(CLOSE + timedelta(seconds=2))
    late = client.submit_order(_market("AAPL", 10, "late-1"))
    assert late.status == OrderStatus.ACCEPTED
    server.advance(CLOSE + timedelta(minutes=5))
    after = client.get_order_by_id(late.id)
    assert after.status == OrderStatus.ACCEPTED and not float(after.filled_qty or 0)


# --------------------------------------------------------------------------- orders


def test_repeated_client_order_id_unknown_symbol_and_bad_qty_are_422(server: LocalAlpaca) -> None:
    client = _trading(server)
    client.submit_order(_market("AAPL", 5, "dup"))
    with pytest.raises(APIError) as err:
        client.submit_order(_market("AAPL", 5, "dup"))
    assert err.value.status_code == 422
    assert err.value.message == "client_order_id must be unique"
    with pytest.raises(APIError) as err:
        client.submit_order(_market("NOPE", 5, "n1"))
    assert err.value.status_code == 422
    with pytest.raises(APIError) as err:
        client.submit_order(
            MarketOrderRequest(symbol="AAPL", qty=1.5, side="buy", time_in_force="day")
        )
    assert err.value.status_code == 422 and "whole" in err.value.message
    assert [o["client_order_id"] for o in server.orders()] == ["dup"]


def test_apply_then_fail_and_alpaca_py_retry_leave_exactly_one_order(server: LocalAlpaca) -> None:
    client = _trading(server)
    server.faults.append(Fault("apply_then_fail", 504, method="POST", path="/v2/orders"))
    # alpaca-py retries a 504 (after 3 s); the retry meets the order the first try placed.
    with pytest.raises(APIError) as err:
        client.submit_order(_market("AAPL", 7, "once"))
    assert err.value.status_code == 422
    assert err.value.message == "client_order_id must be unique"
    assert [r["client_order_id"] for r in server.orders_received] == ["once", "once"]
    assert [o["client_order_id"] for o in server.orders()] == ["once"]
    assert client.get_order_by_client_id("once").qty == "7"
    # The connection dropped after the order was placed: alpaca-py does not retry that.
    server.faults.append(Fault("apply_then_fail", 0, method="POST", path="/v2/orders"))
    with pytest.raises(requests.exceptions.RequestException):
        client.submit_order(_market("MSFT", 3, "dropped"))
    assert client.get_order_by_client_id("dropped").status == OrderStatus.NEW


def test_cancel_cancel_all_and_close_all(server: LocalAlpaca) -> None:
    client = _trading(server)

    def limit(symbol: str) -> Any:
        req = LimitOrderRequest(
            symbol=symbol, qty=10, side="buy", time_in_force="day", limit_price=1.0
        )
        return client.submit_order(req)

    one = limit("AAPL")
    client.cancel_order_by_id(one.id)
    assert client.get_order_by_id(one.id).status == OrderStatus.CANCELED
    with pytest.raises(APIError) as err:
        client.cancel_order_by_id(one.id)
    assert err.value.status_code == 422
    two, three = limit("MSFT"), limit("SPY")
    responses = client.cancel_orders()
    assert sorted(str(r.id) for r in responses) == sorted([str(two.id), str(three.id)])
    assert {r.status for r in responses} == {200}
    assert client.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN)) == []
    closed = client.get_orders(GetOrdersRequest(status=QueryOrderStatus.CLOSED))
    assert len(closed) == 3
    client.submit_order(_market("AAPL", 20, "b1"))
    client.submit_order(_market("MSFT", 15, "b2", OrderSide.SELL))
    server.advance(OPEN + timedelta(minutes=15))
    assert server.positions() == {"AAPL": 20, "MSFT": -15}
    assert int(client.get_open_position("MSFT").qty) == -15
    closing = client.close_all_positions(cancel_orders=True)
    assert sorted(r.symbol for r in closing) == ["AAPL", "MSFT"]
    sides = {o.symbol: o.side for o in client.get_orders(GetOrdersRequest(status="open"))}
    assert sides == {"AAPL": OrderSide.SELL, "MSFT": OrderSide.BUY}
    server.advance(OPEN + timedelta(minutes=30))
    assert server.positions() == {} and client.get_all_positions() == []
    with pytest.raises(APIError) as err:
        client.get_open_position("AAPL")
    assert err.value.status_code == 404
    with pytest.raises(APIError) as err:
        client.close_position("AAPL")
    assert err.value.status_code == 404


def test_orders_listing_filters(server: LocalAlpaca) -> None:
    client = _trading(server)
    for i, s in enumerate(["AAPL", "MSFT", "AAPL"]):
        client.submit_order(_market(s, 1, f"l{i}"))
        server.advance(server.now() + timedelta(minutes=1))
    got = client.get_orders(GetOrdersRequest(status="all", symbols=["AAPL"], direction="asc"))
    assert [o.client_order_id for o in got] == ["l0", "l2"]
    got = client.get_orders(GetOrdersRequest(status="all", limit=2))
    assert [o.client_order_id for o in got] == ["l2", "l1"]
    got = client.get_orders(GetOrdersRequest(status="all", after=OPEN + timedelta(seconds=30)))
    assert {o.client_order_id for o in got} == {"l1", "l2"}


# --------------------------------------------------------------------------- clock, data


def test_clock_and_calendar_follow_the_replay_and_the_exchange(server: LocalAlpaca) -> None:
    client = _trading(server)
    clock = client.get_clock()
    assert clock.timestamp == OPEN and clock.is_open
    assert clock.next_close == CLOSE
    # Monday 2019-02-18 was Presidents' Day.
    assert clock.next_open == datetime(2019, 2, 19, 14, 30, tzinfo=UTC)
    server.advance(CLOSE)
    clock = client.get_clock()
    assert clock.timestamp == CLOSE and not clock.is_open
    days = client.get_calendar(GetCalendarRequest(start=date(2019, 11, 26), end=date(2019, 12, 2)))
    assert [d.date for d in days] == [
        date(2019, 11, 26),
        date(2019, 11, 27),
        date(2019, 11, 29),
        date(2019, 12, 2),
    ]
    assert days[2].close == datetime(2019, 11, 29, 13, 0)  # the early close, New York time
    assert days[0].open == datetime(2019, 11, 26, 9, 30)


def test_data_rest_serves_closed_bars_only(server: LocalAlpaca, minute_bars: pl.DataFrame) -> None:
    data = StockHistoricalDataClient(KEY, SECRET, url_override=server.url)

    def fetch(tf: TimeFrame) -> list[Any]:
        req = StockBarsRequest(
            symbol_or_symbols="AAPL", timeframe=tf, start=OPEN - timedelta(hours=1), end=CLOSE
        )
        return data.get_stock_bars(req).data.get("AAPL", [])

    assert fetch(TimeFrame.Minute) == []
    server.advance(OPEN + timedelta(minutes=10, seconds=30))
    got = fetch(TimeFrame.Minute)
    assert [b.timestamp for b in got] == [OPEN + timedelta(minutes=i) for i in range(10)]
    want = minute_bars.filter(pl.col("symbol") == "AAPL").sort("ts").head(10)
    assert [b.close for b in got] == want["close"].to_list()
    quarter = TimeFrame(15, TimeFrameUnit.Minute)
    assert fetch(quarter) == []
    server.advance(OPEN + timedelta(minutes=44, seconds=59))
    got = fetch(quarter)
    assert [b.timestamp for b in got] == [OPEN, OPEN + timedelta(minutes=15)]
    assert got[0].volume == want["volume"].sum() + sum(
        minute_bars.filter(pl.col("symbol") == "AAPL", pl.col("ts") >= OPEN + timedelta(minutes=10))
        .sort("ts")
        .head(5)["volume"]
    )


def test_history_is_served_beside_the_replay(minute_bars: pl.DataFrame) -> None:
    history = sample_minute_bars(date(2019, 2, 14))
    with LocalAlpaca(minute_bars, history=history) as srv:
        data = StockHistoricalDataClient(KEY, SECRET, url_override=srv.url)
        srv.advance(OPEN + timedelta(minutes=2))
        req = StockBarsRequest(
            symbol_or_symbols="SPY",
            timeframe=TimeFrame.Minute,
            start=datetime(2019, 2, 14, tzinfo=UTC),
        )
        got = data.get_stock_bars(req).data["SPY"]
    old = history.filter(pl.col("symbol") == "SPY").height
    assert len(got) == old + 2
    assert got[-1].timestamp == OPEN + timedelta(minutes=1)


# --------------------------------------------------------------------------- REST faults


def test_rest_faults_are_seen_by_real_clients(server: LocalAlpaca) -> None:
    client = _trading(server)
    for status in (500, 502, 503):
        server.faults.append(Fault("status", status, path="/v2/account"))
        with pytest.raises(APIError) as err:
            client.get_account()
        assert err.value.status_code == status
    # Faults match by method and path: this one waits for the account.
    server.faults.append(Fault("drop", method="GET", path="/v2/account"))
    assert client.get_clock().is_open
    with pytest.raises(requests.exceptions.RequestException):
        client.get_account()
    headers = {"APCA-API-KEY-ID": KEY, "APCA-API-SECRET-KEY": SECRET}
    server.faults.append(Fault("hang", seconds=1.0, path="/v2/clock"))
    with pytest.raises(requests.exceptions.Timeout):
        requests.get(f"{server.url}/v2/clock", headers=headers, timeout=0.3)
    server.faults.append(Fault("hang", seconds=0.5, method="GET", path="/v2/clock"))
    t0 = time.monotonic()
    assert client.get_clock().is_open
    assert time.monotonic() - t0 >= 0.5
    # 429 with Retry-After: alpaca-py waits (its own 3 s) and retries.
    server.faults.append(Fault("status", 429, headers={"Retry-After": "1"}, path="/v2/account"))
    assert client.get_account().status == "ACTIVE"
    assert [r["path"] for r in server.requests[-2:]] == ["/v2/account", "/v2/account"]
    bad = TradingClient(KEY, "wrong", url_override=server.url)
    with pytest.raises(APIError) as err:
        bad.get_account()
    assert err.value.status_code == 403
    answer = requests.get(f"{server.url}/v2/account", timeout=5)
    assert answer.status_code == 401 and answer.json()["code"] == 40110000


def test_rate_limit_answers_429_with_retry_after(minute_bars: pl.DataFrame) -> None:
    headers = {"APCA-API-KEY-ID": KEY, "APCA-API-SECRET-KEY": SECRET}
    with LocalAlpaca(minute_bars, rate_limit_per_min=3) as srv:
        codes = [requests.get(f"{srv.url}/v2/clock", headers=headers, timeout=5) for _ in range(7)]
    assert [a.status_code for a in codes[:3]] == [200, 200, 200]
    # Per wall-clock minute: a minute may turn between two requests, never twice in 7.
    limited = [a for a in codes if a.status_code == 429]
    assert limited and 1 <= int(limited[0].headers["Retry-After"]) <= 60
    assert limited[0].json() == {"code": 42910000, "message": "rate limit exceeded"}


# --------------------------------------------------------------------------- streams


def test_data_stream_bars_updates_and_faults(
    server: LocalAlpaca, minute_bars: pl.DataFrame
) -> None:
    got: list[Any] = []
    updated: list[Any] = []

    async def on_bar(bar: Any) -> None:
        got.append(bar)

    async def on_update(bar: Any) -> None:
        updated.append(bar)

    stream = StockDataStream(KEY, SECRET, url_override=server.data_stream_url("iex"))
    stream.subscribe_bars(on_bar, "AAPL", "MSFT")
    stream.subscribe_updated_bars(on_update, "AAPL")
    with StreamThread(stream, server.drop_data_socket):
        _wait(
            lambda: server.subscriptions() == [{"bars": ["AAPL", "MSFT"], "updatedBars": ["AAPL"]}]
        )
        server.advance(OPEN + timedelta(minutes=3))
        _wait(lambda: len(got) == 6)
        rows = minute_bars.filter(
            pl.col("symbol").is_in(["AAPL", "MSFT"]), pl.col("ts") < OPEN + timedelta(minutes=3)
        )
        want = {
            (r["symbol"], r["ts"], r["open"], r["close"], r["volume"])
            for r in rows.iter_rows(named=True)
        }
        assert {(b.symbol, b.timestamp, b.open, b.close, b.volume) for b in got} == want
        assert OPEN + timedelta(minutes=3) in server.bar_sent_ns

        server.update_bar("AAPL", OPEN, close=171.0, volume=1_000_000)
        _wait(lambda: len(updated) == 1)
        assert (updated[0].timestamp, updated[0].close, updated[0].volume) == (OPEN, 171.0, 1e6)

        # A late bar comes after a later one; a duplicate twice.
        got.clear()
        server.late_bar("AAPL", OPEN + timedelta(minutes=3), minutes=1)
        server.duplicate_bar("MSFT", OPEN + timedelta(minutes=4))
        server.advance(OPEN + timedelta(minutes=5))
        _wait(lambda: len(got) == 5)
        order = [(b.symbol, b.timestamp - OPEN) for b in got]
        aapl = [t for s, t in order if s == "AAPL"]
        assert aapl == [timedelta(minutes=4), timedelta(minutes=3)]
        assert [t for s, t in order if s == "MSFT"].count(timedelta(minutes=4)) == 2

        # A stall: the socket stays open, the bars due meanwhile never come.
        got.clear()
        server.stall_data(replay_seconds=120)
        server.advance(OPEN + timedelta(minutes=8))
        _wait(lambda: len(got) == 2)
        assert {b.timestamp for b in got} == {OPEN + timedelta(minutes=7)}
        missed = {t for s, t in server.bars_missed if s == "AAPL"}
        assert missed == {OPEN + timedelta(minutes=5), OPEN + timedelta(minutes=6)}

        # A dropped socket: alpaca-py reconnects, resubscribes and gets the later bars.
        got.clear()
        before = server.data_connections
        server.drop_data_socket()
        _wait(lambda: server.data_connections > before and len(server.subscriptions()) == 1)
        server.advance(OPEN + timedelta(minutes=9))
        _wait(lambda: len(got) == 2)

        # A second connection with the same key is refused (406); a wrong secret gets 402.
        for secret, code in ((SECRET, 406), ("wrong", 402)):
            other = StockDataStream(KEY, secret, url_override=server.data_stream_url("sip"))
            other.subscribe_bars(on_bar, "SPY")
            with StreamThread(other, lambda: None):
                _wait(lambda code=code: any(e["code"] == code for e in server.stream_errors))


def test_trade_stream_new_fill_canceled_and_stall(server: LocalAlpaca) -> None:
    updates: list[Any] = []

    async def on_update(update: Any) -> None:
        updates.append(update)

    stream = TradingStream(KEY, SECRET, paper=True, url_override=server.trade_stream_url)
    stream.subscribe_trade_updates(on_update)
    client = _trading(server)
    with StreamThread(stream, server.drop_trade_socket):
        _wait(lambda: server.trade_listeners() == 1)
        client.submit_order(_market("AAPL", 10, "t1"))
        far = LimitOrderRequest(
            symbol="MSFT",
            qty=5,
            side="buy",
            time_in_force="day",
            limit_price=1.0,
            client_order_id="t2",
        )
        limit = client.submit_order(far)
        server.advance(OPEN + timedelta(minutes=15))
        client.cancel_order_by_id(limit.id)
        _wait(lambda: len(updates) == 4)
        events = [(u.event, u.order.client_order_id) for u in updates]
        assert events == [("new", "t1"), ("new", "t2"), ("fill", "t1"), ("canceled", "t2")]
        fill = updates[2]
        f = server.fills()[0]
        assert fill.execution_id is not None and fill.price == float(f.price)
        assert fill.qty == 10 and fill.position_qty == 10
        assert fill.timestamp == OPEN + timedelta(minutes=15)
        assert fill.order.status == OrderStatus.FILLED

        # Stalled: nothing arrives; REST still knows.
        server.stall_trades(wall_seconds=60)
        client.submit_order(_market("AAPL", 1, "t3"))
        time.sleep(0.3)
        assert len(updates) == 4 and len(server.trade_updates_withheld) == 1
        assert client.get_order_by_client_id("t3").status == OrderStatus.NEW


def test_replay_plays_at_a_speed_and_pauses(minute_bars: pl.DataFrame) -> None:
    with LocalAlpaca(minute_bars) as srv:
        srv.play(600.0, until=OPEN + timedelta(minutes=5))  # 10 replay minutes a wall second
        _wait(lambda: srv.done, seconds=10)
        assert srv.now() == OPEN + timedelta(minutes=5)
        assert sorted(srv.bar_sent_ns)[-1] == OPEN + timedelta(minutes=5)
        stamps = [srv.bar_sent_ns[OPEN + timedelta(minutes=i)] for i in range(1, 6)]
        gaps = [(b - a) / 1e9 for a, b in pairwise(stamps)]
        assert all(math.isclose(g, 0.1, abs_tol=0.05) for g in gaps)
        srv.play(60.0)
        time.sleep(0.2)
        srv.pause()
        paused = srv.now()
        time.sleep(0.2)
        assert srv.now() == paused and paused > OPEN + timedelta(minutes=5)


def test_position_rules_at_submission_are_alpacas(server: LocalAlpaca) -> None:
    """Alpaca answers 403 (40310000) to an order through zero, to selling shares already
    committed, and to an order while one on the other side is open; ``qty_available`` is the
    position less what open orders commit."""
    client = _trading(server)
    client.submit_order(_market("AAPL", 100, "long-1"))
    server.advance(OPEN + timedelta(minutes=15))
    assert server.positions() == {"AAPL": 100}

    def refused(qty: int, cid: str, side: OrderSide) -> str:
        with pytest.raises(APIError) as err:
            client.submit_order(_market("AAPL", qty, cid, side))
        assert err.value.status_code == 403 and '"code":40310000' in str(err.value).replace(" ", "")
        return str(err.value)

    assert "insufficient qty available" in refused(150, "flip-1", OrderSide.SELL)
    client.submit_order(_market("AAPL", 60, "cut-1", OrderSide.SELL))
    (position,) = client.get_all_positions()
    assert int(position.qty) == 100 and int(position.qty_available) == 40
    assert "available: 40" in refused(50, "cut-2", OrderSide.SELL)
    assert "while a sell order is open" in refused(10, "add-1", OrderSide.BUY)
    client.submit_order(_market("AAPL", 40, "cut-3", OrderSide.SELL))  # exactly what is left
