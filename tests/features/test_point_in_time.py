"""Point in time, proved: features computed on data truncated after t equal the full-data
features at every time up to t, for many random cut times, on real bars."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pipelines.bars.validate import validate_bars
from pipelines.config import ColumnMap, FileSourceConfig
from pipelines.data.sources import FileBarSource
from pipelines.features import FeatureConfig, build_features, feature_registry
from pipelines.timeframes import Timeframe
from tests.conftest import SHARED

pytestmark = pytest.mark.unit
TF = Timeframe.parse("15m")
CONFIG = FeatureConfig(TF)


def assert_same_up_to(full: pl.DataFrame, truncated: pl.DataFrame, cut: object) -> None:
    left = full.filter(pl.col("ts") <= cut)
    assert left.select("symbol", "ts").equals(truncated.select("symbol", "ts"))
    for name in full.columns[2:]:
        a, b = left[name], truncated[name]
        # (a == b) is null where either is null: count that as different unless both are.
        same = (a == b).fill_null(False) | (a.is_null() & b.is_null())
        if a.dtype.is_float():
            same = same | (a.is_nan() & b.is_nan()).fill_null(False)
        if not same.all():
            i = int((~same).arg_max())  # type: ignore[arg-type]
            raise AssertionError(
                f"{name} at {left['symbol'][i]} {left['ts'][i]} changed when the data after "
                f"{cut} was removed: {a[i]!r} (full) vs {b[i]!r} (truncated)"
            )


@pytest.fixture(scope="module")
def universe_bars(sample_bars: pl.DataFrame) -> pl.DataFrame:
    """Real bars of several symbols: a slice of the shared 15-minute set, or the sample."""
    path = SHARED / "us_equities_15min_2020_2022_av.parquet"
    if not path.exists():
        return sample_bars.filter(pl.col("symbol").is_in(["AAPL", "MSFT", "SPY", "JPM", "VIX"]))
    cfg = FileSourceConfig(
        path=str(path.parent),
        pattern=path.name,
        format="parquet",
        columns=ColumnMap(symbol="symbol"),
        label="end",
    )
    symbols = ["AAPL", "MSFT", "JPM", "XOM", "TSM", "ENPH"]
    raw = FileBarSource(cfg, TF).read_file(path, None).filter(pl.col("symbol").is_in(symbols))
    bars = validate_bars(raw, universe=symbols, timeframe=TF, session="regular").bars
    return bars.filter(pl.col("ts") < pl.datetime(2021, 1, 15, time_zone="UTC"))


def test_truncation_changes_nothing_before_the_cut(universe_bars: pl.DataFrame) -> None:
    full = build_features(universe_bars, CONFIG)
    times = universe_bars["ts"].unique().sort()
    rng = np.random.default_rng(20261121)
    # Cut times anywhere: inside a session, at its first and last bar, after warm-ups.
    picks = sorted(set(rng.integers(len(times) // 3, len(times), size=10).tolist()))
    for i in picks:
        cut = times[i]
        truncated = build_features(universe_bars.filter(pl.col("ts") <= cut), CONFIG)
        assert_same_up_to(full, truncated, cut)


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
    full = build_features(universe_bars, CONFIG, reg)
    cut = universe_bars["ts"].unique().sort()[len(universe_bars) // 12]
    truncated = build_features(universe_bars.filter(pl.col("ts") <= cut), CONFIG, reg)
    with pytest.raises(AssertionError, match="statistical_peek_1"):
        assert_same_up_to(full, truncated, cut)
