"""The model backtest study (grid of trials, deflated Sharpe, PBO, holdout) and its report on
the sample's out-of-sample predictions; trade accounting to the cent."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipelines.backtest.broker import BrokerConfig, CostModel, Fill, Ledger
from pipelines.backtest.model_backtest import Market, run_backtest_study, simulate_model
from pipelines.backtest.report import closed_trades, write_report
from pipelines.backtest.statistics import expected_max_sharpe
from pipelines.backtest.strategy import SizingConfig
from pipelines.backtest.trials import MemoryTrialLog
from pipelines.labels.triple_barrier import BarrierConfig
from pipelines.models.estimators import ModelConfig
from pipelines.models.splits import walk_forward
from pipelines.models.walk_forward import run_walk_forward

pytestmark = pytest.mark.unit
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


def test_study_reports_trials_dsr_pbo_and_holdout(
    sample_bars: pl.DataFrame, predictions: pl.DataFrame, tmp_path: Path
) -> None:
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
    assert page.count("<svg") >= 6 and "http" not in page.replace("http://www.w3.org", "")
    stored = json.loads(json_path.read_text())  # strict JSON: a NaN would not parse back
    assert stored["metrics"]["n_trials"] == len(grid)


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
