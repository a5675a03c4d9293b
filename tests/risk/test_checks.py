"""Pre-trade checks: each rule refuses with its name and numbers, and the same order passes once
the limit is raised; exposure cuts pass the caps but not the market rules; REDUCING lets only
cuts through and HALTED nothing; orders project cumulatively onto positions and working orders;
trading hours follow the exchange calendar (early closes, holidays, daylight saving)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from pipelines.execution.orders import Order, Side
from pipelines.risk.checks import RULES, Book, MarketView, RiskConfig, check_orders, market_open
from pipelines.risk.events import RiskEvent, TradingState

pytestmark = pytest.mark.unit

NOW = datetime(2021, 3, 3, 15, 0, tzinfo=UTC)  # a Wednesday, 10:00 in New York
OFF = RiskConfig(
    max_order_notional=None,
    max_position=None,
    max_gross=None,
    max_net=None,
    max_orders_per_minute=None,
    price_band=None,
    trading_hours=False,
    min_bar_volume=0.0,
)
"""Every check off: a case turns on the one it tests."""


def order(symbol: str, side: Side, quantity: int, **kw: Any) -> Order:
    return Order.create("test", symbol, NOW, f"{side}{quantity}", side, quantity, **kw)


@dataclass
class Case:
    """One order against one book and market; ``run`` checks it with ``config``."""

    orders: list[Order]
    positions: dict[str, int] = field(default_factory=dict)
    working: dict[str, int] = field(default_factory=dict)
    prices: dict[str, float] = field(default_factory=lambda: {"AAA": 100.0, "BBB": 100.0})
    last: dict[str, float] | None = None
    volumes: dict[str, float] = field(default_factory=lambda: {"AAA": 1e4, "BBB": 1e4})
    equity: float = 1_000_000.0
    buying_power: float = 1_000_000.0
    shortable: frozenset[str] | None = None
    recent: tuple[datetime, ...] = ()
    now: datetime = NOW

    def run(
        self, config: RiskConfig, state: TradingState = TradingState.ACTIVE
    ) -> tuple[list[Order], list[RiskEvent], tuple[datetime, ...]]:
        market = MarketView(
            self.now, self.prices, self.prices if self.last is None else self.last, self.volumes
        )
        book = Book(
            self.equity, self.buying_power, self.positions, self.working, shortable=self.shortable
        )
        return check_orders(
            self.orders, config=config, state=state, market=market, book=book, recent=self.recent
        )


def refusal(case: Case, config: RiskConfig, state: TradingState = TradingState.ACTIVE) -> RiskEvent:
    accepted, events, _ = case.run(config, state)
    assert accepted == [] and len(events) == 1, (accepted, events)
    return events[0]


def passes(case: Case, config: RiskConfig, state: TradingState = TradingState.ACTIVE) -> None:
    accepted, events, _ = case.run(config, state)
    assert events == [] and accepted == case.orders


BUY_500 = [order("AAA", "buy", 500)]  # 50,000 USD, 5% of equity
SINCE = tuple(NOW - timedelta(seconds=s) for s in (5, 20, 59))

# rule, the case, the refusing and the passing limit, the figures the refusal must carry
CASES: list[tuple[str, Case, dict[str, Any], dict[str, Any], Mapping[str, float]]] = [
    (
        "max_order_notional",
        Case(BUY_500),
        {"max_order_notional": 49_999.0},
        {"max_order_notional": 50_000.0},
        {"notional": 50_000.0, "limit": 49_999.0},
    ),
    (
        "max_position",
        Case(BUY_500, positions={"AAA": 500}),
        {"max_position": 0.099},
        {"max_position": 0.10},
        {"exposure": 100_000.0, "fraction": 0.10, "limit": 0.099},
    ),
    (
        "max_gross",
        Case(BUY_500, positions={"BBB": -1_000}),
        {"max_gross": 0.149},
        {"max_gross": 0.15},
        {"exposure": 150_000.0, "fraction": 0.15, "equity": 1_000_000.0},
    ),
    (
        "max_net",
        Case(BUY_500, positions={"BBB": 1_000}),
        {"max_net": 0.149},
        {"max_net": 0.15},
        {"exposure": 150_000.0, "fraction": 0.15},
    ),
    (
        "buying_power",
        Case(BUY_500),
        {"case.buying_power": 49_999.0},
        {"case.buying_power": 50_000.0},
        {"added": 50_000.0, "limit": 49_999.0},
    ),
    (
        "max_orders_per_minute",
        Case(BUY_500, recent=(NOW - timedelta(seconds=61), *SINCE)),
        {"max_orders_per_minute": 3},
        {"max_orders_per_minute": 4},
        {"orders": 3.0, "limit": 3.0},
    ),
    (
        "price_band",
        Case(BUY_500, last={"AAA": 90.0}),
        {"price_band": 0.11},
        {"price_band": 0.12},
        {"last_price": 90.0, "deviation": 100 / 90 - 1, "limit": 0.11},
    ),
    (
        "trading_hours",
        Case(BUY_500, now=datetime(2021, 3, 3, 14, 29, tzinfo=UTC)),  # 09:29 New York
        {"trading_hours": True},
        {"trading_hours": False},
        {},
    ),
    ("restricted", Case(BUY_500), {"restricted": frozenset({"AAA"})}, {"restricted": {"BBB"}}, {}),
    (
        "no_volume",
        Case(BUY_500, volumes={"AAA": 0.0}),
        {"min_bar_volume": 1.0},
        {"min_bar_volume": 0.0},
        {"volume": 0.0, "limit": 1.0},
    ),
    (
        "short_sale",
        Case([order("AAA", "sell", 500)], positions={"AAA": 200}),
        {"allow_short": False},
        {"allow_short": True},
        {"before": 200.0, "after": -300.0},
    ),
    (
        "short_sale",
        Case([order("AAA", "sell", 500)]),
        {"case.shortable": frozenset({"BBB"})},
        {"case.shortable": frozenset({"AAA"})},
        {"after": -500.0},
    ),
]


@pytest.mark.parametrize(
    ("rule", "case", "refusing", "passing", "figures"),
    CASES,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)],
)
def test_each_check_refuses_with_its_numbers_and_passes_when_raised(
    rule: str,
    case: Case,
    refusing: dict[str, Any],
    passing: dict[str, Any],
    figures: Mapping[str, float],
) -> None:
    def apply(changes: dict[str, Any]) -> tuple[Case, RiskConfig]:
        on_case = {k.removeprefix("case."): v for k, v in changes.items() if k.startswith("case.")}
        on_config = {k: v for k, v in changes.items() if not k.startswith("case.")}
        return replace(case, **on_case), replace(OFF, **on_config)

    event = refusal(*apply(refusing))
    o = case.orders[0]
    assert event.kind == "refused" and event.rule == rule
    assert event.symbol == o.symbol and event.client_order_id == o.client_order_id
    assert event.ts == case.now
    assert event.values["quantity"] == o.signed_quantity and event.values["price"] == 100.0
    for key, value in figures.items():
        assert event.values[key] == pytest.approx(value), key
    assert event.detail.startswith(f"{o.side} {o.quantity} {o.symbol}: ")
    passes(*apply(passing))


def test_the_refusal_names_the_figures_in_its_detail() -> None:
    event = refusal(Case(BUY_500, positions={"BBB": -1_000}), replace(OFF, max_gross=0.149))
    assert event.detail == (
        "buy 500 AAA: gross exposure would be 150,000.00 USD, 15.00% of equity 1,000,000.00 USD "
        "(limit 14.90%)"
    )


def test_rules_are_checked_in_the_documented_order() -> None:
    """An order that breaks every rule is refused by the first one; turning that one off
    exposes the next, down the whole list."""
    saturday = datetime(2021, 3, 6, 15, tzinfo=UTC)
    case = Case(
        [order("AAA", "sell", 500)],
        positions={"AAA": 100, "BBB": 10_000},
        prices={"AAA": 100.0, "BBB": 100.0},
        last={"AAA": 50.0, "BBB": 100.0},
        volumes={"AAA": 0.0},
        buying_power=0.0,
        recent=(saturday - timedelta(seconds=1),) * 3,
        now=saturday,
    )
    config = RiskConfig(
        max_order_notional=1.0,
        max_position=0.001,
        max_gross=0.5,
        max_net=0.5,
        max_orders_per_minute=3,
        price_band=0.1,
        trading_hours=True,
        restricted=frozenset({"AAA"}),
        allow_short=False,
        min_bar_volume=1.0,
    )
    lifts: dict[str, tuple[str, Any]] = {
        "trading_hours": ("trading_hours", False),
        "restricted": ("restricted", frozenset()),
        "no_volume": ("min_bar_volume", 0.0),
        "price_band": ("price_band", None),
        "max_order_notional": ("max_order_notional", None),
        "short_sale": ("allow_short", True),
        "max_position": ("max_position", None),
        "max_gross": ("max_gross", None),
        "max_net": ("max_net", None),
        "buying_power": ("", None),
        "max_orders_per_minute": ("max_orders_per_minute", None),
    }
    seen = [refusal(case, config, TradingState.HALTED).rule]
    for rule, (name, value) in lifts.items():
        got = refusal(case, config).rule
        seen.append(got)
        assert got == rule
        if name:
            config = replace(config, **{name: value})
        else:
            case = replace(case, buying_power=1e9)
    passes(case, config)
    assert seen == [r for r in RULES if r != "reducing"]


CAPS_SHUT = RiskConfig(
    max_order_notional=1.0,
    max_position=0.01,
    max_gross=0.01,
    max_net=0.01,
    max_orders_per_minute=None,
    price_band=None,
    trading_hours=False,
    restricted=frozenset({"AAA", "BBB"}),
    allow_short=False,
    min_bar_volume=0.0,
)


@pytest.mark.parametrize(
    ("positions", "side", "quantity"),
    [({"AAA": 5_000}, "sell", 1_000), ({"AAA": 5_000}, "sell", 5_000), ({"AAA": -800}, "buy", 300)],
    ids=["partial_sell", "close_long", "cover_short"],
)
def test_exposure_cuts_pass_every_cap(positions: dict[str, int], side: Side, quantity: int) -> None:
    """A position far above every cap, in a restricted symbol, with shorting off and no buying
    power, can still be cut or closed: a position is never trapped."""
    case = Case([order("AAA", side, quantity)], positions=positions, buying_power=0.0)
    passes(case, CAPS_SHUT)
    passes(case, CAPS_SHUT, TradingState.REDUCING)
    # The same order in the other direction adds exposure and is refused.
    other: Side = "buy" if side == "sell" else "sell"
    assert refusal(replace(case, orders=[order("AAA", other, quantity)]), CAPS_SHUT).rule in RULES


def test_a_flip_is_not_a_cut() -> None:
    case = Case([order("AAA", "sell", 600)], positions={"AAA": 500})
    assert refusal(case, replace(OFF, allow_short=False)).rule == "short_sale"
    event = refusal(case, OFF, TradingState.REDUCING)
    assert event.rule == "reducing"
    assert (event.values["before"], event.values["after"]) == (500.0, -100.0)


@pytest.mark.parametrize(
    ("rule", "case", "config"),
    [
        ("no_volume", Case([], volumes={}), replace(OFF, min_bar_volume=1.0)),
        ("price_band", Case([], last={"AAA": 50.0}), replace(OFF, price_band=0.1)),
        (
            "trading_hours",
            Case([], now=datetime(2021, 3, 3, 21, 1, tzinfo=UTC)),
            replace(OFF, trading_hours=True),
        ),
        ("max_orders_per_minute", Case([], recent=SINCE), replace(OFF, max_orders_per_minute=3)),
    ],
)
def test_exposure_cuts_still_meet_the_market_rules(
    rule: str, case: Case, config: RiskConfig
) -> None:
    case = replace(case, orders=[order("AAA", "sell", 100)], positions={"AAA": 500})
    assert refusal(case, config).rule == rule
    assert refusal(case, config, TradingState.REDUCING).rule == rule


def test_reducing_lets_a_cut_through_and_refuses_an_increase() -> None:
    cut, add = order("AAA", "sell", 200), order("BBB", "buy", 10)
    case = Case([cut, add], positions={"AAA": 500})
    accepted, events, _ = case.run(OFF, TradingState.REDUCING)
    assert accepted == [cut]
    assert [(e.rule, e.symbol) for e in events] == [("reducing", "BBB")]
    assert (events[0].values["before"], events[0].values["after"]) == (0.0, 10.0)
    passes(case, OFF, TradingState.ACTIVE)


def test_halted_refuses_everything_even_a_cut() -> None:
    orders = [order("AAA", "sell", 200), order("BBB", "buy", 10)]
    accepted, events, recent = Case(orders, positions={"AAA": 500}).run(OFF, TradingState.HALTED)
    assert accepted == [] and recent == ()
    assert [e.rule for e in events] == ["halted", "halted"]


def test_orders_project_cumulatively_onto_positions_and_working_orders() -> None:
    """Two buys of 6% each: the second breaks a 10% cap; a working buy counts the same."""
    a, b = order("AAA", "buy", 600), order("AAA", "buy", 600, limit_price=Decimal("100"))
    accepted, events, _ = Case([a, b]).run(replace(OFF, max_position=0.10))
    assert accepted == [a] and [e.rule for e in events] == ["max_position"]
    assert events[0].values["exposure"] == pytest.approx(120_000.0)
    assert refusal(Case([a], working={"AAA": 600}), replace(OFF, max_position=0.10)).rule == (
        "max_position"
    )
    # A working sell that closes the position makes a further sell a new short.
    sell = Case([order("AAA", "sell", 100)], positions={"AAA": 500}, working={"AAA": -500})
    assert refusal(sell, replace(OFF, allow_short=False)).rule == "short_sale"


def test_buying_power_is_spent_across_the_orders_of_a_call() -> None:
    a, b = order("AAA", "buy", 300), order("BBB", "buy", 300)
    accepted, events, _ = Case([a, b], buying_power=50_000.0).run(OFF)
    assert accepted == [a]
    assert events[0].rule == "buying_power" and events[0].values["limit"] == 20_000.0


def test_rate_window_keeps_the_last_minute_and_counts_accepted_orders() -> None:
    old = NOW - timedelta(seconds=60)
    orders = [order("AAA", "buy", 1), order("AAA", "buy", 2), order("AAA", "buy", 3)]
    accepted, events, recent = Case(orders, recent=(old, *SINCE[:1])).run(
        replace(OFF, max_orders_per_minute=3)
    )
    assert accepted == orders[:2] and [e.rule for e in events] == ["max_orders_per_minute"]
    assert recent == (SINCE[0], NOW, NOW)
    accepted, _, recent = Case(orders, recent=recent).run(replace(OFF, max_orders_per_minute=3))
    assert accepted == [] and recent == (SINCE[0], NOW, NOW)
    later = Case(orders, recent=recent, now=NOW + timedelta(minutes=1))
    accepted, _, recent = later.run(replace(OFF, max_orders_per_minute=3))
    assert accepted == orders and recent == (later.now,) * 3


def test_a_limit_price_outside_the_band_is_a_fat_finger() -> None:
    fat = Case([order("AAA", "buy", 10, type="limit", limit_price=Decimal("150"))])
    event = refusal(fat, replace(OFF, price_band=0.10))
    assert event.rule == "price_band" and event.values["order_price"] == 150.0
    passes(fat, replace(OFF, price_band=0.6))


def test_missing_prices_refuse_or_raise() -> None:
    no_last = Case(BUY_500, last={})
    assert refusal(no_last, replace(OFF, price_band=0.1)).rule == "price_band"
    passes(no_last, OFF)  # without a band there is nothing to check the last price for
    assert refusal(Case(BUY_500, prices={}), OFF).rule == "price_band"
    held = Case(BUY_500, positions={"CCC": 100})  # CCC has no price at all
    with pytest.raises(ValueError, match="no valid price for CCC"):
        held.run(OFF)


def test_invalid_inputs_raise() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        Case(BUY_500, now=NOW.replace(tzinfo=None)).run(OFF)
    with pytest.raises(ValueError, match="finite"):
        Case(BUY_500, equity=float("nan")).run(OFF)
    with pytest.raises(ValueError, match="max_gross"):
        RiskConfig(max_gross=0.0)
    with pytest.raises(ValueError, match="max_orders_per_minute"):
        RiskConfig(max_orders_per_minute=0)


def test_no_equity_adds_no_exposure() -> None:
    event = refusal(Case(BUY_500, equity=0.0), replace(OFF, max_position=0.1))
    assert event.rule == "max_position" and "no exposure may be added" in event.detail
    passes(Case([order("AAA", "sell", 100)], positions={"AAA": 500}, equity=-1.0), CAPS_SHUT)


@pytest.mark.parametrize(
    ("when", "is_open"),
    [
        (datetime(2021, 3, 3, 14, 30, tzinfo=UTC), True),  # the open, inclusive (EST)
        (datetime(2021, 3, 3, 21, 0, tzinfo=UTC), True),  # the close, inclusive
        (datetime(2021, 3, 3, 21, 0, 1, tzinfo=UTC), False),
        (datetime(2021, 3, 15, 13, 30, tzinfo=UTC), True),  # 09:30 EDT after the switch
        (datetime(2021, 3, 15, 13, 29, tzinfo=UTC), False),
        (datetime(2019, 11, 29, 18, 0, tzinfo=UTC), True),  # early close, 13:00 New York
        (datetime(2019, 11, 29, 18, 0, 1, tzinfo=UTC), False),
        (datetime(2019, 12, 25, 16, 0, tzinfo=UTC), False),  # Christmas
        (datetime(2021, 3, 6, 16, 0, tzinfo=UTC), False),  # Saturday
        (datetime(2020, 12, 31, 20, 59, tzinfo=UTC), True),  # the last session of 2020 ...
        (datetime(2021, 1, 1, 1, 0, tzinfo=UTC), False),  # ... closed, in UTC's next year
        (datetime(2021, 1, 4, 14, 30, tzinfo=UTC), True),  # the first session of 2021
    ],
)
def test_market_hours_follow_the_exchange_calendar(when: datetime, is_open: bool) -> None:
    assert market_open("XNYS", when) is is_open
    # The session remembered from a call at another time does not answer for this one.
    for primed in (datetime(2020, 12, 31, 15, tzinfo=UTC), datetime(2019, 11, 29, 15, tzinfo=UTC)):
        assert market_open("XNYS", primed)
        assert market_open("XNYS", when) is is_open
