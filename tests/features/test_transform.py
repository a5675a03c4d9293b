"""The learning-only transform: fitted on training rows only, applied unchanged live."""

from __future__ import annotations

import polars as pl
import pytest

from pipelines.features import FeatureConfig, build_features, feature_registry, latest_features
from pipelines.features.transform import FeatureTransform, TransformError
from pipelines.timeframes import Timeframe

pytestmark = pytest.mark.unit
CONFIG = FeatureConfig(Timeframe.parse("15m"))


@pytest.fixture(scope="module")
def matrix(sample_bars: pl.DataFrame) -> pl.DataFrame:
    return build_features(sample_bars, CONFIG)


def test_fit_on_train_apply_on_test_never_refits(matrix: pl.DataFrame) -> None:
    cols = feature_registry(CONFIG).names
    cut = matrix["ts"].sort()[matrix.height * 2 // 3]
    train, test = matrix.filter(pl.col("ts") < cut), matrix.filter(pl.col("ts") >= cut)
    transform = FeatureTransform.fit(train, cols)
    applied = transform.apply(test)
    # The test rows are scaled with the training parameters, not their own.
    col = "momentum_rsi_14"
    i = cols.index(col)
    raw = test[col].clip(transform.lower[i], transform.upper[i])
    expected = (raw - transform.mean[i]) / transform.std[i]
    assert applied[col].equals(expected)
    assert (
        applied.select(pl.col(col).max()).item()
        <= (transform.upper[i] - transform.mean[i]) / transform.std[i] + 1e-12
    )
    # Fitting on other rows gives other parameters: the live path must load, not refit.
    assert FeatureTransform.fit(test, cols).mean != transform.mean


def test_json_round_trip_and_checksum(matrix: pl.DataFrame) -> None:
    cols = feature_registry(CONFIG).names
    transform = FeatureTransform.fit(matrix, cols)
    text = transform.to_json()
    assert FeatureTransform.from_json(text) == transform
    tampered = text.replace('"lower_q": 0.01', '"lower_q": 0.02')
    with pytest.raises(TransformError, match="checksum does not match"):
        FeatureTransform.from_json(tampered)


def test_column_mismatch_is_an_error_never_a_reorder(matrix: pl.DataFrame) -> None:
    cols = feature_registry(CONFIG).names
    transform = FeatureTransform.fit(matrix, cols)
    swapped = matrix.select("symbol", "ts", cols[1], cols[0], *cols[2:])
    with pytest.raises(TransformError, match="another order"):
        transform.apply(swapped)
    with pytest.raises(TransformError, match=r"missing \['trend_sma_5'\]"):
        transform.apply(matrix.drop("trend_sma_5"))


def test_live_rows_transform_like_batch_rows(
    sample_bars: pl.DataFrame, matrix: pl.DataFrame
) -> None:
    reg = feature_registry(CONFIG)
    transform = FeatureTransform.fit(matrix, reg.names)
    recent = sample_bars.group_by("symbol", maintain_order=True).tail(reg.history_bars)
    live = transform.apply(latest_features(recent, CONFIG, reg)).sort("symbol")
    batch = transform.apply(matrix.group_by("symbol", maintain_order=True).last()).sort("symbol")
    stateless = [s.name for s in reg if not s.stateful]
    diff = (live.select(stateless) - batch.select(stateless)).select(pl.all().abs().max()).row(0)
    assert max(d for d in diff if d is not None) < 1e-6
