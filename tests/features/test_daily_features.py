"""Features on daily bars (one bar per session, ``ts`` the session's regular open): point in
time, the same on the live path, and no intraday-only feature."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pipelines.features import FeatureConfig, FeatureStream, build_features, feature_registry
from pipelines.features.checks import constant_features, lookahead_violations, stream_mismatches
from pipelines.features.partition import history_days
from pipelines.timeframes import Timeframe
from tests.daily import daily_sample_bars

pytestmark = pytest.mark.unit
DAILY = FeatureConfig(Timeframe.parse("1d"))
INTRADAY_ONLY = (
    "intraday_tod_1_frac",
    "intraday_tod_1_sin",
    "intraday_bars_1_since_open",
    "intraday_bars_1_to_close",
    "intraday_orange_30_pos",
)


@pytest.fixture(scope="module")
def bars() -> pl.DataFrame:
    return daily_sample_bars().filter(
        pl.col("symbol").is_in(["AAPL", "JPM", "SPY", "TSLA", "VIX", "VXXB"])
    )


def test_the_daily_registry_counts_sessions_and_has_no_intraday_only_feature() -> None:
    reg = feature_registry(DAILY)
    assert DAILY.bars_per_session == 1
    assert not set(INTRADAY_ONLY) & set(reg.names)
    assert not reg.in_category("mtf")  # a daily bar's last closed session is the bar itself
    assert {"intraday_gap_1_overnight", "intraday_vwap_1_dist"} <= set(reg.names)
    # Windows are in sessions: SMA(200) needs 200 of them, which history_days covers.
    assert reg["trend_sma_200"].warmup == 200
    assert history_days(reg, DAILY) >= reg.history_bars * 7 // 5
    # The intraday registry keeps every feature it had.
    intraday = feature_registry(FeatureConfig(Timeframe.parse("15m")))
    assert set(INTRADAY_ONLY) <= set(intraday.names) and len(intraday) == len(reg) + 14


def test_truncating_daily_bars_after_t_changes_no_feature_at_or_before_t(
    bars: pl.DataFrame,
) -> None:
    times = bars["ts"].unique().sort()
    rng = np.random.default_rng(20261204)
    picks = sorted(set(rng.integers(30, len(times), size=6).tolist()))
    cuts = [times[i] for i in picks]
    assert lookahead_violations(bars, DAILY, cuts) == []


def test_the_overnight_gap_reads_the_previous_session_and_nothing_is_constant(
    bars: pl.DataFrame,
) -> None:
    matrix = build_features(bars, DAILY)
    aapl = bars.filter(pl.col("symbol") == "AAPL").sort("ts")
    gap = matrix.filter(pl.col("symbol") == "AAPL").sort("ts")["intraday_gap_1_overnight"]
    expected = aapl["open"] / aapl["close"].shift(1) - 1.0
    assert gap[0] is None
    np.testing.assert_allclose(gap[1:].to_numpy(), expected[1:].to_numpy(), rtol=1e-12)
    assert constant_features(matrix, feature_registry(DAILY)) == []


def test_the_live_path_gives_the_daily_matrix_exactly(bars: pl.DataFrame) -> None:
    matrix = build_features(bars, DAILY)
    streamed = FeatureStream(DAILY, bars["symbol"].unique().to_list()).run(bars)
    assert stream_mismatches(matrix, streamed) == []
