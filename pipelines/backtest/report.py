"""The backtest report: headline metrics (JSON) and a self-contained HTML page of charts.

The page opens anywhere without a network: it carries one copy of plotly.js, and each chart is
a plotly figure (its JSON in the page) on a New York date axis, titled with the test period:
equity against the benchmark, drawdown, rolling Sharpe, gross exposure, then the distribution
of trade returns and PnL by symbol; monthly returns and costs by kind are tables. A headline
section explains each headline figure in a sentence (total return, Sharpe, beta and alpha
against the benchmark, the deflated Sharpe with its N, the PBO); then what selecting this
configuration among every trial costs and any further sections (the skill gate, the holdout).
A figure that is undefined on a backtest (a profit factor without a losing trade, a beta
against a flat benchmark) is never a NaN: it is left out of the metrics and listed in
``undefined`` with the reason, and the page says so where it would show.
"""

from __future__ import annotations

import functools
import html
import json
import math
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import polars as pl

from pipelines.backtest.analytics import drawdowns, return_stats, trade_stats
from pipelines.backtest.broker import Ledger
from pipelines.backtest.engine import BacktestResult
from pipelines.backtest.trials import Selection
from pipelines.bars.calendar import NEW_YORK
from pipelines.risk.events import TradingState

UNDEFINED_BECAUSE = {
    "profit_factor": "no losing trade",
    "profit_factor_usd": "no losing trade",
    "average_loss": "no losing trade",
    "average_loss_usd": "no losing trade",
    "average_win": "no winning trade",
    "average_win_usd": "no winning trade",
    "win_rate": "no closed trade",
    "expectancy": "no closed trade",
    "expectancy_usd": "no closed trade",
    "pnl_usd": "no closed trade",
    "alpha": "the benchmark did not move",
    "beta": "the benchmark did not move",
    "calmar": "no drawdown",
}
TRADE_FIGURES = {"trades": "trades_closed"}
"""Metric names of the trade statistics that are not ``trades_<field>`` (the count of closed
trades would read ``trades_trades``)."""
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
BLUE, ORANGE, GREEN, RED = "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"
DRAW_CHARTS = """for (const spec of document.querySelectorAll("script.chart-spec")) {
  const figure = JSON.parse(spec.textContent);
  Plotly.newPlot(spec.dataset.chart, figure.data, figure.layout,
    {displaylogo: false, responsive: true});
}"""


@dataclass(frozen=True)
class Section:
    """A further section of the report: a title and its HTML body."""

    title: str
    html: str


@dataclass(frozen=True)
class Report:
    """``metrics``: every defined figure (finite floats); ``undefined``: figure -> why it has
    no value on this backtest; ``html``: the page."""

    metrics: dict[str, float]
    html: str
    undefined: dict[str, str] = field(default_factory=dict)


def defined(values: dict[str, float]) -> tuple[dict[str, float], dict[str, str]]:
    """Split figures into the finite ones and the undefined ones (with the reason)."""
    good, missing = {}, {}
    for k, v in values.items():
        if math.isfinite(v):
            good[k] = v
        else:
            suffix = k.removeprefix("trades_")
            missing[k] = UNDEFINED_BECAUSE.get(suffix, "the returns never varied")
    return good, missing


def html_table(frame: pl.DataFrame) -> str:
    """A small HTML table of ``frame`` (floats to 4 significant digits)."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{v:.4g}</td>" if isinstance(v, float) else f"<td>{html.escape(str(v))}</td>"
            for v in r
        )
        + "</tr>"
        for r in frame.iter_rows()
    )
    return f"<table><tr>{head}</tr>{rows}</table>"


def _or_undefined(value: float | None) -> str:
    return "undefined (see below)" if value is None else f"{value:.3f}"


def selection_section(selection: Selection, trials: pl.DataFrame) -> Section:
    """What choosing this configuration among every trial of its family costs its Sharpe."""
    pbo = (
        f"{selection.pbo:.2f} by CSCV over the {selection.pbo_configurations} configurations "
        "tried together (the chance that the best in-sample one is below the median out of "
        "sample)"
        if selection.pbo is not None
        else "not available"
    )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in selection.notes)
    body = f"""<p>Every backtested configuration of this strategy family is a recorded trial.
