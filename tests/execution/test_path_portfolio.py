"""Portfolio methods inside the decision path: point in time, and they change the sizes."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import polars as pl
import pytest

from pipelines.backtest.broker import BrokerConfig
from pipelines.backtest.model_backtest import run_model_strategy, signal_volatility
from pipelines.backtest.strategy import SizingConfig
from pipelines.execution.path import PathConfig
from pipelines.labels.triple_barrier import BarrierConfig
from pipelines.portfolio.config import PortfolioConfig

pytestmark = pytest.mark.unit
SYMBOLS = ["AAPL", "MSFT", "JPM", "SPY", "GLD", "TSLA"]


@pytest.fixture(scope="module")
def bars(sample_bars: pl.DataFrame) -> pl.DataFrame:
    return sample_bars.filter(pl.col("symbol").is_in(SYMBOLS)).sort("ts", "symbol")


@pytest.fixture(scope="module")
def signals(bars: pl.DataFrame) -> pl.DataFrame:
    vol = signal_volatility(bars, BarrierConfig()).drop_nulls()
    rng = np.random.default_rng(21)
    pick = rng.random(vol.height) < 0.2
    return vol.filter(pl.Series(pick)).with_columns(
        prob=pl.Series(rng.uniform(0.3, 0.7, int(pick.sum()))), base_rate=pl.lit(0.5)
    )


def _run(bars: pl.DataFrame, signals: pl.DataFrame, method: str) -> object:
    path = PathConfig.without_limits()
    path = PathConfig(
        risk=path.risk,
        limits=path.limits,
        portfolio=PortfolioConfig(method=method, lookback=60, min_history=20),  # type: ignore[arg-type]
    )
    return run_model_strategy(
        bars,
        signals,
        SizingConfig(max_holding_bars=8, max_position=0.05, max_gross=0.3),
        cash=Decimal("1000000"),
        config=BrokerConfig(max_leverage=2.0),
        path=path,
    )


@pytest.mark.parametrize("method", ["inverse_volatility", "hrp"])
def test_a_method_resizes_the_bets_from_past_returns_only(
    bars: pl.DataFrame, signals: pl.DataFrame, method: str
) -> None:
    sized = _run(bars, signals, "bet_size")
    weighed = _run(bars, signals, method)
    ours = [(f.symbol, f.ts, f.quantity) for f in weighed.ledger.fills]  # type: ignore[attr-defined]
    theirs = [(f.symbol, f.ts, f.quantity) for f in sized.ledger.fills]  # type: ignore[attr-defined]
    assert len(ours) > 50 and ours != theirs  # the method changed the sizes
    # Point in time: cut the bars (and predictions) after a time t; every fill at or before t
    # is the same, so nothing before t read a return after it.
    cut = bars["ts"].unique().sort()[bars["ts"].n_unique() // 2]
    early = _run(bars.filter(pl.col("ts") <= cut), signals.filter(pl.col("ts") <= cut), method)
    before = [x for x in ours if x[1] <= cut]
    assert [(f.symbol, f.ts, f.quantity) for f in early.ledger.fills] == before  # type: ignore[attr-defined]
