"""The rebalance band and minimum trade value; turnover as the report states it."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import polars as pl
import pytest

from pipelines.backtest.broker import Fill
from pipelines.portfolio.config import PortfolioConfig
from pipelines.portfolio.weights import rebalance, turnover

pytestmark = pytest.mark.unit
BAND = PortfolioConfig(rebalance_band=0.25, min_trade_value=1_000.0)


def test_resizes_inside_the_band_keep_the_position() -> None:
    current = {"A": 1_000, "B": 1_000, "C": -1_000, "D": -1_000, "E": 1_000}
    targets = {"A": 1_200, "B": 1_300, "C": -800, "D": -1_251, "E": 750}
    prices = dict.fromkeys(current, 50.0)
    assert rebalance(targets, current, prices, BAND) == {
        "A": 1_000,  # +20%: inside
        "B": 1_300,  # +30%, $15,000
        "C": -1_000,  # -20% of a short: inside
        "D": -1_251,  # 25.1%
        "E": 1_000,  # exactly 25% is not beyond the band
    }


def test_resizes_below_the_minimum_trade_value_keep_the_position() -> None:
    config = PortfolioConfig(rebalance_band=0.0, min_trade_value=1_000.0)
    current = {"A": 100, "B": 100}
    targets = {"A": 140, "B": 150}
    prices = {"A": 24.0, "B": 24.0}  # 40 * 24 = $960 < $1,000; 50 * 24 = $1,200
    assert rebalance(targets, current, prices, config) == {"A": 100, "B": 150}


def test_entries_exits_and_flips_always_pass() -> None:
    strict = PortfolioConfig(rebalance_band=10.0, min_trade_value=1e9)
    current = {"EXIT": 1_000, "FLIP": 10, "SHORTFLIP": -3, "SAME": 7}
    targets = {"NEW": 1, "EXIT": 0, "FLIP": -10, "SHORTFLIP": 2, "SAME": 7, "NEWSHORT": -5}
    # No price is needed where nothing is valued.
    assert rebalance(targets, current, {}, strict) == targets


def test_a_resize_without_a_price_is_an_error() -> None:
    with pytest.raises(ValueError, match="needs the price of A"):
        rebalance({"A": 300}, {"A": 100}, {}, BAND)


T0 = datetime(2019, 1, 2, 15, tzinfo=UTC)


def _fill(day: int, quantity: int, price: str) -> Fill:
    ts = T0 + timedelta(days=day)
    return Fill(f"id{day}", "SPY", ts, quantity, Decimal(price), Decimal(1), Decimal(0), ts)


def test_turnover_is_traded_notional_per_year_over_average_gross() -> None:
    """Ten daily bars, $10,000 held for five of them: bought 100 at $100 and sold at $100;
    average gross $5,000, traded $20,000, over 10/252 of a year."""
    equity = pl.DataFrame(
        {
            "ts": [T0 + timedelta(days=d) for d in range(10)],
            "equity": [1e6] * 10,
            "gross": [0.0] * 3 + [10_000.0] * 5 + [0.0] * 2,
        }
    )
    fills = [_fill(3, 100, "100"), _fill(8, -100, "100")]
    assert turnover(fills, equity, 252.0) == pytest.approx(20_000 / 5_000 / (10 / 252))


def test_turnover_without_a_position_is_undefined() -> None:
    flat = pl.DataFrame({"ts": [T0], "equity": [1e6], "gross": [0.0]})
    assert math.isnan(turnover([], flat, 252.0))
    assert math.isnan(turnover([], flat.clear(), 252.0))
    with pytest.raises(ValueError, match="periods_per_year"):
        turnover([], flat, 0.0)
