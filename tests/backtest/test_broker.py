"""The simulated broker on real bars: fills, costs, exact cash and every refusal recorded."""

from __future__ import annotations

from datetime import timedelta
from decimal import ROUND_HALF_EVEN, Decimal

import polars as pl
import pytest

from pipelines.backtest.broker import Bar, BrokerConfig, CostModel, SimulatedBroker, money
from pipelines.execution.orders import Order, client_order_id

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def bars(sample_bars: pl.DataFrame) -> list[Bar]:
    rows = sample_bars.filter(pl.col("symbol") == "AAPL").head(10).iter_rows(named=True)
    return [
        Bar(r["symbol"], r["ts"], r["open"], r["high"], r["low"], r["close"], r["volume"], 0.002)
        for r in rows
    ]


def _broker(**kw: object) -> SimulatedBroker:
    return SimulatedBroker(Decimal("100000"), {"AAPL", "MSFT"}, BrokerConfig(**kw))  # type: ignore[arg-type]


def test_market_order_fills_at_the_next_open_with_exact_cash(bars: list[Bar]) -> None:
    costs = CostModel(
        slippage_bps=2.0, commission_per_share=Decimal("0.005"), commission_min=Decimal("1.00")
    )
    broker = _broker(costs=costs)
    order = Order.create("t", "AAPL", bars[0].ts, "enter_long", "buy", 100)
    assert broker.submit(order)
    assert broker.on_bar(bars[0]) == []  # not on the bar it was decided on
    (fill,) = broker.on_bar(bars[1])
    expected_price = money(bars[1].open) * (Decimal(1) + Decimal("0.0002"))
    assert fill.price == expected_price and fill.commission == Decimal("1.00")
    assert broker.ledger.cash == Decimal("100000") - 100 * expected_price - Decimal("1.00")
    assert broker.ledger.positions == {"AAPL": 100}


def test_the_same_decision_is_one_order(bars: list[Bar]) -> None:
    broker = _broker()
    a = Order.create("t", "AAPL", bars[0].ts, "enter_long", "buy", 10)
    b = Order.create("t", "AAPL", bars[0].ts, "enter_long", "buy", 10)
    assert (
        a.client_order_id
        == b.client_order_id
        == client_order_id("t", "AAPL", bars[0].ts, "enter_long")
    )
    assert broker.submit(a) and not broker.submit(b)
    broker.on_bar(bars[1])
    assert broker.ledger.positions["AAPL"] == 10


def test_limit_and_stop_orders(bars: list[Bar]) -> None:
    broker = _broker()
    low_limit = money(bars[1].low) - Decimal("5")
    never = Order.create("t", "AAPL", bars[0].ts, "cheap", "buy", 1, "limit", limit_price=low_limit)
    touch = Order.create(
        "t", "AAPL", bars[0].ts, "dip", "buy", 1, "limit", limit_price=money(bars[1].low)
    )
    broker.submit(never)
    broker.submit(touch)
    fills = broker.on_bar(bars[1])
    assert [f.client_order_id for f in fills] == [touch.client_order_id]
    assert fills[0].price == min(money(bars[1].open), money(bars[1].low))
    assert never.client_order_id in broker.open_orders
    stop = Order.create(
        "t",
        "AAPL",
        bars[1].ts,
        "stop",
        "sell",
        1,
        "stop",
        stop_price=money(bars[2].low) - Decimal("100"),
    )
    broker.submit(stop)
    assert broker.on_bar(bars[2]) == []  # the stop is not reached


def test_participation_cap_carries_the_rest_over(bars: list[Bar]) -> None:
    broker = _broker(participation=0.0001)
    cap = int(0.0001 * bars[1].volume)
    order = Order.create("t", "AAPL", bars[0].ts, "big", "buy", cap + 5)
    broker.submit(order)
    (first,) = broker.on_bar(bars[1])
    assert first.quantity == cap
    assert broker.ledger.events[-1].reason.startswith(f"partial fill {cap} of {cap + 5}")
    (second,) = broker.on_bar(bars[2])
    assert second.quantity == 5 and order.client_order_id not in broker.open_orders


def test_refusals_are_recorded_with_their_reason(bars: list[Bar]) -> None:
    broker = _broker(participation=0.1)
    ts = bars[0].ts
    assert not broker.submit(Order.create("t", "ZZZZ", ts, "x", "buy", 1))
    assert not broker.submit(Order.create("t", "AAPL", ts, "zero", "buy", 0))
    assert not broker.submit(Order.create("t", "AAPL", ts, "neg", "sell", -3))
    broker.submit(Order.create("t", "AAPL", ts, "rich", "buy", 10_000))  # ~ 1.4M USD of AAPL
    zero_volume = Bar(
        "AAPL", bars[1].ts, bars[1].open, bars[1].high, bars[1].low, bars[1].close, 0.0
    )
    broker.on_bar(zero_volume)
    nan_bar = Bar(
        "AAPL", bars[2].ts, float("nan"), bars[2].high, bars[2].low, bars[2].close, bars[2].volume
    )
    broker.on_bar(nan_bar)
    broker.on_bar(bars[3])
    reasons = [e.reason for e in broker.ledger.events]
    assert reasons[0] == "unknown symbol ZZZZ"
    assert "must be a positive number of shares" in reasons[1]
    assert "must be a positive number of shares" in reasons[2]
    assert "zero volume under the participation cap" in reasons[3]
    assert "missing or invalid price" in reasons[4]
    assert reasons[5].startswith("insufficient buying power")
    assert broker.ledger.positions == {} and broker.ledger.cash == Decimal("100000")


