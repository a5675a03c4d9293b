"""The model backtest study (grid of trials, deflated Sharpe, PBO, holdout) and its report on
the sample's out-of-sample predictions; trade accounting to the cent."""

from __future__ import annotations

import base64
import html
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl
import pytest
from plotly.offline import get_plotlyjs

from pipelines.backtest.broker import BrokerConfig, CostModel, Fill, Ledger
from pipelines.backtest.model_backtest import (
    BacktestStudy,
    Market,
    run_backtest_study,
    simulate_model,
)
from pipelines.backtest.report import build_report, closed_trades, write_report
from pipelines.backtest.statistics import expected_max_sharpe
from pipelines.backtest.strategy import SizingConfig
from pipelines.backtest.trials import MemoryTrialLog
from pipelines.labels.triple_barrier import BarrierConfig
from pipelines.models.estimators import ModelConfig
from pipelines.models.splits import walk_forward
from pipelines.models.walk_forward import run_walk_forward

pytestmark = pytest.mark.unit
NEW_YORK = ZoneInfo("America/New_York")
COSTS = CostModel(
    slippage_bps=1.0,
    half_spread_bps=1.0,
    impact_k=0.1,
    commission_per_share=Decimal("0.005"),
    commission_min=Decimal("1"),
    borrow_bps=30.0,
)
MARKET = Market(minutes=15)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def predictions(sample_bars: pl.DataFrame) -> pl.DataFrame:
    from tests.models.conftest import labelled

    data = labelled(sample_bars)
    features = [c for c in data.columns if c.startswith(("trend_", "momentum_", "volatility_"))]
    folds = walk_forward(
        data, train=timedelta(days=10), validation=timedelta(days=3), test=timedelta(days=3)
    )
    wf = run_walk_forward(
        data, folds, ModelConfig("lightgbm", seed=2, num_boost_round=40), features=features
    )
    return wf.predictions


def _grid() -> dict[str, SizingConfig]:
    exits = {"barriers": {"profit_take": 2.0, "stop_loss": 2.0}, "holding": {}}
    return {
        f"threshold={t} exits={e}": SizingConfig(
            threshold=t, flat_at_close=True, max_holding_bars=16, **kw
        )
        for t in (0.0, 0.01, 0.03)
        for e, kw in exits.items()
    }


@dataclass(frozen=True)
class Studied:
    """The study of :func:`_grid` on the out-of-sample predictions, and what it was given."""

    study: BacktestStudy
    oos: pl.DataFrame
    log: MemoryTrialLog
    grid: dict[str, SizingConfig]


@pytest.fixture(scope="module")
def studied(sample_bars: pl.DataFrame, predictions: pl.DataFrame) -> Studied:
    last = predictions["ts"].max()
    held = predictions.filter(pl.col("ts") > last - timedelta(days=3)).with_columns(  # type: ignore[operator]
        segment=pl.lit("time")
    )
    oos = predictions.filter(pl.col("ts") <= last - timedelta(days=3))  # type: ignore[operator]
    log = MemoryTrialLog()
    grid = _grid()
    study = run_backtest_study(
        sample_bars,
        oos,
        configurations=grid,
        selected="threshold=0.01 exits=barriers",
        broker=BrokerConfig(COSTS, participation=0.05, max_leverage=1.0),
        cash=Decimal("1000000"),
        barriers=BarrierConfig(),
        market=MARKET,
        trial_log=log,
        family="test",
        basis="run-1",
        as_of=NOW,
        holdout=held,
    )
    return Studied(study, oos, log, grid)


