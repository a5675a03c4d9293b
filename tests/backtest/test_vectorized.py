"""The vectorized fast path equals the event-driven engine: same trades, same PnL."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import polars as pl
import pytest

from pipelines.backtest.broker import BrokerConfig, CostModel
from pipelines.backtest.engine import MovingAverageCross, run_backtest
from pipelines.backtest.vectorized import (
    VectorizedResult,
    ma_cross_targets,
    ma_cross_vectorized,
    simulate_targets,
)

pytestmark = pytest.mark.unit
COSTS = CostModel(
    slippage_bps=1.5, commission_per_share=Decimal("0.005"), commission_min=Decimal("1")
)


@pytest.mark.parametrize(("fast", "slow"), [(5, 20), (10, 30)])
def test_same_trades_and_pnl_as_the_event_engine(
    sample_bars: pl.DataFrame, fast: int, slow: int
) -> None:
    bars = sample_bars.filter(pl.col("symbol").is_in(["AAPL", "MSFT", "SPY", "JPM", "TSLA"]))
    event = run_backtest(
        bars,
        MovingAverageCross(fast, slow, 100),
        cash=Decimal("10000000"),
        config=BrokerConfig(COSTS, max_leverage=10.0),
    )
    fast_path = ma_cross_vectorized(
        bars, fast=fast, slow=slow, shares=100, costs=COSTS, cash=10_000_000.0
    )
    ev = pl.DataFrame(
        {
            "symbol": [f.symbol for f in event.ledger.fills],
            "ts": [f.ts for f in event.ledger.fills],
            "quantity": [f.quantity for f in event.ledger.fills],
            "price": [float(f.price) for f in event.ledger.fills],
            "commission": [float(f.commission) for f in event.ledger.fills],
        },
    ).sort("ts", "symbol")
    assert ev.height > 20 and not event.ledger.events
    assert ev.select("symbol", "ts", "quantity").equals(
        fast_path.fills.select("symbol", "ts", pl.col("quantity").cast(pl.Int64))
    )
    assert (ev["price"] - fast_path.fills["price"]).abs().max() < 1e-9  # type: ignore[operator]
    assert abs(float(event.ledger.cash) - fast_path.cash) < 0.01  # to the cent
    joined = event.equity.join(fast_path.equity, on="ts", suffix="_v")
    assert (joined["equity"] - joined["equity_v"]).abs().max() < 0.01  # type: ignore[operator]


def _same(a: VectorizedResult, b: VectorizedResult) -> None:
    assert a.fills.equals(b.fills)
    assert a.equity["ts"].equals(b.equity["ts"])
    assert (a.equity["equity"] - b.equity["equity"]).abs().max() < 1e-6  # type: ignore[operator]
    assert abs(a.cash - b.cash) < 1e-6 and a.borrow == b.borrow


def test_targets_in_any_order_and_bars_unsorted_give_the_same_result(
    sample_bars: pl.DataFrame,
) -> None:
    bars = sample_bars.filter(pl.col("symbol").is_in(["AAPL", "MSFT", "SPY", "JPM"]))
    reference = ma_cross_vectorized(bars, fast=5, slow=20, shares=100, costs=COSTS, cash=1e7)
    assert reference.fills.height > 20
    targets = ma_cross_targets(bars, fast=5, slow=20, shares=100)
    _same(simulate_targets(bars, targets, costs=COSTS, cash=1e7), reference)
    # absent rows keep the position as null ones do; targets off the bars are ignored
    off = targets.head(3).with_columns(
        pl.lit("ZZZZ").alias("symbol"), pl.col("ts") + timedelta(seconds=1)
    )
    sparse = pl.concat([targets.drop_nulls("target"), off]).sample(fraction=1.0, seed=1)
    shuffled = bars.sample(fraction=1.0, shuffle=True, seed=2)
    _same(simulate_targets(shuffled, sparse, costs=COSTS, cash=1e7), reference)
    _same(
        ma_cross_vectorized(shuffled, fast=5, slow=20, shares=100, costs=COSTS, cash=1e7),
        reference,
    )


def test_duplicate_rows_and_fractional_targets_are_refused(sample_bars: pl.DataFrame) -> None:
    bars = sample_bars.filter(pl.col("symbol") == "AAPL").head(50)
    targets = bars.select("symbol", "ts", target=pl.lit(100))
    with pytest.raises(ValueError, match="more than one row of AAPL"):
        ma_cross_vectorized(
            pl.concat([bars, bars.tail(1)]), fast=2, slow=5, shares=1, costs=COSTS, cash=1e6
        )
    with pytest.raises(ValueError, match="one target per symbol and bar"):
        simulate_targets(bars, pl.concat([targets, targets.head(1)]), costs=COSTS, cash=1e6)
    with pytest.raises(ValueError, match=r"whole numbers of shares .*\[0\.5, "):
        simulate_targets(bars, targets.with_columns(target=pl.lit(0.5)), costs=COSTS, cash=1e6)
