"""Fixed-width fractional differencing and the choice of d by the ADF test."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pipelines.features.fracdiff import ffd_weights, frac_diff, min_stationary_d

pytestmark = pytest.mark.unit


def test_weights_follow_the_binomial_series() -> None:
    w = ffd_weights(0.5, threshold=1e-3)
    assert w[0] == 1.0 and w[1] == -0.5 and w[2] == pytest.approx(-0.125)
    assert abs(w[-1]) >= 1e-3 > abs(-w[-1] * (0.5 - len(w) + 1) / len(w))
    assert list(ffd_weights(1.0)) == [1.0, -1.0]  # d = 1: the first difference
    assert list(ffd_weights(0.0)) == [1.0]


def test_d_one_is_the_log_return_and_windows_are_causal(sample_bars: pl.DataFrame) -> None:
    bars = sample_bars.filter(pl.col("symbol") == "AAPL")
    out = bars.select(
        frac_diff(1.0).alias("x"), (pl.col("close") / pl.col("close").shift(1)).log().alias("r")
    )
    # log(c_t) - log(c_{t-1}) against log(c_t / c_{t-1}): equal up to rounding.
    np.testing.assert_allclose(out["x"][1:].to_numpy(), out["r"][1:].to_numpy(), atol=1e-15)
    full = bars.select(frac_diff(0.4, 1e-3).alias("x"))["x"]
    cut = bars.head(300).select(frac_diff(0.4, 1e-3).alias("x"))["x"]
    assert full.head(300).equals(cut)


def test_smallest_stationary_d_on_real_bars(sample_bars: pl.DataFrame) -> None:
    train = sample_bars.filter(pl.col("symbol").is_in(["SPY", "AAPL", "MSFT", "JPM"]))
    choice = min_stationary_d(train, threshold=1e-3)
    assert 0.0 < choice.d <= 1.0
    assert choice.p_values[choice.d] < 0.05
    assert all(p >= 0.05 for d, p in choice.p_values.items() if d < choice.d)