def test_study_reports_trials_dsr_pbo_and_holdout(
    sample_bars: pl.DataFrame, studied: Studied, tmp_path: Path
) -> None:
    study, oos, log, grid = studied.study, studied.oos, studied.log, studied.grid
    m = study.report.metrics
    assert m["fills"] > 0 and m["commissions_usd"] > 0 and m["borrow_usd"] > 0
    assert m["slippage_usd"] > 0 and -1.0 < m["total_return"] < 1.0 and m["max_drawdown"] <= 0.0
    # Every configuration is a trial; N counts them, V is their daily Sharpe variance.
    assert m["n_trials"] == len(grid) == len(study.trials)
    sharpes = [t.sharpe for t in study.trials]
    assert m["trials_sharpe_variance"] == pytest.approx(np.var(sharpes, ddof=1))
    assert m["expected_max_sharpe"] == pytest.approx(
        expected_max_sharpe(len(grid), float(np.var(sharpes, ddof=1)))
    )
    assert 0.0 < m["deflated_sharpe"] < m["psr"] < 1.0  # reported, and deflated by N > 1
    assert 0.0 <= study.selection.pbo <= 1.0  # type: ignore[operator]
    assert all(math.isfinite(v) for v in m.values())  # undefined figures are listed, not NaN
    # The same grid on the same predictions again is the same trials: N does not grow.
    again = run_backtest_study(
        sample_bars,
        oos,
        configurations=grid,
        selected="threshold=0.01 exits=barriers",
        broker=BrokerConfig(COSTS, participation=0.05, max_leverage=1.0),
        cash=Decimal("1000000"),
        barriers=BarrierConfig(),
        market=MARKET,
        trial_log=log,
        family="test",
        basis="run-1",
        as_of=NOW,
    )
    assert again.selection.n_trials == len(grid)
    assert set(study.holdout) == {"time"} and study.holdout["time"].metrics["fills"] > 0
    html_path, json_path = tmp_path / "r.html", tmp_path / "r.json"
    write_report(study.report, str(html_path), str(json_path))
    page = html_path.read_text()
    for title in (
        "Equity and benchmark",
        "Drawdown",
        "Monthly returns",
        "Rolling Sharpe",
        "Gross exposure",
        "Distribution of trade returns",
        "PnL by symbol",
        "Costs by kind",
        "Trials, deflated Sharpe and overfitting",
        "Holdout (never used",
    ):
        assert title in page
    assert f"N = {len(grid)} trials" in page
    # Self-contained: one copy of plotly.js, nothing fetched (no src, no stylesheet link).
    assert page.count(get_plotlyjs()[:300]) == 1
    assert re.search(r"<(script|img|iframe)[^>]*\bsrc=|<link\b", page) is None
    assert set(charts(page)) == {
        "equity",
        "drawdown",
        "rolling-sharpe",
        "exposure",
        "trade-returns",
        "pnl-by-symbol",
    }
    stored = json.loads(json_path.read_text())  # strict JSON: a NaN would not parse back
    assert stored["metrics"]["n_trials"] == len(grid)
    assert "trades_trades" not in stored["metrics"] and m["trades_closed"] > 0


def charts(page: str) -> dict[str, dict[str, Any]]:
    """The report's plotly figures (their JSON as the page carries it), by chart id."""
    found = re.findall(
        r'<script type="application/json" class="chart-spec" data-chart="([^"]+)">(.*?)</script>',
        page,
        flags=re.S,
    )
    return {chart: json.loads(spec) for chart, spec in found}


def values(array: list[Any] | dict[str, str]) -> np.ndarray:
    """A trace's numbers: a JSON list, or plotly's typed array (``dtype``, base64 ``bdata``)."""
    if isinstance(array, dict):
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=np.dtype(array["dtype"]))
    return np.array(array, dtype=float)


def headline(page: str) -> dict[str, tuple[str, str]]:
    """The headline table: figure -> (value as shown, its explanation)."""
    table = re.search(r"<table class='headline'>(.*?)</table>", page, flags=re.S)
    assert table is not None, "no headline section"
    rows = re.findall(
        r"<tr><th>(.*?)</th><td class='value'>(.*?)</td><td>(.*?)</td></tr>", table[1], re.S
    )
    return {html.unescape(n): (html.unescape(v), html.unescape(w)) for n, v, w in rows}


def _new_york_date(ts: datetime) -> str:
    return ts.astimezone(NEW_YORK).date().isoformat()


