"""The event-driven engine on real bars: causal, deterministic, and its books balance."""

from __future__ import annotations

from decimal import Decimal

import polars as pl
import pytest

from pipelines.backtest.broker import BrokerConfig, CostModel, money
from pipelines.backtest.engine import MovingAverageCross, run_backtest

pytestmark = pytest.mark.unit
CONFIG = BrokerConfig(
    CostModel(slippage_bps=1.0, commission_per_share=Decimal("0.005"), commission_min=Decimal("1")),
    max_leverage=2.0,
)


@pytest.fixture(scope="module")
def bars(sample_bars: pl.DataFrame) -> pl.DataFrame:
    return sample_bars.filter(pl.col("symbol").is_in(["AAPL", "MSFT", "SPY", "JPM"]))


def test_books_balance_to_the_cent(bars: pl.DataFrame) -> None:
    result = run_backtest(bars, MovingAverageCross(), cash=Decimal("1000000"), config=CONFIG)
    ledger = result.ledger
    assert result.trades > 20
    spent = sum((Decimal(f.quantity) * f.price + f.commission for f in ledger.fills), Decimal(0))
    assert ledger.cash == Decimal("1000000") - spent  # exact: no float anywhere in the books
    held: dict[str, int] = {}
    for f in ledger.fills:
        held[f.symbol] = held.get(f.symbol, 0) + f.quantity
    assert {s: q for s, q in held.items() if q} == {s: q for s, q in ledger.positions.items() if q}
    assert result.equity.height == bars["ts"].n_unique()
    # The float equity curve agrees with the exact books marked at the last closes.
    last = bars.sort("ts").group_by("symbol").last()
    closes = {r["symbol"]: money(r["close"]) for r in last.iter_rows(named=True)}
    exact = ledger.equity(closes)
    assert abs(float(exact) - result.equity["equity"][-1]) < 0.01
    assert abs(float(ledger.gross(closes)) - result.equity["gross"][-1]) < 0.01


def test_deterministic_and_causal(bars: pl.DataFrame) -> None:
    a = run_backtest(bars, MovingAverageCross(), cash=Decimal("1000000"), config=CONFIG)
    b = run_backtest(bars, MovingAverageCross(), cash=Decimal("1000000"), config=CONFIG)
    assert a.ledger.fills == b.ledger.fills
    # Removing the future changes nothing before it: decisions at t use bars up to t only.
    cut = bars["ts"].sort()[bars.height // 2]
    c = run_backtest(
        bars.filter(pl.col("ts") <= cut),
        MovingAverageCross(),
        cash=Decimal("1000000"),
        config=CONFIG,
    )
    early = [f for f in a.ledger.fills if f.ts <= cut]
    assert c.ledger.fills == early
    # Every fill happens on a bar after the one its decision was made on.
    assert all(f.ts > f.decided_at for f in a.ledger.fills)


class _NoFillBroker:
    """A hand-written broker behind the engine's Broker protocol: accepts, never fills."""

    def __init__(self, symbols: set[str]) -> None:
        from pipelines.backtest.broker import Ledger

        self.ids = {s: i for i, s in enumerate(sorted(symbols))}
        self.ledger = Ledger(cash=Decimal("1000000"))
        self.orders: list[object] = []

    def submit(self, order: object) -> bool:
        self.orders.append(order)
        return True

    @property
    def working_symbols(self) -> list[str]:
        return sorted({o.symbol for o in self.orders})  # type: ignore[attr-defined]

    def working(self, symbol: str) -> list[tuple[object, int]]:
        return [(o, o.quantity) for o in self.orders if o.symbol == symbol]  # type: ignore[attr-defined]

    def cancel(self, client_order_id: str, ts: object, reason: str) -> bool:
        before = len(self.orders)
        self.orders = [o for o in self.orders if o.client_order_id != client_order_id]  # type: ignore[attr-defined]
        return len(self.orders) < before

    def on_batch(self, batch: object) -> list[object]:
        return []

    def mark(self) -> tuple[float, float, float]:
        return 1_000_000.0, 0.0, 0.0

    def last(self, symbol: str) -> float:
        return 100.0


def test_any_broker_behind_the_protocol(bars: pl.DataFrame) -> None:
    fake = _NoFillBroker(set(bars["symbol"].unique().to_list()))
    result = run_backtest(
        bars,
        MovingAverageCross(),
        cash=Decimal("1"),
        config=CONFIG,
        broker=fake,  # type: ignore[arg-type]
    )
    assert result.ledger is fake.ledger and not result.ledger.fills
    # Nothing fills: an order still working for the wanted size is not sent again, so each
    # symbol has at most one working order, for the strategy's latest target.
    per_symbol = [o.symbol for o in fake.orders]  # type: ignore[attr-defined]
    assert 0 < len(per_symbol) == len(set(per_symbol)) <= bars["symbol"].n_unique()
