"""The model backtest and its report on the sample's out-of-sample predictions."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipelines.backtest.broker import BrokerConfig, CostModel
from pipelines.backtest.model_backtest import run_model_backtest
from pipelines.backtest.report import closed_trades, write_report
from pipelines.backtest.strategy import SizingConfig
from pipelines.models.estimators import ModelConfig
from pipelines.models.splits import walk_forward
from pipelines.models.walk_forward import run_walk_forward

pytestmark = pytest.mark.unit


def test_model_backtest_report(sample_bars: pl.DataFrame, tmp_path: Path) -> None:
    from tests.models.conftest import labelled

    data = labelled(sample_bars)
    features = [c for c in data.columns if c.startswith(("trend_", "momentum_", "volatility_"))]
    folds = walk_forward(
        data, train=timedelta(days=10), validation=timedelta(days=3), test=timedelta(days=3)
    )
    wf = run_walk_forward(
        data, folds, ModelConfig("lightgbm", seed=2, num_boost_round=40), features=features
    )
    costs = CostModel(
        slippage_bps=1.0,
        half_spread_bps=1.0,
        commission_per_share=Decimal("0.005"),
        commission_min=Decimal("1"),
        borrow_bps=30.0,
    )
    bt = run_model_backtest(
        sample_bars,
        wf.predictions,
        sizing=SizingConfig(threshold=0.01, profit_take=2.0, stop_loss=2.0),
        broker=BrokerConfig(costs, participation=0.05, max_leverage=1.0),
        cash=Decimal("1000000"),
        periods_per_year=252 * 26,
        n_trials=3,
    )
    m = bt.report.metrics
    assert m["fills"] > 0 and m["commissions_usd"] > 0 and m["borrow_usd"] > 0
    assert -1.0 < m["total_return"] < 1.0 and m["max_drawdown"] <= 0.0
    trades = closed_trades(bt.result.ledger)
    assert trades.height > 0 and m["trades_trades"] == trades.height
    assert np.isfinite(trades["ret"].to_numpy()).all()
    html_path, json_path = tmp_path / "r.html", tmp_path / "r.json"
    write_report(bt.report, str(html_path), str(json_path))
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
    ):
        assert title in page
    assert page.count("<svg") >= 6 and "http" not in page.replace("http://www.w3.org", "")


def test_closed_trades_at_average_cost() -> None:
    from datetime import UTC, datetime

    from pipelines.backtest.broker import Fill, Ledger

    t = [datetime(2019, 1, 4, 15, m, tzinfo=UTC) for m in range(4)]
    d = Decimal
    ledger = Ledger(
        cash=d("0"),
        fills=[
            Fill("a", "X", t[0], 10, d("100"), d("1"), d("0"), t[0]),
            Fill("b", "X", t[1], 10, d("110"), d("1"), d("0"), t[1]),
            Fill("c", "X", t[2], -15, d("120"), d("1"), d("0"), t[2]),
            Fill("d", "X", t[3], -10, d("90"), d("1"), d("0"), t[3]),  # closes 5, opens a 5 short
        ],
    )
    trades = closed_trades(ledger)
    assert trades["quantity"].to_list() == [15, 5]
    assert trades["pnl"].to_list() == [15 * 15 - 1, 5 * (90 - 105) - 1]
    assert trades["ret"][0] == pytest.approx(224 / (15 * 105))
