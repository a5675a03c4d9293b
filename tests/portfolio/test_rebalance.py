"""The rebalance band and minimum trade value; turnover as the report states it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pipelines.portfolio.config import PortfolioConfig
from pipelines.portfolio.weights import rebalance

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