Daily Sharpe {selection.sharpe:.3f} ({selection.sharpe * math.sqrt(252):.2f} annualised) over
{selection.days} sessions. N = {selection.n_trials} trials recorded for the family; V, the
variance of their daily Sharpe ratios, = {selection.sr_variance:.4g}; the best of N skill-less
trials would reach a daily Sharpe of {selection.sr0:.3f}. Probabilistic Sharpe (P[true Sharpe
&gt; 0]) {_or_undefined(selection.psr)}; <b>deflated Sharpe {_or_undefined(selection.dsr)}</b>
(the same, against the best of N). PBO: {pbo}.</p><ul>{notes}</ul>{html_table(trials)}"""
    return Section("Trials, deflated Sharpe and overfitting", body)


def closed_trades(ledger: Ledger) -> pl.DataFrame:
    """Every fill that reduces a position closes that part of it at average cost: ``symbol``,
    ``ts``, ``quantity`` closed, ``pnl`` (USD, net of every cost the closed part bore: its
    share of the entry commissions, of the borrow fees charged while it was held, and the
    closing fill's commission) and ``ret`` (pnl over the closed part's cost). Positions that
    keep being resized still yield trades this way. When every position is closed, the trades'
    pnl adds up to the change in cash, to the cent."""
    rows = []
    pos: dict[str, int] = {}
    cost: dict[str, Decimal] = {}  # average entry price of the open position
    carry: dict[str, Decimal] = {}  # costs the open position bore and no trade has taken yet
    charges = sorted(ledger.charges, key=lambda c: c.ts)
    k = 0
    for f in ledger.fills:
        # Borrow accrues at a bar before that bar's fills.
        while k < len(charges) and charges[k].ts <= f.ts:
            c = charges[k]
            carry[c.symbol] = carry.get(c.symbol, Decimal(0)) + c.amount
            k += 1
        held, avg = pos.get(f.symbol, 0), cost.get(f.symbol, Decimal(0))
        opened_commission = f.commission
        if held and (held > 0) != (f.quantity > 0):
            closed = min(abs(f.quantity), abs(held))
            direction = 1 if held > 0 else -1
            share = carry.get(f.symbol, Decimal(0)) * closed / abs(held)
            carry[f.symbol] = carry.get(f.symbol, Decimal(0)) - share
            closing_commission = f.commission * closed / abs(f.quantity)
            opened_commission = f.commission - closing_commission
            pnl = Decimal(direction * closed) * (f.price - avg) - closing_commission - share
            basis = Decimal(closed) * avg
            rows.append(
                {
                    "symbol": f.symbol,
                    "ts": f.ts,
                    "quantity": closed,
                    "pnl": float(pnl),
                    "ret": float(pnl / basis) if basis else 0.0,
                }
            )
        new = held + f.quantity
        if opened_commission and new:
            carry[f.symbol] = carry.get(f.symbol, Decimal(0)) + opened_commission
        if new == 0:
            cost.pop(f.symbol, None)
        elif held == 0 or (held > 0) != (new > 0):
            cost[f.symbol] = f.price  # opened, or flipped through zero
        elif (held > 0) == (f.quantity > 0):
            cost[f.symbol] = (avg * abs(held) + f.price * abs(f.quantity)) / abs(new)
        pos[f.symbol] = new
    schema: dict[str, pl.DataType] = {
        "symbol": pl.String(),
        "ts": pl.Datetime("us", "UTC"),
        "quantity": pl.Int64(),
        "pnl": pl.Float64(),
        "ret": pl.Float64(),
    }
    return pl.DataFrame(rows, schema=schema)


def period_of(ts: pl.Series) -> tuple[date, date]:
    """The first and last New York dates of the bar times ``ts`` (UTC): the test period."""
    days = ts.dt.convert_time_zone(NEW_YORK).dt.date()
    return cast(date, days.min()), cast(date, days.max())


@functools.cache
def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return str(get_plotlyjs())


def _chart(chart_id: str, figure: Any) -> str:
    """A placeholder and the figure's JSON (plotly's own serialisation): the page's one script
    draws every chart from these, so the page holds one copy of plotly.js."""
    spec = str(figure.to_json()).replace("<", "\\u003c")  # never closes the script element
    return (
        f'<div id="{chart_id}" class="chart"></div><script type="application/json" '
        f'class="chart-spec" data-chart="{chart_id}">{spec}</script>'
    )


def _local(ts: pl.Series) -> pl.Series:
    return ts.dt.convert_time_zone(NEW_YORK).dt.replace_time_zone(None)


def _dates(local: pl.Series) -> list[str]:
    """Wall-clock times plotly reads as dates; the time of day only where it varies."""
    fmt = "%Y-%m-%d %H:%M" if local.dt.time().n_unique() > 1 else "%Y-%m-%d"
    return cast(list[str], local.dt.strftime(fmt).to_list())


def _rangebreaks(local: pl.Series) -> list[dict[str, object]]:
    """The time between bars that no bar covers (nights, weekends, holidays, the rest of an
    early close), hidden on the axis so that one session follows the previous. Taken from the
    bars' own times, so no bar is hidden: each gap runs from the end of a bar (its start plus
    the bar's length, the shortest step) to the next bar, one break per length of gap."""
    if local.len() < 2:
        return []
    times = pl.DataFrame({"end": local[:-1], "next": local[1:]})
    step = times.select((pl.col("next") - pl.col("end")).min()).item()
    gaps = (
        times.with_columns(pl.col("end") + step)
        .with_columns(gap=(pl.col("next") - pl.col("end")).dt.total_milliseconds())
        .filter(pl.col("gap") > 0)
        .group_by("gap")
        .agg(pl.col("end").dt.strftime("%Y-%m-%d %H:%M"))
        .sort("gap")
    )
    return [{"values": ends, "dvalue": gap} for gap, ends in gaps.iter_rows()]


