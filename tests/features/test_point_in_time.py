"""Point in time, proved: features computed on data truncated after t equal the full-data
features at every time up to t, for many random cut times, on real bars."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pipelines.bars.validate import validate_bars
from pipelines.config import ColumnMap, FileSourceConfig
from pipelines.data.sources import FileBarSource
from pipelines.features import FeatureConfig, feature_registry
from pipelines.features.checks import lookahead_violations
from pipelines.timeframes import Timeframe
from tests.conftest import SHARED

pytestmark = pytest.mark.unit
TF = Timeframe.parse("15m")
CONFIG = FeatureConfig(TF)


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