def test_charts_are_dated_and_span_the_test_period(studied: Studied) -> None:
    study, oos = studied.study, studied.oos
    page = study.report.html
    # The test period runs from the first prediction's session to the last one's.
    first, last = _new_york_date(oos["ts"].min()), _new_york_date(oos["ts"].max())  # type: ignore[arg-type]
    span = f"{first} to {last}"
    assert re.search(rf"<h1>[^<]*{span}</h1>", page) and f"{span}</title>" in page
    figures = charts(page)
    for chart in ("equity", "drawdown", "rolling-sharpe", "exposure"):
        layout = figures[chart]["layout"]
        assert layout["xaxis"]["type"] == "date", chart
        assert layout["xaxis"]["title"]["text"] == "New York time", chart
        assert layout["yaxis"]["title"]["text"], chart
        assert span in layout["title"]["text"], chart
        x = figures[chart]["data"][0]["x"]
        assert x[0].startswith(first) and x[-1].startswith(last), chart
        assert len(x) == study.result.equity.height, chart
        # The axis skips nights, weekends and holidays, and no bar.
        breaks = layout["xaxis"]["rangebreaks"]
        hidden = _hidden_by_breaks(breaks)
        assert not [t for t in x if hidden(datetime.fromisoformat(t))], chart
        assert hidden(datetime(2019, 1, 26, 12)) and hidden(datetime(2019, 1, 28, 3)), chart
    # Returns and drawdowns read in percent.
    assert figures["drawdown"]["layout"]["yaxis"]["tickformat"].endswith("%")
    assert figures["exposure"]["layout"]["yaxis"]["tickformat"].endswith("%")
    equity = figures["equity"]["data"]
    assert [t["name"] for t in equity] == ["strategy", "SPY"]  # the sample holds SPY
    assert values(equity[0]["y"])[-1] == pytest.approx(study.result.equity["equity"][-1])
    m = study.report.metrics
    trades = figures["trade-returns"]
    assert trades["layout"]["xaxis"]["tickformat"].endswith("%")
    assert trades["layout"]["xaxis"]["title"]["text"] and trades["layout"]["yaxis"]["title"]["text"]
    assert values(trades["data"][0]["y"]).sum() == m["trades_closed"]
    pnl = figures["pnl-by-symbol"]
    assert pnl["layout"]["xaxis"]["title"]["text"] == "Symbol"
    assert "USD" in pnl["layout"]["yaxis"]["title"]["text"]
    assert values(pnl["data"][0]["y"]).sum() == pytest.approx(m["trades_pnl_usd"])


def _hidden_by_breaks(breaks: list[dict[str, Any]]) -> Any:
    """Whether plotly's range breaks ``breaks`` (``values`` each hiding ``dvalue`` ms from it)
    hide a wall-clock time."""
    spans = [
        (start, start + timedelta(milliseconds=b["dvalue"]))
        for b in breaks
        for start in map(datetime.fromisoformat, b["values"])
    ]
    return lambda t: any(start <= t < end for start, end in spans)


def test_the_headline_explains_each_figure_and_the_deflated_sharpes_n(studied: Studied) -> None:
    study, n = studied.study, len(studied.grid)
    m, rows = study.report.metrics, headline(study.report.html)
    assert rows["Total return"][0] == f"{m['total_return']:+.2%}"
    assert "net of every cost" in rows["Total return"][1]
    assert rows["Sharpe ratio (annualised)"][0] == f"{m['sharpe']:.2f}"
    assert f"{m['sharpe_daily_annualised']:.2f}" in rows["Sharpe ratio (annualised)"][1]
    assert rows["Beta"][0] == f"{m['beta']:.2f}" and "Against SPY" in rows["Beta"][1]
    assert rows["Alpha (a year)"][0] == f"{m['alpha']:+.2%}" and "SPY" in rows["Alpha (a year)"][1]
    value, why = rows["Deflated Sharpe ratio"]
    assert value == f"{m['deflated_sharpe']:.3f} (N = {n} trials)"
    assert f"N = {n} skill-less trials" in why and f"{m['expected_max_sharpe']:.3f}" in why
    assert f"it is {m['psr']:.3f}" in why
    value, why = rows["Probability of backtest overfitting (PBO)"]
    assert value == f"{m['pbo']:.2f}" and "median" in why
    assert rows["Closed trades"][0] == f"{m['trades_closed']:.0f}"
    for name, (value, why) in rows.items():
        assert why.endswith(".") and len(why.split()) > 8, name
        assert "nan" not in value.lower() and "inf" not in value.lower(), name


def test_an_absent_figure_is_said_not_printed(
    sample_bars: pl.DataFrame, predictions: pl.DataFrame
) -> None:
    result = simulate_model(
        sample_bars,
        predictions,
        sizing=SizingConfig(threshold=0.0, flat_at_close=True),
        broker=BrokerConfig(COSTS, max_leverage=1.0),
        cash=Decimal("1000000"),
        barriers=BarrierConfig(),
        market=MARKET,
    )
    flat = result.equity.select("ts", close=pl.lit(100.0))
    report = build_report(result, flat, periods_per_year=MARKET.periods_per_year)
    rows = headline(report.html)
    assert "beta" not in report.metrics and "deflated_sharpe" not in report.metrics
    assert rows["Beta"][0] == "not available: the benchmark did not move"
    assert rows["Alpha (a year)"][0] == "not available: the benchmark did not move"
    assert rows["Deflated Sharpe ratio"][0] == (
        "not available: no trials were recorded for this backtest"
    )
    assert rows["Probability of backtest overfitting (PBO)"][0].startswith("not available: ")
    assert "Of daily returns" not in rows["Sharpe ratio (annualised)"][1]  # no daily figure


