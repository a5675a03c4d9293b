"""The walk-forward backtest of the model strategy on out-of-sample predictions."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import polars as pl

from pipelines.backtest.broker import BrokerConfig
from pipelines.backtest.engine import BacktestResult, run_backtest
from pipelines.backtest.report import Report, build_report, equal_weight_index
from pipelines.backtest.strategy import ModelStrategy, SizingConfig


@dataclass(frozen=True)
class ModelBacktest:
    result: BacktestResult
    report: Report


def run_model_backtest(
    bars: pl.DataFrame,
    predictions: pl.DataFrame,
    *,
    sizing: SizingConfig,
    broker: BrokerConfig,
    cash: Decimal,
    periods_per_year: float,
    n_trials: int = 1,
    vol_window: int = 20,
) -> ModelBacktest:
    """Trade the calibrated probabilities in ``predictions`` (``symbol``, ``ts``, ``prob``) on
    ``bars`` over the predictions' time range; per-bar volatility is the standard deviation of
    the last ``vol_window`` log returns, known at each bar."""
    vol = bars.sort("symbol", "ts").select(
        "symbol",
        "ts",
        volatility=(pl.col("close") / pl.col("close").shift(1).over("symbol"))
        .log()
        .rolling_std(vol_window)
        .over("symbol"),
    )
    signals = predictions.select("symbol", "ts", "prob").join(vol, on=["symbol", "ts"], how="left")
    start, end = predictions["ts"].min(), predictions["ts"].max()
    window = bars.filter(pl.col("ts").is_between(start, end))  # type: ignore[arg-type]
    result = run_backtest(window, ModelStrategy(signals, sizing), cash=cash, config=broker)
    symbols = set(window["symbol"].unique().to_list())
    benchmark = (
        window.filter(pl.col("symbol") == "SPY").select("ts", "close")
        if "SPY" in symbols
        else equal_weight_index(window)
    )
    report = build_report(
        result,
        benchmark,
        periods_per_year=periods_per_year,
        n_trials=n_trials,
        title="QuantDAG model strategy, walk-forward",
    )
    return ModelBacktest(result, report)
