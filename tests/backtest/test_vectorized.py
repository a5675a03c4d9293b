"""The vectorized fast path equals the event-driven engine: same trades, same PnL."""

from __future__ import annotations

from decimal import Decimal

import polars as pl
import pytest

from pipelines.backtest.broker import BrokerConfig, CostModel
from pipelines.backtest.engine import MovingAverageCross, run_backtest
from pipelines.backtest.vectorized import ma_cross_vectorized

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
