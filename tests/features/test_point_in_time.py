"""Point in time, proved: features computed on data truncated after t equal the full-data
features at every time up to t, for many random cut times, on real bars."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pipelines.features import FeatureConfig, feature_registry
from pipelines.features.checks import lookahead_violations
from pipelines.timeframes import Timeframe
from tests.conftest import shared_av_bars

pytestmark = pytest.mark.unit
CONFIG = FeatureConfig(Timeframe.parse("15m"))


@pytest.fixture(scope="module")
def universe_bars(sample_bars: pl.DataFrame) -> pl.DataFrame:
    """Real bars of several symbols: a slice of the shared 15-minute set, or the sample."""
    bars = shared_av_bars(["AAPL", "MSFT", "JPM", "XOM", "TSM", "ENPH"], before="2021-01-15")
    if bars is None:
        return sample_bars.filter(pl.col("symbol").is_in(["AAPL", "MSFT", "SPY", "JPM", "VIX"]))
    return bars


def test_truncation_changes_nothing_before_the_cut(universe_bars: pl.DataFrame) -> None:
    times = universe_bars["ts"].unique().sort()
    rng = np.random.default_rng(20261121)
    # Cut times anywhere: inside a session, at its first and last bar, after warm-ups.
    picks = sorted(set(rng.integers(len(times) // 3, len(times), size=10).tolist()))
    assert lookahead_violations(universe_bars, CONFIG, [times[i] for i in picks]) == []


def test_a_feature_that_peeks_ahead_is_caught(universe_bars: pl.DataFrame) -> None:
    """The canary: a registry with one feature reading the next bar fails the same check."""
    from pipelines.features.library import S
    from pipelines.features.registry import FeatureSpec

    reg = feature_registry(CONFIG)
    reg.add(
        FeatureSpec(
            "statistical_peek_1",
            "statistical",
            ("close",),
            0,
            "next bar's return: a deliberate look-ahead",
            lambda: pl.col("close").shift(-1).over(S) / pl.col("close") - 1.0,
        )
    )
    cut = universe_bars["ts"].unique().sort()[len(universe_bars) // 12]
    problems = lookahead_violations(universe_bars, CONFIG, [cut], reg)
    assert problems and all(p.startswith("statistical_peek_1 ") for p in problems)


def test_truncation_changes_nothing_in_extended_hours() -> None:
    """Pre-market bars come before the opening range: none of their features may read it."""
    bars = shared_av_bars(["AAPL", "JPM", "TSLA"], before="2020-11-15", session="extended")
    if bars is None:
        pytest.skip("needs the shared 15-minute set in ../shared/data (absent here)")
    config = FeatureConfig(Timeframe.parse("15m"), session="extended")
    times = bars["ts"].unique().sort()
    pre_market = bars.filter(pl.col("ts").dt.hour() < 13)["ts"].unique().sort()
    cuts = [pre_market[len(pre_market) // 2], pre_market[-5], times[len(times) * 2 // 3]]
    assert lookahead_violations(bars, config, cuts) == []
