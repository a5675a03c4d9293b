"""The backtest report of the model strategy on the out-of-sample predictions."""

import html
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import dagster as dg
import polars as pl

from assets.common import progress_to, say
from assets.metadata import OWNERS, figure, figures, is_count
from pipelines.backtest.broker import BrokerConfig, CostModel
from pipelines.backtest.model_backtest import Market, run_backtest_study, sizing_with_label_exits
from pipelines.backtest.report import Section, period_of, risk_tables, write_report
from pipelines.backtest.strategy import SizingConfig
from pipelines.backtest.trials import MlflowTrialLog, predictions_basis
from pipelines.config import Settings, UniverseConfig
from pipelines.execution.path import path_config
from pipelines.features import FeatureConfig
from pipelines.labels.partition import barrier_config, label_padding_days
from resources import MlflowResource, TradingDatabaseResource

GROUP = "backtest"
CODE_VERSION = "1"
"""Bump it when the backtest's or its report's logic changes (see assets/metadata.py)."""
HEADLINE = (
    "total_return",
    "annual_return",
    "sharpe",
    "sharpe_daily_annualised",
    "deflated_sharpe",
    "n_trials",
    "pbo",
    "max_drawdown",
    "trades_closed",
    "trades_win_rate",
    "trades_profit_factor_usd",
    "commissions_usd",
    "borrow_usd",
    "beta",
    "alpha",
)
PERCENT = frozenset({"total_return", "annual_return", "max_drawdown", "alpha"})


def shown(key: str, value: float, metrics: dict[str, float]) -> str:
    """A headline figure as the summary shows it: returns and rates in percent, counts whole,
    USD to the cent, the deflated Sharpe with its N, the rest to four significant digits."""
    if key in PERCENT:
        return f"{value:+.2%}"
    if key == "trades_win_rate":
        return f"{value:.1%}"
    if is_count(key):
        return f"{value:.0f}"
    if key.endswith("_usd"):
        return f"{value:,.2f} USD"
    if key == "deflated_sharpe" and "n_trials" in metrics:
        return f"{value:.3f} (N = {metrics['n_trials']:.0f} trials)"
    return f"{value:.4g}"


class BacktestConfig(dg.Config):  # type: ignore[misc]
    """Costs and sizing of the backtest (bps of price; USD per share; ``borrow_bps`` a year
    on shorts). ``exits``: ``"barriers"`` closes a bet at the labels' profit-take, stop-loss or
    vertical barrier, ``"holding"`` only after ``max_holding_bars`` (None: the labels'; bars of
    the source, sessions on daily bars). Every pair of
    ``grid_thresholds`` x ``grid_exits`` (and the configured pair) is backtested and recorded
    as a trial; the configured pair is the one reported, deflated by all trials."""

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
    max_holding_bars: int | None = None
    grid_thresholds: list[float] = [0.0, 0.02, 0.05]
    grid_exits: list[str] = ["barriers", "holding"]


def configurations(
    config: BacktestConfig, settings: Settings
) -> tuple[dict[str, SizingConfig], str]:
    """The grid of sizing configurations (name -> config) and the reported one's name."""
    barriers = barrier_config(settings.labels)
    base = SizingConfig(
        target_vol=config.target_vol,
        max_position=config.max_position,
        max_gross=config.max_gross,
        max_holding_bars=barriers.max_holding_bars
        if config.max_holding_bars is None
        else config.max_holding_bars,
        flat_at_close=barriers.cut_at_session_close,
    )
    grid: dict[str, SizingConfig] = {}
    pairs = [(t, e) for t in config.grid_thresholds for e in config.grid_exits]
    for threshold, exits in [*pairs, (config.threshold, config.exits)]:
        if exits not in ("barriers", "holding"):
            raise ValueError(f'exits must be "barriers" or "holding", got {exits!r}')
        sizing = replace(base, threshold=threshold)
        if exits == "barriers":
            sizing = sizing_with_label_exits(sizing, barriers)
        grid[f"threshold={threshold:g} exits={exits}"] = sizing
    return grid, f"threshold={config.threshold:g} exits={config.exits}"


