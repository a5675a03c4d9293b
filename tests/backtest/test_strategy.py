"""The model strategy: bet sizing, caps, holding-period exits, through the real engine."""

from __future__ import annotations

from decimal import Decimal

import polars as pl
import pytest

from pipelines.backtest.broker import BrokerConfig
from pipelines.backtest.engine import run_backtest
from pipelines.backtest.strategy import ModelStrategy, SizingConfig, bet_size

pytestmark = pytest.mark.unit


def test_bet_size_is_monotone_signed_and_dead_banded() -> None:
    assert bet_size(0.51, 0.02, 1.0) == 0.0
    assert bet_size(0.6, 0.02, 1.0) > bet_size(0.55, 0.02, 1.0) > 0
    assert bet_size(0.4, 0.02, 1.0) == pytest.approx(-bet_size(0.6, 0.02, 1.0))
    assert bet_size(0.99, 0.0, 0.5) == 0.5
    assert bet_size(float("nan"), 0.0, 1.0) == 0.0


def test_caps_and_holding_period_through_the_engine(sample_bars: pl.DataFrame) -> None:
    bars = sample_bars.filter(pl.col("symbol").is_in(["AAPL", "MSFT", "JPM"]))
    first = bars.filter(pl.col("ts") == bars["ts"].min())  # one strong signal each, at the start
    signals = first.select("symbol", "ts", prob=pl.lit(0.9), volatility=pl.lit(0.001))
    sizing = SizingConfig(max_position=0.05, max_gross=0.12, max_holding_bars=4)
    result = run_backtest(
        bars, ModelStrategy(signals, sizing), cash=Decimal("1000000"), config=BrokerConfig()
    )
    fills = result.ledger.fills
    entries = [f for f in fills if f.quantity > 0]
    exits = [f for f in fills if f.quantity < 0]
    assert len(entries) == 3 and len(exits) == 3  # entered once, closed after the holding period
    gross = sum(f.quantity * float(f.price) for f in entries)
    assert gross <= 0.12 * 1_000_000 * 1.01  # the gross cap (priced at the next open)
    assert all(f.quantity * float(f.price) <= 0.05 * 1_000_000 * 1.01 for f in entries)
    assert result.ledger.positions == {"AAPL": 0, "MSFT": 0, "JPM": 0}
