"""The walk-forward backtest of the model strategy on out-of-sample predictions."""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal

import polars as pl

from pipelines.backtest.broker import BrokerConfig
from pipelines.backtest.engine import BacktestResult, run_backtest
from pipelines.backtest.report import Report, build_report, equal_weight_index
from pipelines.backtest.strategy import ModelStrategy, SizingConfig
from pipelines.labels.triple_barrier import BarrierConfig, barrier_volatility


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
    barriers: BarrierConfig | None = None,
) -> ModelBacktest:
    """Trade the calibrated probabilities in ``predictions`` (``symbol``, ``ts``, ``prob``) on
    ``bars`` over the predictions' time range. The per-bar volatility (for sizing and the
    exits) is the labels' (``barriers``, default :class:`BarrierConfig`), known at each bar."""
    vol = signal_volatility(bars, barriers or BarrierConfig())
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


def signal_volatility(bars: pl.DataFrame, barriers: BarrierConfig) -> pl.DataFrame:
    """``symbol``, ``ts``, ``volatility``: the labels' barrier volatility at each bar."""
    return bars.sort("symbol", "ts").select("symbol", "ts", volatility=barrier_volatility(barriers))


def sizing_with_label_exits(sizing: SizingConfig, barriers: BarrierConfig) -> SizingConfig:
    """``sizing`` exiting by the labels' barriers and vertical barrier."""
    return replace(
        sizing,
        profit_take=barriers.profit_take,
        stop_loss=barriers.stop_loss,
        max_holding_bars=barriers.max_holding_bars,
    )
