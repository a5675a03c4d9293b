"""The stacking ensemble only learns from out-of-fold predictions of earlier windows."""

from __future__ import annotations

from datetime import timedelta

import polars as pl
import pytest

from pipelines.features import FeatureConfig, feature_registry
from pipelines.models.estimators import ModelConfig
from pipelines.models.splits import walk_forward
from pipelines.models.stacking import stack_out_of_fold
from pipelines.timeframes import Timeframe

pytestmark = pytest.mark.unit
CONFIG = FeatureConfig(Timeframe.parse("15m"))
FEATURES = [n for n in feature_registry(CONFIG).names if not n.startswith("mtf_")][:50]


def test_stack_uses_only_earlier_windows(sample_data: pl.DataFrame) -> None:
    data = sample_data
    folds = walk_forward(
        data, train=timedelta(days=8), validation=timedelta(days=2), test=timedelta(days=2)
    )
    bases = {
        "lightgbm": ModelConfig(
            "lightgbm", {"num_leaves": 7}, seed=1, num_boost_round=40, early_stopping_rounds=10
        ),
        "catboost": ModelConfig(
            "catboost", {"depth": 3}, seed=1, num_boost_round=40, early_stopping_rounds=10
        ),
    }
    stacked = stack_out_of_fold(data, folds, bases, features=FEATURES)
    windows = stacked.predictions["fold"].unique().sort().to_list()
    first = stacked.bases["lightgbm"].predictions["fold"].min()
    assert first not in windows  # the first window has nothing earlier to learn from
    assert set(stacked.weights) == set(windows)
    # Each window's rows were out of sample for both base models.
    base = stacked.bases["catboost"].predictions.select("symbol", "ts", "fold")
    assert (
        stacked.predictions.join(base, on=["symbol", "ts", "fold"]).height
        == stacked.predictions.height
    )
    m = stacked.metrics()
    assert 0.0 <= m["auc"] <= 1.0 and m["n"] == stacked.predictions.height