def _layout(figure: Any, title: str, x_title: str, y_title: str, percent: bool = False) -> None:
    figure.update_layout(
        title={"text": title, "font": {"size": 14}},
        template="plotly_white",
        height=340,
        margin={"l": 70, "r": 20, "t": 50, "b": 50},
        legend={"orientation": "h", "y": -0.2},
    )
    figure.update_xaxes(title_text=x_title)
    figure.update_yaxes(title_text=y_title)
    if percent:  # a fraction (0.01) read as a percentage (1.0%)
        figure.update_yaxes(tickformat=".1%", hoverformat=".2%")


def _time_chart(
    chart_id: str,
    title: str,
    ts: pl.Series,
    series: dict[str, tuple[npt.NDArray[np.float64], str]],
    y_title: str,
    percent: bool = False,
) -> str:
    """Lines over the bar times ``ts`` (UTC), drawn on a New York date axis."""
    import plotly.graph_objects as go

    local = _local(ts)
    x = _dates(local)
    figure = go.Figure()
    for name, (y, color) in series.items():
        figure.add_trace(
            go.Scatter(x=x, y=y, name=name, mode="lines", line={"color": color, "width": 1.3})
        )
    _layout(figure, title, "New York time", y_title, percent)
    figure.update_layout(hovermode="x unified", showlegend=len(series) > 1)
    figure.update_xaxes(type="date", rangebreaks=_rangebreaks(local))
    return _chart(chart_id, figure)


def _histogram_chart(returns: npt.NDArray[np.float64], title: str) -> str:
    if returns.size == 0:
        return "<p>No closed trade: there is no distribution to show.</p>"
    import plotly.graph_objects as go

    counts, bounds = np.histogram(returns, bins=20)
    centres = (bounds[:-1] + bounds[1:]) / 2
    figure = go.Figure(
        go.Bar(
            x=centres,
            y=counts,
            width=np.diff(bounds),
            marker_color=[GREEN if c >= 0 else RED for c in centres],
            customdata=np.stack([bounds[:-1], bounds[1:]], axis=-1),
            hovertemplate="%{customdata[0]:.3%} to %{customdata[1]:.3%}: %{y} trades"
            "<extra></extra>",
        )
    )
    _layout(figure, title, "Return of a closed trade (net of costs)", "Closed trades")
    figure.update_xaxes(tickformat=".1%")
    return _chart("trade-returns", figure)