def build_backtest_report_asset(
    universe: UniverseConfig, settings: Settings, project_root: Path
) -> dg.AssetsDefinition:
    tf = universe.base_timeframe
    per_session = FeatureConfig(tf, universe.session).bars_per_session
    per_year = 252 * per_session  # daily bars: 252 a year
    # The labels' volatility must be warm at the first prediction: ten days are 260 fifteen-
    # minute bars, but only seven daily ones, which read as far back as the labels do.
    warm_days = label_padding_days(settings.labels, per_session)[0] if tf.is_daily else 10
    market = Market(tf.minutes, universe.calendar, universe.session, per_year)
    reports = project_root / settings.data_dir / "reports"
    barriers = barrier_config(settings.labels)

    @dg.asset(
        group_name=GROUP,
        kinds={"html"},
        owners=OWNERS[GROUP],
        code_version=CODE_VERSION,
        ins={n: dg.AssetIn() for n in ("oos_predictions", "holdout_predictions", "champion_model")},
    )
    def backtest_report(  # type: ignore[no-untyped-def]
        context: dg.AssetExecutionContext,
        config: BacktestConfig,
        trading_db: TradingDatabaseResource,
        mlflow: MlflowResource,
        oos_predictions: pl.DataFrame,
        holdout_predictions: pl.DataFrame,
        champion_model: pl.DataFrame,
    ):
        """Out-of-sample backtest of the model strategy with costs over a grid of trials; the
        deflated Sharpe with its N, the PBO, the holdout apart; HTML report and metrics."""
        rows = pl.concat([oos_predictions.select("ts"), holdout_predictions.select("ts")])
        bars = trading_db.store().read_bars(
            timeframe=tf.label,
            start=rows["ts"].min() - timedelta(days=warm_days),  # type: ignore[operator]
            end=rows["ts"].max() + timedelta(days=1),  # type: ignore[operator]
        )
        grid, selected = configurations(config, settings)
        decision = champion_model.row(0, named=True)
        costs = CostModel(
            config.slippage_bps,
            config.half_spread_bps,
            config.impact_k,
            Decimal(repr(config.commission_per_share)),
            Decimal(repr(config.commission_min)),
            borrow_bps=config.borrow_bps,
        )
        say(context, f"backtesting {len(grid)} configurations (trials) out of sample")
        study = run_backtest_study(
            bars,
            oos_predictions,
            configurations=grid,
            selected=selected,
            broker=BrokerConfig(costs, participation=config.participation, max_leverage=1.0),
            cash=Decimal(repr(config.cash)),
            barriers=barriers,
            market=market,
            trial_log=MlflowTrialLog(mlflow.tracking_uri, f"{mlflow.experiment}-trials"),
            family=f"{universe.name} model strategy ({tf.label})",
            basis=predictions_basis(oos_predictions),
            as_of=datetime.now(UTC),
            holdout=holdout_predictions if holdout_predictions.height else None,
            sections=(gate_section(decision),),
            progress=progress_to(context, "backtest"),
            methods=tuple(settings.trading.compare_methods),
            path=path_config(
                settings.trading,
                strategy="model",
                bar_minutes=tf.minutes,
                calendar=universe.calendar,
            ),
        )
        html_path = reports / f"backtest_{decision['run_id']}.html"
        write_report(study.report, str(html_path), str(html_path.with_suffix(".json")))
        m, undefined = study.report.metrics, study.report.undefined
        headline = {k: m[k] for k in HEADLINE if k in m}
        first, last = period_of(study.result.equity["ts"])
        period = f"{first} to {last} (New York dates)"
        summary = f"| test_period | {period} |\n" + "\n".join(
            f"| {k} | {shown(k, v, m)} |" for k, v in headline.items()
        )
        summary += "".join(
            f"\n| {k} | undefined: {undefined[k]} |" for k in HEADLINE if k in undefined
        )
        refused, states = risk_tables(study.result)
        risk: dict[str, dg.MetadataValue] = {
            "refused_by_rule": dg.MetadataValue.json(dict(refused.iter_rows())),
            "trading_states": dg.MetadataValue.json(
                {s: round(x, 4) for s, n, x in states.iter_rows() if n}
            ),
        }
        if "turnover_annual" in m:
            risk["turnover_annual"] = figure(m["turnover_annual"])
        held = figures(
            {
                f"holdout_{seg}_{k}": r.metrics[k]
                for seg, r in study.holdout.items()
                for k in ("total_return", "sharpe", "trades_closed")
                if k in r.metrics
            }
        )
        # The report travels with the model's MLflow run, and opens from here in one click.
        artifact = mlflow.attach(str(decision["run_id"]), str(html_path), "backtest")
        url = mlflow.run_url(str(decision["run_id"]), artifact)
        link = {"report_url": dg.MetadataValue.url(url)} if url else {}
        opened = f"[open the report]({url})" if url else f"`{html_path}`"
        return dg.MaterializeResult(
            metadata={
                **link,
                "report": dg.MetadataValue.path(str(html_path)),
                "summary": dg.MetadataValue.md(
                    f"| metric | value |\n|---|---|\n{summary}\n\nReport: {opened} (also the "
                    f"MLflow run's artifact `{artifact}`)"
                ),
                "deployable": bool(decision["deployable"]),
                "configuration": selected,
                "test_period": period,
                **figures(headline),
                **risk,
                **held,
            }
        )

    return backtest_report


def gate_section(decision: dict[str, object]) -> Section:
    """Whether the model behind this backtest may trade, and why."""
    verdict = "deployable" if decision["deployable"] else "NOT deployable"
    return Section(
        f"The model: {verdict}",
        f"<p>Model version {html.escape(str(decision['version']))}: "
        f"{html.escape(str(decision['reason']))}.</p>",
    )
