"""The cold-start path (a rebuild of the last bars) is within 1e-9 of the full-history row;
the registry is complete; bad input gets a clear error or a defined value (the streaming
engine's exact parity and its bad input are in test_stream.py)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pipelines.features import (
    FeatureConfig,
    FeatureInputError,
    build_features,
    feature_registry,
    latest_features,
)
from pipelines.features.registry import CATEGORIES
from pipelines.timeframes import Timeframe

pytestmark = pytest.mark.unit
TF = Timeframe.parse("15m")
CONFIG = FeatureConfig(TF)
REGISTRY = feature_registry(CONFIG)


def test_registry_is_complete_and_documented() -> None:
    assert len(REGISTRY) >= 150
    table = REGISTRY.describe()
    assert table["description"].str.len_chars().min() > 5  # type: ignore[operator]
    assert set(table["category"]) == set(CATEGORIES)
    for spec in REGISTRY:
        assert spec.name.split("_")[0] == spec.category


def test_latest_features_equal_the_batch_row(sample_bars: pl.DataFrame) -> None:
    full = build_features(sample_bars, CONFIG)
    w = REGISTRY.history_bars
    recent = sample_bars.group_by("symbol", maintain_order=True).tail(w)
    live = latest_features(recent, CONFIG).sort("symbol")
    batch = full.group_by("symbol", maintain_order=True).last().sort("symbol")
    assert live.select("symbol", "ts").equals(batch.select("symbol", "ts"))
    stateless = [s.name for s in REGISTRY if not s.stateful]
    defined = [n for n in stateless if batch[n].null_count() < batch.height]
    assert len(defined) > 100
    for name in defined:
        np.testing.assert_allclose(
            live[name].to_numpy().astype(float),
            batch[name].to_numpy().astype(float),
            rtol=1e-9,
            atol=1e-12,
            err_msg=name,
        )


def test_duplicate_timestamps_are_a_bug_upstream(sample_bars: pl.DataFrame) -> None:
    dup = pl.concat([sample_bars.head(40), sample_bars.slice(10, 1)])
    with pytest.raises(FeatureInputError, match=r"duplicate bars reached the feature layer"):
        build_features(dup, CONFIG)


def test_nan_bars_are_refused_with_the_symbol(sample_bars: pl.DataFrame) -> None:
    bad = sample_bars.head(60).with_columns(
        close=pl.when(pl.int_range(pl.len()) == 7).then(float("nan")).otherwise("close")
    )
    with pytest.raises(FeatureInputError, match=r"NaN price or volume \(first: AAPL"):
        build_features(bad, CONFIG)


def _finite_or_null(frame: pl.DataFrame) -> None:
    for name in frame.columns[2:]:
        col = frame[name]
        if col.dtype.is_float():
            assert not col.is_infinite().any(), f"{name} is infinite"
            assert not col.is_nan().any(), f"{name} is NaN"


def test_short_history_one_bar_and_one_symbol(sample_bars: pl.DataFrame) -> None:
    one_bar = sample_bars.head(1)
    out = build_features(one_bar, CONFIG)
    assert out.height == 1
    _finite_or_null(out)
    short = sample_bars.filter(pl.col("symbol") == "MSFT").head(30)  # less than most warm-ups
    out = build_features(short, CONFIG)
    assert out["trend_sma_200"].is_null().all()
    assert out["statistical_ret_1"].drop_nulls().len() == 29
    _finite_or_null(out)
    # A universe of one: cross-sectional features are defined, not inf.
    one = build_features(sample_bars.filter(pl.col("symbol") == "MSFT"), CONFIG)
    assert (one["xs_zscore_1_statistical_ret_1"].drop_nulls() == 0.0).all()
    assert (one["xs_rank_1_statistical_ret_1"].drop_nulls() == 0.5).all()
    _finite_or_null(one)


def test_flat_prices_and_zero_volume(sample_bars: pl.DataFrame) -> None:
    flat = sample_bars.filter(pl.col("symbol") == "VIX").with_columns(
        open=pl.lit(15.0),
        high=pl.lit(15.0),
        low=pl.lit(15.0),
        close=pl.lit(15.0),
        volume=pl.lit(0.0),
    )
    out = build_features(flat, CONFIG)
    _finite_or_null(out)
    last = out.row(-1, named=True)
    assert last["momentum_rsi_14"] == 50.0
    assert last["statistical_zscore_20"] == 0.0
    assert last["volatility_bb_20_pctb"] == 0.5
