"""Analytics against hand-computed values and known behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.backtest.analytics import (
    drawdowns,
    probability_of_backtest_overfitting,
    return_stats,
    trade_stats,
)

pytestmark = pytest.mark.unit


def test_drawdown_and_returns_by_hand() -> None:
    r = np.array([0.10, -0.20, 0.05, 0.10, -0.05])
    underwater, mdd, periods = drawdowns(r)
    equity = np.cumprod(1 + r)  # 1.1, 0.88, 0.924, 1.0164, 0.96558
    assert mdd == pytest.approx(0.88 / 1.1 - 1)
    assert periods == 4 and underwater[0] == 0.0
    stats = return_stats(r, periods_per_year=5)
    assert stats.total_return == pytest.approx(equity[-1] - 1)
    assert stats.annual_return == pytest.approx(equity[-1] - 1)  # exactly one "year"
    assert stats.sharpe == pytest.approx(np.mean(r) / np.std(r, ddof=1) * math.sqrt(5))
    assert stats.calmar == pytest.approx(stats.annual_return / -mdd)


def test_alpha_beta_against_a_benchmark() -> None:
    rng = np.random.default_rng(0)
    b = rng.normal(0.0005, 0.01, 2000)
    r = 0.0002 + 1.5 * b + rng.normal(0, 0.001, 2000)
    stats = return_stats(r, 252, benchmark=b)
    assert stats.beta == pytest.approx(1.5, abs=0.02)
    assert stats.alpha == pytest.approx(0.0002 * 252, abs=0.01)
    assert 0.5 < stats.psr <= 1.0


def test_trade_statistics() -> None:
    t = np.array([0.02, 0.01, -0.01, -0.02, -0.03, 0.04])
    s = trade_stats(t)
    assert s.trades == 6 and s.win_rate == pytest.approx(0.5)
    assert s.profit_factor == pytest.approx(0.07 / 0.06)
    assert s.expectancy == pytest.approx(t.mean())
    assert (s.longest_win_streak, s.longest_loss_streak) == (2, 3)
    assert math.isnan(trade_stats(np.array([0.01, 0.02])).profit_factor)  # no losses: undefined


def test_pbo_separates_noise_from_skill() -> None:
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 0.01, size=(800, 20))
    assert probability_of_backtest_overfitting(noise, 8) > 0.3
    skilled = noise.copy()
    skilled[:, 0] += 0.004  # one configuration with a real, persistent edge
    assert probability_of_backtest_overfitting(skilled, 8) < 0.05


def test_pbo_of_noise_is_one_half_with_an_odd_number_of_configurations() -> None:
    # With three skill-less configurations the in-sample best is the out-of-sample median one
    # time in three: counted as overfit (the logit's "<= 0") that reads 2/3, not 1/2.
    rng = np.random.default_rng(3)
    pbos = [
        probability_of_backtest_overfitting(rng.normal(0, 0.01, (160, 3)), 8) for _ in range(40)
    ]
    assert abs(float(np.mean(pbos)) - 0.5) < 0.06
