"""The backtest report of the model strategy on the out-of-sample predictions."""

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import dagster as dg
import polars as pl

from pipelines.backtest.broker import BrokerConfig, CostModel
from pipelines.backtest.model_backtest import run_model_backtest, sizing_with_label_exits
from pipelines.backtest.report import write_report
from pipelines.backtest.strategy import SizingConfig
from pipelines.config import Settings, UniverseConfig
from pipelines.features import FeatureConfig
from pipelines.labels.partition import barrier_config
from resources import MlflowResource, TradingDatabaseResource

GROUP = "backtest"
HEADLINE = (
    "total_return",
    "annual_return",
    "sharpe",
    "deflated_sharpe",
    "max_drawdown",
    "trades_trades",
    "trades_win_rate",
    "commissions_usd",
    "borrow_usd",
    "beta",
    "alpha",
)


class BacktestConfig(dg.Config):  # type: ignore[misc]
    """Costs and sizing of the backtest (bps of price; USD per share; ``borrow_bps`` a year
    on shorts). ``exits``: ``"barriers"`` closes a position at the labels' profit-take,
    stop-loss or vertical barrier, ``"holding"`` only after ``max_holding_bars``."""

    cash: float = 1_000_000.0
    slippage_bps: float = 1.0
    half_spread_bps: float = 1.0
    impact_k: float = 0.1
    commission_per_share: float = 0.005
    commission_min: float = 1.0
    participation: float = 0.05
    borrow_bps: float = 30.0
    exits: str = "barriers"
    threshold: float = 0.02
    target_vol: float = 0.002
    max_position: float = 0.10
    max_gross: float = 1.0
    max_holding_bars: int = 16


def build_backtest_report_asset(
    universe: UniverseConfig, settings: Settings, project_root: Path
) -> dg.AssetsDefinition:
    per_year = 252 * FeatureConfig(universe.base_timeframe, universe.session).bars_per_session
    reports = project_root / settings.data_dir / "reports"
    barriers = barrier_config(settings.labels)

    @dg.asset(group_name=GROUP, kinds={"html"}, ins={"oos_predictions": dg.AssetIn()})
    def backtest_report(  # type: ignore[no-untyped-def]
        context: dg.AssetExecutionContext,
        config: BacktestConfig,
        trading_db: TradingDatabaseResource,
        mlflow: MlflowResource,
        oos_predictions: pl.DataFrame,
    ):
        """Walk-forward backtest of the model strategy with costs; HTML report and metrics."""
        start, end = oos_predictions["ts"].min(), oos_predictions["ts"].max()
        bars = trading_db.store().read_bars(
            timeframe=universe.base_timeframe.label,
            start=start - timedelta(days=10),  # type: ignore[operator]
            end=end + timedelta(minutes=universe.base_timeframe.minutes),
        )  # type: ignore[operator]
        run_id = oos_predictions["run_id"][0]
        trials = int(mlflow.client().get_run(run_id).data.tags.get("optuna.trials", "0") or 0)
        costs = CostModel(
            config.slippage_bps,
            config.half_spread_bps,
            config.impact_k,
            Decimal(repr(config.commission_per_share)),
            Decimal(repr(config.commission_min)),
            borrow_bps=config.borrow_bps,
        )
        if config.exits not in ("barriers", "holding"):
            raise ValueError(f'exits must be "barriers" or "holding", got {config.exits!r}')
        sizing = SizingConfig(
            threshold=config.threshold,
            target_vol=config.target_vol,
            max_position=config.max_position,
            max_gross=config.max_gross,
            max_holding_bars=config.max_holding_bars,
        )
        if config.exits == "barriers":
            sizing = sizing_with_label_exits(sizing, barriers)
        bt = run_model_backtest(
            bars,
            oos_predictions,
            sizing=sizing,
            broker=BrokerConfig(costs, participation=config.participation, max_leverage=1.0),
            cash=Decimal(repr(config.cash)),
            periods_per_year=per_year,
            n_trials=max(trials, 1),
            barriers=barriers,
        )
        html_path = reports / f"backtest_{run_id}.html"
        write_report(bt.report, str(html_path), str(html_path.with_suffix(".json")))
        m = bt.report.metrics
        summary = "\n".join(f"| {k} | {m[k]:.4g} |" for k in HEADLINE)
        return dg.MaterializeResult(
            metadata={
                "report": dg.MetadataValue.path(str(html_path)),
                "summary": dg.MetadataValue.md(
                    f"| metric | value |\n|---|---|\n{summary}\n\nReport: `{html_path}`"
                ),
                **{k: float(m[k]) for k in HEADLINE},
            }
        )

    return backtest_report