def test_impact_grows_with_size(bars: list[Bar]) -> None:
    costs = CostModel(impact_k=1.0)
    small, large = _broker(costs=costs), _broker(costs=costs, max_leverage=50.0)
    for broker, qty in ((small, 10), (large, 5000)):
        broker.submit(Order.create("t", "AAPL", bars[0].ts, "x", "buy", qty))
        broker.on_bar(bars[1])
    per_share_small = small.ledger.fills[0].slippage / 10
    per_share_large = large.ledger.fills[0].slippage / 5000
    assert per_share_large > per_share_small > 0
    assert bars[1].ts - bars[0].ts == timedelta(minutes=15)


def test_short_pays_borrow_over_calendar_time_and_a_long_pays_none(
    sample_bars: pl.DataFrame,
) -> None:
    aapl = sample_bars.filter(pl.col("symbol") == "AAPL")
    # The last bar of a Friday and the first bar after it: a weekend in between.
    fridays = aapl.filter(pl.col("ts").dt.weekday() == 5)
    friday = fridays.filter(pl.col("ts").dt.date() == fridays["ts"].dt.date().min())["ts"].max()
    after = aapl.filter(pl.col("ts") > friday).head(1)
    rows = pl.concat([aapl.filter(pl.col("ts") <= friday).tail(2), after]).iter_rows(named=True)
    week = [
        Bar(r["symbol"], r["ts"], r["open"], r["high"], r["low"], r["close"], 1e6) for r in rows
    ]
    broker = _broker(costs=CostModel(borrow_bps=36.0), max_leverage=2.0)
    broker.submit(Order.create("t", "AAPL", week[0].ts, "short", "sell", 100))
    broker.on_bar(week[0])
    broker.on_bar(week[1])  # the short fills at this open; nothing is owed yet
    assert broker.ledger.charges == []
    cash = broker.ledger.cash
    broker.on_bar(week[2])
    (charge,) = broker.ledger.charges
    seconds = Decimal((week[2].ts - week[1].ts).total_seconds())
    assert seconds > 2 * 86400  # the weekend counts
    expected = 100 * money(week[1].close) * Decimal("0.0036") * seconds / Decimal(360 * 86400)
    booked = expected.quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)
    assert charge.kind == "borrow" and charge.amount == booked == Decimal("0.41")
    assert broker.ledger.cash == cash - booked  # booked to the cent
    longs = _broker(costs=CostModel(borrow_bps=36.0))
    longs.submit(Order.create("t", "AAPL", week[0].ts, "long", "buy", 100))
    for bar in week:
        longs.on_bar(bar)
    assert longs.ledger.charges == []


def test_the_participation_cap_is_the_symbols_per_bar(bars: list[Bar]) -> None:
    """Two orders of one symbol share the bar's cap: together they fill at most the cap."""
    broker = _broker(participation=0.0001, max_leverage=10.0)
    cap = int(0.0001 * bars[1].volume)
    a = Order.create("t", "AAPL", bars[0].ts, "a", "buy", cap)
    b = Order.create("t", "AAPL", bars[0].ts, "b", "buy", cap)
    broker.submit(a)
    broker.submit(b)
    fills = broker.on_bar(bars[1])
    assert sum(f.quantity for f in fills) == cap
    assert broker.ledger.events[-1].reason == "the bar's participation cap is used up"
    assert broker.cancel(b.client_order_id, bars[1].ts, "replaced")
    assert not broker.cancel(b.client_order_id, bars[1].ts, "again")  # nothing left to cancel
    assert broker.ledger.events[-1].kind == "canceled"
    assert broker.on_bar(bars[2]) == []  # the cancelled order never fills


def test_borrow_slivers_add_up_to_whole_cents(bars: list[Bar]) -> None:
    """A small short owes less than half a cent a bar: rounding each bar's fee would book
    nothing, ever; the exact running total is booked in whole cents instead."""
    from datetime import timedelta

    broker = _broker(costs=CostModel(borrow_bps=30.0), max_leverage=2.0)
    first = bars[0]
    broker.submit(Order.create("t", first.symbol, first.ts, "short", "sell", 10))
    broker.on_bar(first)
    steps = [first._replace(ts=first.ts + timedelta(minutes=15 * k)) for k in range(1, 400)]
    for bar in steps:
        broker.on_bar(bar)
    charges = broker.ledger.charges
    exact = (
        10
        * money(first.close)
        * Decimal("0.003")
        * Decimal((steps[-1].ts - steps[0].ts).total_seconds())
        / Decimal(360 * 86400)
    )
    per_bar = 10 * first.close * 0.003 * 900 / (360 * 86400)
    assert per_bar < 0.005  # each bar's fee alone would round to nothing
    total = sum((c.amount for c in charges), Decimal(0))
    assert charges and all(c.amount == c.amount.quantize(Decimal("0.01")) for c in charges)
    assert abs(total - exact) <= Decimal("0.005")
