"""The Deflated Sharpe Ratio reproduces Bailey and López de Prado's worked example."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.backtest.statistics import (
    deflated_sharpe_of_returns,
    deflated_sharpe_ratio,
    expected_max_sharpe,
    probabilistic_sharpe_ratio,
    sharpe_ratio,
)

pytestmark = pytest.mark.unit


def test_worked_example_of_the_deflated_sharpe_ratio() -> None:
    # Annualised SR 2.5 from T = 1250 daily returns, skewness -3, kurtosis 10, found after
    # N = 100 trials whose annualised Sharpe ratios have variance 0.5; 250 days a year.
    days = 250
    result = deflated_sharpe_ratio(
        2.5 / math.sqrt(days), 1250, skewness=-3.0, kurt=10.0, n_trials=100, sr_variance=0.5 / days
    )
    assert round(result.sr0, 4) == 0.1132
    assert round(result.dsr, 4) == 0.9004


def test_psr_and_expected_maximum_behave() -> None:
    assert probabilistic_sharpe_ratio(0.0, 100, skewness=0, kurt=3) == pytest.approx(0.5)
    more = probabilistic_sharpe_ratio(0.1, 1000, skewness=0, kurt=3)
    assert more > probabilistic_sharpe_ratio(0.1, 100, skewness=0, kurt=3)
    # Fat left tails make the same Sharpe less convincing.
    assert probabilistic_sharpe_ratio(0.1, 500, skewness=-2, kurt=9) < probabilistic_sharpe_ratio(
        0.1, 500, skewness=0, kurt=3
    )
    assert expected_max_sharpe(1, 0.01) == 0.0
    assert expected_max_sharpe(1000, 0.01) > expected_max_sharpe(10, 0.01) > 0


def test_deflation_of_a_return_series() -> None:
    rng = np.random.default_rng(3)
    r = rng.normal(0.0005, 0.01, size=1000)
    one = deflated_sharpe_of_returns(r, n_trials=1, sr_variance=0.001)
    many = deflated_sharpe_of_returns(r, n_trials=200, sr_variance=0.001)
    assert one.sharpe == pytest.approx(sharpe_ratio(r))
    assert many.dsr < one.dsr
    with pytest.raises(ValueError, match="constant"):
        sharpe_ratio(np.ones(10))


def test_a_configuration_that_never_traded_has_no_deflated_sharpe_and_says_why() -> None:
    from datetime import date, timedelta

    import polars as pl

    from pipelines.backtest.trials import Trial, deflate

    days = [date(2024, 1, 2) + timedelta(days=i) for i in range(10)]
    flat = Trial(
        "threshold=0.5", {"threshold": 0.5}, "run", pl.DataFrame({"date": days, "ret": [0.0] * 10})
    )
    moving = Trial(
        "threshold=0.02",
        {"threshold": 0.02},
        "run",
        pl.DataFrame({"date": days, "ret": np.random.default_rng(0).normal(0, 0.01, 10)}),
    )
    selection = deflate(flat, [0.0, moving.sharpe], [flat, moving])
    assert selection.sharpe == 0.0 and selection.psr is None and selection.dsr is None
    assert any("never traded" in n for n in selection.notes)
    figures = selection.as_dict()
    assert "deflated_sharpe" not in figures and "psr" not in figures
    assert all(math.isfinite(v) for v in figures.values())