def _bars_chart(labels: list[str], values: list[float], title: str) -> str:
    if not values:
        return "<p>No closed trade: there is no PnL by symbol to show.</p>"
    import plotly.graph_objects as go

    figure = go.Figure(
        go.Bar(
            x=labels,
            y=values,
            marker_color=[GREEN if v >= 0 else RED for v in values],
            hovertemplate="%{x}: %{y:,.2f} USD<extra></extra>",
        )
    )
    _layout(figure, title, "Symbol", "PnL of closed trades (USD, net of costs)")
    figure.update_xaxes(type="category")
    figure.update_yaxes(tickformat=",.0f")
    return _chart("pnl-by-symbol", figure)


def _heatmap(returns: pl.DataFrame) -> str:
    """Compounded returns by calendar month (the months of the bars' UTC times), a table."""
    monthly = (
        returns.with_columns(y=pl.col("ts").dt.year(), m=pl.col("ts").dt.month())
        .group_by("y", "m")
        .agg(((1 + pl.col("r")).product() - 1).alias("ret"))
        .sort("y", "m")
    )
    cells = {(r["y"], r["m"]): r["ret"] for r in monthly.iter_rows(named=True)}
    rows = [
        "<table class='heat'><tr><th></th>"
        + "".join(f"<th>{MONTHS[m - 1]}</th>" for m in range(1, 13))
        + "</tr>"
    ]
    for y in sorted({k[0] for k in cells}):
        tds = []
        for m in range(1, 13):
            v = cells.get((y, m))
            if v is None:
                tds.append("<td></td>")
            else:
                a = min(abs(v) * 20, 1.0)
                color = f"rgba(44,160,44,{a:.2f})" if v >= 0 else f"rgba(214,39,40,{a:.2f})"
                tds.append(f"<td style='background:{color}'>{v:+.2%}</td>")
        rows.append(f"<tr><th>{y}</th>{''.join(tds)}</tr>")
    return "".join(rows) + "</table>"


def _shown(m: dict[str, float], undefined: dict[str, str], key: str, spec: str) -> str:
    """A figure formatted, or why it has no value (never a sentinel)."""
    if key in m:
        return format(m[key], spec)
    return f"not available: {undefined.get(key, 'not computed for this backtest')}"


def headline_html(
    m: dict[str, float],
    undefined: dict[str, str],
    *,
    selection: Selection | None,
    benchmark: str,
    period: tuple[date, date],
    periods_per_year: float,
) -> str:
    """The headline figures of ``m`` (the report's metrics), each explained in a sentence."""
    start, end = (d.isoformat() for d in period)
    ppy = f"{periods_per_year:g}"
    daily = (
        f" Of daily returns it is {m['sharpe_daily_annualised']:.2f} (the daily Sharpe "
        f"{m['sharpe_daily']:.3f} × √252), the figure the deflated Sharpe below tests."
        if "sharpe_daily_annualised" in m and "sharpe_daily" in m
        else ""
    )
    rows = [
        (
            "Total return",
            _shown(m, undefined, "total_return", "+.2%"),
            f"The change of the strategy's equity from the first bar of {start} to the last "
            f"of {end}, net of every cost (commissions, slippage and impact, borrow on "
            f"shorts); {_shown(m, undefined, 'annual_return', '+.2%')} a year, compounded.",
        ),
        (
            "Sharpe ratio (annualised)",
            _shown(m, undefined, "sharpe", ".2f"),
            f"The mean of the bar returns over their standard deviation, times √{ppy} (the "
            f"bars in a year); no risk-free rate is subtracted.{daily}",
        ),
        (
            "Beta",
            _shown(m, undefined, "beta", ".2f"),
            f"Against {benchmark}: the slope of the strategy's bar returns on the benchmark's "
            "over the same bars (0: none of its moves, 1: all of them).",
        ),
        (
            "Alpha (a year)",
            _shown(m, undefined, "alpha", "+.2%"),
            f"The mean bar return that the beta to {benchmark} does not explain, times {ppy} "
            "(simple, not compounded).",
        ),
        _dsr_row(undefined, selection),
        _pbo_row(undefined, selection),
        (
            "Maximum drawdown",
            _shown(m, undefined, "max_drawdown", ".2%"),
            "The deepest fall of the equity from a previous peak; the longest time under "
            f"water lasted {_shown(m, undefined, 'max_drawdown_periods', '.0f')} bars.",
        ),
        (
            "Closed trades",
            _shown(m, undefined, "trades_closed", ".0f"),
            "Fills that reduced a position, each closing that part at its average cost; "
            f"winning share, net of costs: {_shown(m, undefined, 'trades_win_rate', '.1%')}.",
        ),
    ]
    body = "".join(
        f"<tr><th>{html.escape(name)}</th><td class='value'>{html.escape(value)}</td>"
        f"<td>{html.escape(why)}</td></tr>"
        for name, value, why in rows
    )
    return f"<table class='headline'>{body}</table>"


