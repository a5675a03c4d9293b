"""The model strategy through the vectorized path equals it through the event engine: same
trades, same PnL (fixed-capital sizing, label-barrier exits, shorts paying borrow)."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import polars as pl
import pytest

from pipelines.backtest.broker import BrokerConfig, CostModel
from pipelines.backtest.model_backtest import (
    closing_bars,
    run_model_strategy,
    signal_volatility,
    sizing_with_label_exits,
)
from pipelines.backtest.strategy import SizingConfig
from pipelines.backtest.vectorized import model_targets, simulate_targets
from pipelines.execution.path import PathConfig
from pipelines.labels.triple_barrier import BarrierConfig

pytestmark = pytest.mark.unit
COSTS = CostModel(
    slippage_bps=1.0,
    half_spread_bps=0.5,
    commission_per_share=Decimal("0.005"),
    commission_min=Decimal("1"),
    borrow_bps=50.0,
)


def _signals(bars: pl.DataFrame, barriers: BarrierConfig, seed: int) -> pl.DataFrame:
    """A probability on a random third of the bars (the engine's inputs, not a model's skill)."""
    rng = np.random.default_rng(seed)
    vol = signal_volatility(bars, barriers)
    pick = rng.random(vol.height) < 0.33
    n = int(pick.sum())
    return vol.filter(pl.Series(pick)).with_columns(
        prob=pl.Series(rng.uniform(0.3, 0.7, n)), base_rate=pl.Series(rng.uniform(0.45, 0.6, n))
    )


def _ledger_fills(result: object) -> pl.DataFrame:
    fills = result.ledger.fills  # type: ignore[attr-defined]
    return pl.DataFrame(
        {
            "symbol": [f.symbol for f in fills],
            "ts": [f.ts for f in fills],
            "quantity": [f.quantity for f in fills],
            "price": [float(f.price) for f in fills],
            "commission": [float(f.commission) for f in fills],
        },
        schema_overrides={"quantity": pl.Int64},
    ).sort("ts", "symbol")


@pytest.mark.parametrize(
    ("barriers", "sizing"),
    [
        (BarrierConfig(), SizingConfig(capital=1_000_000.0, max_gross=0.5)),
        (
            BarrierConfig(profit_take=1.0, stop_loss=1.5, max_holding_bars=6, volatility="std"),
            SizingConfig(capital=1_000_000.0, threshold=0.05, max_position=0.02),
        ),
        (
            BarrierConfig(),
            SizingConfig(capital=1_000_000.0, max_gross=0.5, flat_at_close=True, reference="half"),
        ),
        (  # the gross cap binds: new bets share what the bets held leave
            BarrierConfig(max_holding_bars=12),
            SizingConfig(capital=1_000_000.0, max_gross=0.08, max_position=0.05),
        ),
    ],
)
def test_model_strategy_same_trades_and_pnl(
    sample_bars: pl.DataFrame, barriers: BarrierConfig, sizing: SizingConfig
) -> None:
    bars = sample_bars.filter(pl.col("symbol").is_in(["AAPL", "MSFT", "SPY", "JPM", "TSLA"]))
    signals = _signals(bars, barriers, seed=7)
    sizing = sizing_with_label_exits(sizing, barriers)
    closing = closing_bars(bars["ts"], 15, "XNYS") if sizing.flat_at_close else frozenset()
    event = run_model_strategy(
        bars,
        signals,
        sizing,
        closing=closing,
        cash=Decimal("1000000"),
        config=BrokerConfig(COSTS, max_leverage=4.0),
        path=PathConfig.without_limits(),
    )
    fast = simulate_targets(
        bars, model_targets(bars, signals, sizing, closing), costs=COSTS, cash=1_000_000.0
    )
    ev = _ledger_fills(event)
    assert not event.ledger.events  # nothing refused: the vectorized path's premise
    assert ev.height > 100
    assert (ev["quantity"] < 0).any() and (ev["quantity"] > 0).any()
    assert ev.select("symbol", "ts", "quantity").equals(
        fast.fills.select("symbol", "ts", "quantity")
    )
    assert (ev["price"] - fast.fills["price"]).abs().max() < 1e-9  # type: ignore[operator]
    diff = ev.with_columns(v=fast.fills["commission"]).filter(pl.col("commission") != pl.col("v"))
    assert diff.height == 0, diff.select("quantity", "commission", "v").head(5).rows()
    borrow = sum((c.amount for c in event.ledger.charges), Decimal(0))
    assert borrow > 0 and abs(float(borrow) - fast.borrow) < 0.005  # the same cents
    assert abs(float(event.ledger.cash) - fast.cash) < 0.005  # to the cent
    if sizing.flat_at_close:  # nothing is held over a session's close
        held = event.equity.with_columns(day=pl.col("ts").dt.date())
        last = held.group_by("day").agg(pl.col("gross").last())
        assert (last["gross"] == 0).all(), last
    if sizing.max_gross < 0.1:
        gross = event.equity["gross"]
        assert 0.07e6 < gross.max() < 0.08e6 * 1.05  # type: ignore[operator]
    joined = event.equity.join(fast.equity, on="ts", suffix="_v")
    assert joined.height == event.equity.height
    assert (joined["equity"] - joined["equity_v"]).abs().max() < 0.01  # type: ignore[operator]


def test_exits_by_barrier_and_by_holding_period(sample_bars: pl.DataFrame) -> None:
    bars = sample_bars.filter(pl.col("symbol") == "AAPL")
    barriers = BarrierConfig(profit_take=0.5, stop_loss=0.5, max_holding_bars=8)
    vol = signal_volatility(bars, barriers).drop_nulls()
    signals = vol.gather_every(40).with_columns(prob=pl.lit(0.8))
    sizing = sizing_with_label_exits(SizingConfig(capital=1_000_000.0, reference="half"), barriers)
    result = run_model_strategy(
        bars, signals, sizing, cash=Decimal("1000000"), config=BrokerConfig()
    )
    fills = result.ledger.fills
    entries = {f.decided_at for f in fills if f.quantity > 0}
    held = [
        sum(1 for t in bars["ts"] if f_in.ts <= t < f_out.ts)
        for f_in, f_out in zip(fills[::2], fills[1::2], strict=True)
    ]
    assert len(entries) == len(fills) // 2 > 5
    assert max(held) <= 8  # never past the vertical barrier
    assert min(held) < 8  # and some closed early, at a horizontal barrier


def test_vectorized_model_needs_fixed_capital(sample_bars: pl.DataFrame) -> None:
    with pytest.raises(ValueError, match=r"SizingConfig\.capital"):
        model_targets(sample_bars, sample_bars.head(0), SizingConfig())
