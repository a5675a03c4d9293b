"""The walk-forward backtest of the model strategy on out-of-sample predictions."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import cast

import polars as pl

from pipelines.backtest.analytics import return_stats
from pipelines.backtest.broker import BrokerConfig
from pipelines.backtest.engine import BacktestResult, run_backtest
from pipelines.backtest.report import (
    Report,
    Section,
    build_report,
    equal_weight_index,
    html_table,
    selection_section,
)
from pipelines.backtest.strategy import ModelStrategy, SizingConfig, signal_columns
from pipelines.backtest.trials import Selection, Trial, TrialLog, daily_returns, deflate
from pipelines.bars.calendar import Session, session_dates, sessions_between
from pipelines.execution.path import PathConfig
from pipelines.labels.triple_barrier import BarrierConfig, barrier_volatility


@dataclass(frozen=True)
class Market:
    """The bars' clock: ``minutes`` a bar, the exchange ``calendar``, the ``session`` and the
    bars in a year (``periods_per_year``, e.g. 252 * 26 for 15-minute regular-session bars)."""

    minutes: int
    calendar: str = "XNYS"
    session: Session = "regular"
    periods_per_year: float = 252 * 26


def simulate_model(
    bars: pl.DataFrame,
    predictions: pl.DataFrame,
    *,
    sizing: SizingConfig,
    broker: BrokerConfig,
    cash: Decimal,
    barriers: BarrierConfig,
    market: Market,
    path: PathConfig | None = None,
) -> BacktestResult:
    """Trade the calibrated probabilities in ``predictions`` (``symbol``, ``ts``, ``prob``,
    ``base_rate``) on ``bars`` from the first prediction to the end of the last one's session
    with the event engine, through the trading path ``path`` (portfolio, risk checks, limits;
    default: :class:`PathConfig`'s). The per-bar volatility (sizing, exits) is the labels'
    (``barriers``), known at each bar; the broker's impact model reads the one known at the
    previous bar's close. Decisions are taken at each bar's end (a daily bar's: its session's
    close, early closes included)."""
    vol = signal_volatility(bars, barriers)
    keep = [c for c in ("symbol", "ts", "prob", "base_rate") if c in predictions.columns]
    signals = predictions.select(keep).join(vol, on=["symbol", "ts"], how="left")
    window = _window(bars, predictions)
    closing = (
        closing_bars(window["ts"], market.minutes, market.calendar, market.session)
        if sizing.flat_at_close
        else frozenset()
    )
    known = vol.sort("symbol", "ts").with_columns(pl.col("volatility").shift(1).over("symbol"))
    config = replace(path or PathConfig(), bar_minutes=market.minutes)
    return run_model_strategy(
        window,
        signals,
        sizing,
        cash=cash,
        config=broker,
        volatility=known,
        path=config,
        closing=closing,
        clock=decision_clock(window["ts"], market) if market.minutes >= 1440 else None,
    )


def run_model_strategy(
    bars: pl.DataFrame,
    signals: pl.DataFrame,
    sizing: SizingConfig,
    *,
    cash: Decimal,
    config: BrokerConfig,
    path: PathConfig | None = None,
    closing: frozenset[datetime] = frozenset(),
    volatility: pl.DataFrame | None = None,
    clock: Callable[[datetime], datetime] | None = None,
) -> BacktestResult:
    """The model strategy with ``sizing`` on ``signals`` (``symbol``, ``ts``, ``prob``,
    ``volatility`` and, unless ``sizing.reference`` is ``"half"``, ``base_rate``) over
    ``bars`` through the event engine and the trading path ``path``."""
    strategy = ModelStrategy(sizing)
    return run_backtest(
        bars,
        strategy,
        cash=cash,
        config=config,
        volatility=volatility,
        signals=signal_columns(signals, sizing),
        path=replace(path or PathConfig(), strategy=strategy.name),
        closing=closing,
        clock=clock,
    )


def decision_clock(ts: pl.Series, market: Market) -> Callable[[datetime], datetime]:
    """Bar start -> the time its decision is taken, for daily bars: the session's close
    (UTC; early closes from the exchange calendar)."""
    if ts.is_empty():
        return lambda t: t
    days = ts.dt.convert_time_zone("America/New_York").dt.date()
    first, last = days.min(), days.max()
    window = sessions_between(market.calendar, first, last).window(market.session)  # type: ignore[arg-type]
    close = dict(zip(window["session_date"].to_list(), window["end"].to_list(), strict=True))
    stamps = dict(zip(ts.to_list(), days.to_list(), strict=True))
    return lambda t: close[stamps[t]]


def benchmark_of(bars: pl.DataFrame) -> pl.DataFrame:
    """SPY's closes when the bars hold SPY, else the universe's equal-weight index."""
    if bars.filter(pl.col("symbol") == "SPY").height:
        return bars.filter(pl.col("symbol") == "SPY").select("ts", "close")
    return equal_weight_index(bars)


def benchmark_name(bars: pl.DataFrame) -> str:
    """What :func:`benchmark_of` takes on ``bars``, in words."""
    if bars.filter(pl.col("symbol") == "SPY").height:
        return "SPY"
    return "the universe's equal-weight index"


@dataclass(frozen=True)
class BacktestStudy:
    """The reported configuration's backtest and report, every trial of the grid, the
    selection figures, and the holdout backtests (by segment) of the reported configuration."""

    selected: Trial
    result: BacktestResult
    report: Report
    trials: list[Trial]
    selection: Selection
    holdout: dict[str, Report]


def run_backtest_study(
    bars: pl.DataFrame,
    predictions: pl.DataFrame,
    *,
    configurations: dict[str, SizingConfig],
    selected: str,
    broker: BrokerConfig,
    cash: Decimal,
    barriers: BarrierConfig,
    market: Market,
    trial_log: TrialLog,
    family: str,
    basis: str,
    as_of: datetime,
    holdout: pl.DataFrame | None = None,
    sections: tuple[Section, ...] = (),
    title: str = "QuantDAG model strategy, walk-forward, out of sample",
    progress: Callable[[str], None] | None = None,
    path: PathConfig | None = None,
    methods: tuple[str, ...] = (),
) -> BacktestStudy:
    """Backtest every configuration on the out-of-sample ``predictions`` (each one a trial of
    ``family`` on ``basis``, recorded in ``trial_log``), report the ``selected`` one with its
    deflated Sharpe and the grid's PBO, and backtest it once on each ``holdout`` segment.
    ``methods`` (portfolio methods, e.g. ``("equal_weight", "inverse_volatility", "hrp")``)
    run the selected configuration again with each, as further trials, compared in a section of
    the report. ``progress`` (optional) is told of each configuration as it is simulated."""
    if selected not in configurations:
        raise ValueError(f"the selected configuration {selected!r} is not in the grid")
    base = path or PathConfig()
    runs: dict[str, tuple[SizingConfig, PathConfig]] = {
        name: (sizing, base) for name, sizing in configurations.items()
    }
    for method in methods:
        runs[f"{selected} method={method}"] = (
            configurations[selected],
            replace(base, portfolio=replace(base.portfolio, method=method)),  # type: ignore[arg-type]
        )
    results: dict[str, BacktestResult] = {}
    trials: list[Trial] = []
    for name, (sizing, config) in runs.items():
        result = simulate_model(
            bars,
            predictions,
            sizing=sizing,
            broker=broker,
            cash=cash,
            barriers=barriers,
            market=market,
            path=config,
        )
        results[name] = result
        params = {
            "configuration": name,
            "portfolio_method": config.portfolio.method,
            **_describe(sizing),
            **_describe(broker.costs),
        }
        trials.append(Trial(name, params, basis, daily_returns(result.equity, float(cash))))
        if progress is not None:
            progress(f"configuration {len(trials)}/{len(runs)} ({name}) simulated")
    chosen = next(t for t in trials if t.name == selected)
    selection = deflate(chosen, trial_log.record(family, trials, as_of=as_of), trials)
    table = pl.DataFrame(
        {
            "configuration": [t.name for t in trials],
            "daily Sharpe": [t.sharpe for t in trials],
            "total return": [float((t.daily["ret"] + 1).product() - 1) for t in trials],
            "reported": ["yes" if t.name == selected else "" for t in trials],
        }
    )
    held: dict[str, Report] = {}
    segments = [] if holdout is None else holdout["segment"].unique().sort().to_list()
    for segment in segments:
        rows = holdout.filter(pl.col("segment") == segment)  # type: ignore[union-attr]
        result = simulate_model(
            bars,
            rows,
            sizing=configurations[selected],
            broker=broker,
            cash=cash,
            barriers=barriers,
            market=market,
            path=path,
        )
        held[segment] = build_report(
            result,
            benchmark_of(_window(bars, rows)),
            periods_per_year=market.periods_per_year,
            title=f"holdout: {segment}",
            benchmark_name=benchmark_name(_window(bars, rows)),
        )
    window = _window(bars, predictions)
    report = build_report(
        results[selected],
        benchmark_of(window),
        periods_per_year=market.periods_per_year,
        title=title,
        benchmark_name=benchmark_name(window),
        selection=selection,
        sections=(
            selection_section(selection, table),
            *([methods_section(selected, methods, results, market)] if methods else []),
            *sections,
            *([holdout_section(held)] if held else []),
        ),
    )
    return BacktestStudy(chosen, results[selected], report, trials, selection, held)


def methods_section(
    selected: str, methods: tuple[str, ...], results: dict[str, BacktestResult], market: Market
) -> Section:
    """The reported configuration under each portfolio method, net of costs."""
    rows = []
    for method, name in [("bet_size", selected)] + [(m, f"{selected} method={m}") for m in methods]:
        result = results[name]
        fills = result.ledger.fills
        equity = result.equity
        years = equity.height / market.periods_per_year
        traded = float(sum(abs(f.quantity) * f.price for f in fills))
        mean_equity = float(equity["equity"].mean())  # type: ignore[arg-type]
        costs = float(sum(f.commission + f.slippage for f in fills)) + float(
            sum(c.amount for c in result.ledger.charges)
        )
        stats = return_stats(
            daily_returns(equity, float(equity["equity"][0]))["ret"].to_numpy(), 252
        )
        rows.append(
            {
                "method": method,
                "total return": f"{stats.total_return:+.2%}",
                "daily Sharpe (annualised)": f"{stats.sharpe:.2f}"
                if math.isfinite(stats.sharpe)
                else "undefined (no variation)",
                "turnover a year (x equity)": f"{traded / mean_equity / years:.1f}"
                if years > 0
                else "undefined",
                "costs (USD)": f"{costs:,.2f}",
                "fills": str(len(fills)),
                "orders refused": str(sum(1 for e in result.risk_events if e.kind == "refused")),
                "bars not ACTIVE": f"{cast(float, (equity['state'] != 'ACTIVE').mean()):.1%}",
            }
        )
    return Section(
        "Portfolio methods (the reported configuration, net of costs; each one a trial)",
        "<p>How the open bets share the gross the strategy sized: its own bet sizes "
        "(bet_size), or weights from past returns only. Every row is counted in the deflated "
        "Sharpe's N.</p>" + html_table(pl.DataFrame(rows)),
    )


HOLDOUT_FIGURES = ("total_return", "sharpe", "max_drawdown", "trades_closed", "beta", "alpha")


def holdout_section(held: dict[str, Report]) -> Section:
    """The reported configuration on each holdout segment, read once, apart from the rest."""
    rows = []
    for segment, report in held.items():
        m = report.metrics
        rows.append({"segment": segment, **{k: _shown(m.get(k)) for k in HOLDOUT_FIGURES}})
    return Section(
        "Holdout (never used to fit, tune, select or promote)",
        "<p>The reported configuration on the holdout rows, scored once for this model.</p>"
        + html_table(pl.DataFrame(rows)),
    )


def _shown(value: float | None) -> str:
    """A figure for the report's table: undefined ones say so (no NaN on the page)."""
    if value is None or not math.isfinite(value):
        return "undefined"
    return f"{value:.4g}"


def _window(bars: pl.DataFrame, rows: pl.DataFrame) -> pl.DataFrame:
    """The bars from the first of ``rows`` to the end of the last one's session, so that the
    positions opened on the last predictions are closed as the strategy would close them."""
    start, last_day = rows["ts"].min(), rows.select(session_dates(pl.col("ts")).max()).item()
    return bars.filter((pl.col("ts") >= start) & (session_dates(pl.col("ts")) <= last_day))


def _describe(config: object) -> dict[str, str]:
    return {k: str(v) for k, v in vars(config).items()}


def closing_bars(
    ts: pl.Series, minutes: int, calendar: str, session: Session = "regular"
) -> frozenset[datetime]:
    """The bar starts (UTC) of ``ts`` at or after the session's second-to-last bar of
    ``minutes``: an order decided at such a bar's close fills at the session's last bar at the
    latest. Sessions and early closes come from the exchange calendar."""
    times = pl.DataFrame({"ts": ts.unique()}).with_columns(session_date=session_dates(pl.col("ts")))
    if times.height == 0:
        return frozenset()
    first, last = times["session_date"].min(), times["session_date"].max()
    window = sessions_between(calendar, first, last).window(session)  # type: ignore[arg-type]
    flagged = times.join(window.select("session_date", "end"), on="session_date", how="left")
    closing = flagged.filter(pl.col("ts") >= pl.col("end") - pl.duration(minutes=2 * minutes))["ts"]
    return frozenset(closing.to_list())


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