def _dsr_row(undefined: dict[str, str], selection: Selection | None) -> tuple[str, str, str]:
    name = "Deflated Sharpe ratio"
    if selection is None:
        return (
            name,
            f"not available: {undefined['deflated_sharpe']}",
            "It deflates the Sharpe ratio for the N configurations tried before this one "
            "was chosen.",
        )
    n = selection.n_trials
    if selection.dsr is None:
        return (
            name,
            f"not available (N = {n} trials): {undefined['deflated_sharpe']}",
            "It deflates the daily Sharpe ratio for the N trials recorded for this strategy "
            "family.",
        )
    psr = f"{selection.psr:.3f}" if selection.psr is not None else "not available"
    return (
        name,
        f"{selection.dsr:.3f} (N = {n} trials)",
        "The probability that the true daily Sharpe ratio is above "
        f"{selection.sr0:.3f}, the best daily Sharpe that N = {n} skill-less trials would be "
        f"expected to show given the variance of the trials' Sharpe ratios "
        f"({selection.sr_variance:.4g}): the Sharpe ratio's significance after choosing this "
        f"configuration among the N = {n} trials recorded for its family. Near 1, the skill "
        "survives the selection (0.95 is the usual bar); before deflation (probabilistic "
        f"Sharpe, against 0) it is {psr}.",
    )


def _pbo_row(undefined: dict[str, str], selection: Selection | None) -> tuple[str, str, str]:
    name = "Probability of backtest overfitting (PBO)"
    if selection is None or selection.pbo is None:
        why = undefined.get("pbo", "no trials were recorded for this backtest")
        return (name, f"not available: {why}", "It needs several configurations tried together.")
    return (
        name,
        f"{selection.pbo:.2f}",
        "By combinatorially symmetric cross-validation over the "
        f"{selection.pbo_configurations} configurations tried together on the same days: the "
        "share of the splits of those days into halves in which the configuration best on "
        "one half ranks below the median on the other. 0.5 or more: choosing the best in "
        "sample is no better than chance.",
    )


