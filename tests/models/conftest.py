"""The labelled sample every model test trains on: real features joined to real labels."""

from __future__ import annotations

import polars as pl
import pytest

from pipelines.features import FeatureConfig, build_features
from pipelines.labels import BarrierConfig, label_triple_barrier
from pipelines.models.training import build_training_set
from pipelines.timeframes import Timeframe

FEATURE_CONFIG = FeatureConfig(Timeframe.parse("15m"))


def labelled(bars: pl.DataFrame) -> pl.DataFrame:
    """Features and triple-barrier labels of ``bars`` (default barriers), target ``y``, rows
    past the 100-bar SMA's warm-up, sorted by time."""
    matrix = build_features(bars, FEATURE_CONFIG)
    labels = label_triple_barrier(bars, BarrierConfig()).labels
    data = build_training_set(matrix, labels)
    return data.filter(pl.col("trend_sma_100").is_not_null())


@pytest.fixture(scope="session")
def sample_data(sample_bars: pl.DataFrame) -> pl.DataFrame:
    return labelled(sample_bars)