def test_trades_add_up_to_the_cash_with_every_cost(
    sample_bars: pl.DataFrame, predictions: pl.DataFrame
) -> None:
    result = simulate_model(
        sample_bars,
        predictions,
        sizing=SizingConfig(threshold=0.0, flat_at_close=True, profit_take=2.0, stop_loss=2.0),
        broker=BrokerConfig(COSTS, max_leverage=1.0),
        cash=Decimal("1000000"),
        barriers=BarrierConfig(),
        market=MARKET,
    )
    ledger = result.ledger
    assert not any(ledger.positions.values())  # flat at the last session's close
    cent = Decimal("0.01")
    assert ledger.charges and all(c.amount == c.amount.quantize(cent) for c in ledger.charges)
    trades = closed_trades(ledger)
    change = ledger.cash - Decimal("1000000")
    assert abs(Decimal(repr(trades["pnl"].sum())) - change) < cent
    # The costs are material here: leaving any of them out could not add up to the cent.
    entry_commissions = sum((f.commission for f in ledger.fills), Decimal(0)) / 2
    assert entry_commissions > 1 and sum((c.amount for c in ledger.charges), Decimal(0)) > cent


def test_closed_trades_at_average_cost_with_costs() -> None:
    t = [datetime(2019, 1, 4, 15, m, tzinfo=UTC) for m in range(5)]
    d = Decimal
    ledger = Ledger(
        cash=d("0"),
        fills=[
            Fill("a", "X", t[0], 10, d("100"), d("1"), d("0"), t[0]),
            Fill("b", "X", t[1], 10, d("110"), d("1"), d("0"), t[1]),
            Fill("c", "X", t[2], -15, d("120"), d("1"), d("0"), t[2]),
            Fill("d", "X", t[3], -10, d("90"), d("1"), d("0"), t[3]),  # closes 5, opens a 5 short
            Fill("e", "X", t[4], 5, d("80"), d("1"), d("0"), t[4]),  # closes the short
        ],
    )
    from pipelines.backtest.broker import Charge

    ledger.charges.append(Charge("X", t[4], "borrow", d("0.30")))
    trades = closed_trades(ledger)
    assert trades["quantity"].to_list() == [15, 5, 5]
    # 15 of 20 shares close: 3/4 of the two entry commissions, and the exit commission.
    assert trades["pnl"][0] == pytest.approx(15 * 15 - 1.5 - 1)
    # the last 5 of the long: the rest of the entry commissions, half the flipping fill's.
    assert trades["pnl"][1] == pytest.approx(5 * (90 - 105) - 0.5 - 0.5)
    # the short: the other half of the flipping fill's commission, the borrow, its exit's.
    assert trades["pnl"][2] == pytest.approx(5 * (90 - 80) - 0.5 - 0.30 - 1)
    assert trades["ret"][0] == pytest.approx((225 - 2.5) / (15 * 105))
    total = sum(trades["pnl"].to_list())
    cash_change = -(10 * 100 + 10 * 110 - 15 * 120 - 10 * 90 + 5 * 80) - 5 - 0.30
    assert total == pytest.approx(cash_change)


def test_impact_is_priced_with_the_labels_volatility(
    sample_bars: pl.DataFrame, predictions: pl.DataFrame
) -> None:
    from dataclasses import replace

    from pipelines.backtest.engine import MovingAverageCross, run_backtest

    def slippage(impact_k: float) -> float:
        result = simulate_model(
            sample_bars,
            predictions,
            sizing=SizingConfig(threshold=0.0, flat_at_close=True),
            broker=BrokerConfig(replace(COSTS, impact_k=impact_k), max_leverage=1.0),
            cash=Decimal("1000000"),
            barriers=BarrierConfig(),
            market=MARKET,
        )
        return float(sum(f.slippage for f in result.ledger.fills))

    assert slippage(0.5) > slippage(0.0) * 1.05  # the impact is not silently zero
    with pytest.raises(ValueError, match="impact_k > 0"):
        run_backtest(
            sample_bars, MovingAverageCross(), cash=Decimal("1000000"), config=BrokerConfig(COSTS)
        )