def build_report(
    result: BacktestResult,
    benchmark: pl.DataFrame,
    *,
    periods_per_year: float,
    title: str = "Backtest",
    selection: Selection | None = None,
    sections: tuple[Section, ...] = (),
    benchmark_name: str = "the benchmark",
) -> Report:
    """Metrics and HTML for ``result``; ``benchmark`` has ``ts`` and ``close`` (e.g. SPY or an
    equal-weight index, named ``benchmark_name`` in the text); ``selection`` adds the deflated
    Sharpe with its N and the PBO; ``sections`` are appended as they are. The title names the
    test period (the first and last New York dates of the bars)."""
    eq = result.equity.sort("ts")
    r = eq.select(pl.col("ts"), r=pl.col("equity").pct_change().fill_null(0.0))
    bench = benchmark.sort("ts").select("ts", b=pl.col("close").pct_change().fill_null(0.0))
    joined = r.join(bench, on="ts", how="left").with_columns(pl.col("b").fill_null(0.0))
    stats = return_stats(joined["r"].to_numpy(), periods_per_year, joined["b"].to_numpy())
    trips = closed_trades(result.ledger)
    trades = trade_stats(trips["ret"].to_numpy(), trips["pnl"].to_numpy())
    returns = joined["r"].to_numpy()
    commissions = float(sum(f.commission for f in result.ledger.fills))
    slippage = float(sum(f.slippage for f in result.ledger.fills))
    borrow = float(sum(c.amount for c in result.ledger.charges if c.kind == "borrow"))
    mean_equity = cast(float, eq["equity"].mean()) or 1.0
    turnover = float(sum(abs(f.quantity) * f.price for f in result.ledger.fills)) / mean_equity
    exposure = cast(float, (eq["gross"] / eq["equity"]).mean()) or 0.0
    refused, states = risk_tables(result)
    years = eq.height / periods_per_year
    metrics, undefined = defined(
        {
            **stats.as_dict(),
            **{TRADE_FIGURES.get(k, f"trades_{k}"): float(v) for k, v in trades.__dict__.items()},
            **(selection.as_dict() if selection is not None else {}),
            "commissions_usd": commissions,
            "slippage_usd": slippage,
            "borrow_usd": borrow,
            "turnover": turnover,
            "turnover_annual": turnover / years if years > 0 else float("nan"),
            "average_gross_exposure": exposure,
            "refused_orders": float(refused["orders"].sum()) if refused.height else 0.0,
            **{f"refused_{r}": float(n) for r, n in refused.iter_rows()},
            **{f"time_{s.lower()}": float(x) for s, _, x in states.iter_rows()},
            "fills": float(len(result.ledger.fills)),
            "rejected_or_held": float(len(result.ledger.events)),
        }
    )
    if selection is None:
        undefined["deflated_sharpe"] = "no trials were recorded for this backtest"
    else:
        if selection.dsr is None:
            undefined["deflated_sharpe"] = "; ".join(selection.notes)
        if selection.pbo is None:
            undefined["pbo"] = "; ".join(selection.notes) or "not available"
    underwater, _, _ = drawdowns(returns)
    bench_curve = (1 + joined["b"]).cum_prod() * float(eq["equity"][0])
    roll = joined.with_columns(
        sr=(pl.col("r").rolling_mean(130) / pl.col("r").rolling_std(130))
        * math.sqrt(periods_per_year)
    )
    by_symbol = trips.group_by("symbol").agg(pl.col("pnl").sum()).sort("symbol")
    period = period_of(eq["ts"])
    span = f"{period[0].isoformat()} to {period[1].isoformat()}"
    heading = f"{title}, {span}"
    table = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v:.6g}</td></tr>" for k, v in metrics.items()
    ) + "".join(
        f"<tr><td>{html.escape(k)}</td><td>undefined: {html.escape(why)}</td></tr>"
        for k, why in undefined.items()
    )
    extra = "".join(f"<h2>{html.escape(x.title)}</h2>{x.html}" for x in sections)
    ts = eq["ts"]
    equity_chart = _time_chart(
        "equity",
        f"Equity and {benchmark_name} (rebased to the starting equity), {span}",
        ts,
        {
            "strategy": (eq["equity"].to_numpy(), BLUE),
            benchmark_name: (bench_curve.to_numpy(), ORANGE),
        },
        "Equity (USD)",
    )
    drawdown_chart = _time_chart(
        "drawdown",
        f"Drawdown from the running peak, {span}",
        ts,
        {"drawdown": (underwater, RED)},
        "Drawdown",
        percent=True,
    )
    sharpe_chart = _time_chart(
        "rolling-sharpe",
        f"Rolling Sharpe ratio (130 bars, annualised), {span}",
        ts,
        {"rolling Sharpe": (roll["sr"].fill_null(float("nan")).to_numpy(), BLUE)},
        "Sharpe ratio (annualised)",
    )
    exposure_chart = _time_chart(
        "exposure",
        f"Gross exposure over equity, {span}",
        ts,
        {"gross exposure": ((eq["gross"] / eq["equity"]).to_numpy(), BLUE)},
        "Gross exposure (% of equity)",
        percent=True,
    )
    headline = headline_html(
        metrics,
        undefined,
        selection=selection,
        benchmark=benchmark_name,
        period=period,
        periods_per_year=periods_per_year,
    )
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>{
        html.escape(heading)
    }</title>
