"""The backtest report: headline metrics (JSON) and a self-contained HTML page of charts.

Charts are inline SVG, so the file opens anywhere without a network: equity against the
benchmark, drawdown, monthly returns, rolling Sharpe, gross exposure, the distribution of trade
returns, PnL by symbol and costs by kind; then what selecting this configuration among every
trial costs (deflated Sharpe with its N, PBO) and any further sections (the skill gate, the
holdout). A figure that is undefined on a backtest (a profit factor without a losing trade, a
beta against a flat benchmark) is never a NaN: it is left out of the metrics and listed in
``undefined`` with the reason.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import cast

import numpy as np
import polars as pl

from pipelines.backtest.analytics import drawdowns, return_stats, trade_stats
from pipelines.backtest.broker import Ledger
from pipelines.backtest.engine import BacktestResult
from pipelines.backtest.trials import Selection
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


def _svg_lines(
    series: dict[str, list[float]],
    width: int = 720,
    height: int = 220,
    colors: tuple[str, ...] = ("#1f77b4", "#ff7f0e"),
) -> str:
    values = [v for s in series.values() for v in s if math.isfinite(v)]
    if not values:
        return "<p>(no data)</p>"
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    parts = [f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">']
    for (name, ys), color in zip(series.items(), colors, strict=False):
        n = max(len(ys) - 1, 1)
        pts = " ".join(
            f"{i * width / n:.1f},{height - (y - lo) / span * (height - 10) - 5:.1f}"
            for i, y in enumerate(ys)
            if math.isfinite(y)
        )
        parts.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="1.2" points="{pts}">'
            f"<title>{html.escape(name)}</title></polyline>"
        )
    parts.append(
        f'<text x="4" y="12" font-size="10">{hi:.4g}</text>'
        f'<text x="4" y="{height - 2}" font-size="10">{lo:.4g}</text></svg>'
    )
    legend = " ".join(
        f'<span style="color:{c}">&#9632; {html.escape(n)}</span>'
        for n, c in zip(series, colors, strict=False)
    )
    return "".join(parts) + f"<div>{legend}</div>"


def _svg_bars(labels: list[str], values: list[float], width: int = 720, height: int = 200) -> str:
    if not values:
        return "<p>(no data)</p>"
    top = max(abs(v) for v in values) or 1.0
    w = width / len(values)
    mid = height / 2
    parts = [f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">']
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        h = abs(v) / top * (mid - 5)
        y = mid - h if v >= 0 else mid
        color = "#2ca02c" if v >= 0 else "#d62728"
        parts.append(
            f'<rect x="{i * w + 1:.1f}" y="{y:.1f}" width="{max(w - 2, 1):.1f}" '
            f'height="{h:.1f}" fill="{color}"><title>{html.escape(label)}: {v:.4g}'
            "</title></rect>"
        )
    parts.append(f'<line x1="0" y1="{mid}" x2="{width}" y2="{mid}" stroke="#888"/></svg>')
    return "".join(parts)


def _heatmap(returns: pl.DataFrame) -> str:
    monthly = (
        returns.with_columns(y=pl.col("ts").dt.year(), m=pl.col("ts").dt.month())
        .group_by("y", "m")
        .agg(((1 + pl.col("r")).product() - 1).alias("ret"))
        .sort("y", "m")
    )
    cells = {(r["y"], r["m"]): r["ret"] for r in monthly.iter_rows(named=True)}
    rows = [
        "<table class='heat'><tr><th></th>"
        + "".join(f"<th>{m}</th>" for m in range(1, 13))
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


def build_report(
    result: BacktestResult,
    benchmark: pl.DataFrame,
    *,
    periods_per_year: float,
    title: str = "Backtest",
    selection: Selection | None = None,
    sections: tuple[Section, ...] = (),
) -> Report:
    """Metrics and HTML for ``result``; ``benchmark`` has ``ts`` and ``close`` (e.g. SPY or an
    equal-weight index); ``selection`` adds the deflated Sharpe with its N and the PBO;
    ``sections`` are appended as they are."""
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
            **{f"trades_{k}": float(v) for k, v in trades.__dict__.items()},
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
    hist: list[float] = []
    edges: list[float] = []
    if trips.height:
        counts, bounds = np.histogram(trips["ret"].to_numpy(), bins=20)
        hist, edges = counts.astype(float).tolist(), bounds.tolist()
    table = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v:.6g}</td></tr>" for k, v in metrics.items()
    ) + "".join(
        f"<tr><td>{html.escape(k)}</td><td>undefined: {html.escape(why)}</td></tr>"
        for k, why in undefined.items()
    )
    extra = "".join(f"<h2>{html.escape(x.title)}</h2>{x.html}" for x in sections)
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:24px;max-width:900px}}td,th{{padding:2px 6px}}
.heat td{{font-size:11px;text-align:right}}</style></head><body>
<h1>{html.escape(title)}</h1>
<h2>Equity and benchmark</h2>{
        _svg_lines({"strategy": eq["equity"].to_list(), "benchmark": bench_curve.to_list()})
    }
<h2>Drawdown</h2>{_svg_lines({"underwater": underwater.tolist()}, colors=("#d62728",))}
<h2>Monthly returns</h2>{_heatmap(joined)}
<h2>Rolling Sharpe (130 bars, annualised)</h2>{
        _svg_lines({"rolling Sharpe": roll["sr"].fill_null(float("nan")).to_list()})
    }
<h2>Gross exposure / equity</h2>{_svg_lines({"exposure": (eq["gross"] / eq["equity"]).to_list()})}
<h2>Distribution of trade returns</h2>{_svg_bars([f"{e:.3%}" for e in edges[:-1]], hist)}
<h2>PnL by symbol</h2>{_svg_bars(by_symbol["symbol"].to_list(), by_symbol["pnl"].to_list())}
<h2>Costs by kind</h2><table><tr><td>commissions</td><td>{commissions:,.2f} USD</td></tr>
<tr><td>slippage and impact</td><td>{slippage:,.2f} USD</td></tr>
<tr><td>borrow on shorts</td><td>{borrow:,.2f} USD</td></tr></table>
<p>Turnover: {turnover:,.2f} x mean equity traded over the backtest.</p>
<h2>Risk: orders refused and trading states</h2>{_risk_html(refused, states)}
{extra}
<h2>Metrics</h2><table>{table}</table></body></html>"""
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
