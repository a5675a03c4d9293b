"""PortfolioConfig refuses what it cannot mean, saying what to write."""

from __future__ import annotations

import pytest

from pipelines.portfolio.config import METHODS, PortfolioConfig

pytestmark = pytest.mark.unit


def test_defaults_keep_the_strategys_sizes() -> None:
    config = PortfolioConfig()
    assert config.method == "bet_size"
    assert (config.lookback, config.min_history, config.covariance) == (252, 20, "ledoit_wolf")
    assert set(METHODS) >= {"hrp", "herc", "mean_variance", "equal_risk_contribution"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "hpr"}, "write one of bet_size, equal_weight"),
        ({"covariance": "shrunk"}, "write one of ledoit_wolf, empirical"),
        ({"lookback": 1}, "lookback is a number of bars"),
        ({"lookback": 25.0}, "write an integer >= 2"),
        ({"min_history": True}, "min_history is a number of bars"),
        ({"lookback": 10, "min_history": 20}, "write min_history <= lookback"),
        ({"risk_aversion": 0.0}, "risk_aversion must be a finite number > 0"),
        ({"risk_aversion": float("inf")}, "risk_aversion must be a finite number > 0"),
        ({"rebalance_band": -0.1}, "e.g. 0.25 for 25%"),
        ({"rebalance_band": float("nan")}, "write a finite number >= 0"),
        ({"min_trade_value": -1.0}, "min_trade_value is in USD"),
    ],
)
def test_bad_settings_say_what_to_write(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PortfolioConfig(**kwargs)  # type: ignore[arg-type]