<style>body{{font-family:sans-serif;margin:24px;max-width:1000px}}td,th{{padding:2px 6px}}
.heat td{{font-size:11px;text-align:right}}.chart{{width:100%;height:340px}}
.headline{{width:100%;table-layout:fixed}}.headline td{{vertical-align:top}}
.headline th{{width:24%;text-align:left;vertical-align:top}}
.headline .value{{width:20%;font-weight:bold}}</style>
<script>{_plotly_js()}</script></head><body>
<h1>{html.escape(heading)}</h1>
<h2>Headline figures</h2>{headline}
<h2>Equity and benchmark</h2>{equity_chart}
<h2>Drawdown</h2>{drawdown_chart}
<h2>Monthly returns</h2>{_heatmap(joined)}
<h2>Rolling Sharpe (130 bars, annualised)</h2>{sharpe_chart}
<h2>Gross exposure / equity</h2>{exposure_chart}
<h2>Distribution of trade returns</h2>{
        _histogram_chart(trips["ret"].to_numpy(), f"Returns of the closed trades, {span}")
    }
<h2>PnL by symbol</h2>{
        _bars_chart(
            by_symbol["symbol"].to_list(),
            by_symbol["pnl"].to_list(),
            f"PnL of the closed trades by symbol, {span}",
        )
    }
<h2>Costs by kind</h2><table><tr><td>commissions</td><td>{commissions:,.2f} USD</td></tr>
<tr><td>slippage and impact</td><td>{slippage:,.2f} USD</td></tr>
<tr><td>borrow on shorts</td><td>{borrow:,.2f} USD</td></tr></table>
<p>Turnover: {turnover:,.2f} x mean equity traded over the backtest.</p>
<h2>Risk: orders refused and trading states</h2>{_risk_html(refused, states)}
{extra}
<h2>Metrics</h2><table>{table}</table>
<script>{DRAW_CHARTS}</script></body></html>"""
    return Report(metrics, body, undefined)


def risk_tables(result: BacktestResult) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Orders refused by rule (``rule``, ``orders``, most first) and the time in each trading
    state (``state``, ``bars``, ``share`` of the backtest's bar times; every state listed)."""
    rules = [e.rule for e in result.risk_events if e.kind == "refused"]
    refused = (
        pl.DataFrame({"rule": rules}, schema={"rule": pl.String})
        .group_by("rule")
        .agg(orders=pl.len())
        .sort("orders", "rule", descending=[True, False])
    )
    seen = (
        result.equity["state"]
        if "state" in result.equity.columns
        else pl.Series([], dtype=pl.String)
    )
    n = max(len(seen), 1)
    counts = dict(seen.value_counts().iter_rows()) if len(seen) else {}
    states = pl.DataFrame(
        {
            "state": [s.value for s in TradingState],
            "bars": [int(counts.get(s.value, 0)) for s in TradingState],
        }
    ).with_columns(share=pl.col("bars") / n)
    return refused, states


def _risk_html(refused: pl.DataFrame, states: pl.DataFrame) -> str:
    orders = (
        html_table(refused) if refused.height else "<p>No order was refused by a risk check.</p>"
    )
    return f"<h3>Orders refused, by rule</h3>{orders}<h3>Time in each trading state</h3>" + (
        html_table(states.with_columns(pl.col("share").round(4)))
    )


def write_report(report: Report, html_path: str, json_path: str) -> None:
    """The page to ``html_path`` and the metrics with the undefined figures' reasons to
    ``json_path`` (strict JSON: no NaN)."""
    from pathlib import Path

    Path(html_path).parent.mkdir(parents=True, exist_ok=True)
    Path(html_path).write_text(report.html)
    body = {"metrics": report.metrics, "undefined": report.undefined}
    Path(json_path).write_text(json.dumps(body, indent=2, sort_keys=True, allow_nan=False))


def equal_weight_index(bars: pl.DataFrame) -> pl.DataFrame:
    """An equal-weight index of the universe (``ts``, ``close``) from the bars' returns."""
    r = bars.sort("symbol", "ts").with_columns(
        r=pl.col("close").pct_change().over("symbol").fill_null(0.0)
    )
    idx = r.group_by("ts").agg(pl.col("r").mean()).sort("ts")
    return idx.select("ts", close=(1 + pl.col("r")).cum_prod())
