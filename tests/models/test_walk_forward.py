"""Leakage canaries and the honest walk-forward on real bars."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import polars as pl
import pytest

from pipelines.features import FeatureConfig, feature_registry
from pipelines.models.estimators import ModelConfig
from pipelines.models.splits import walk_forward
from pipelines.models.walk_forward import Calibrator, run_walk_forward
from pipelines.timeframes import Timeframe
from tests.conftest import shared_av_bars
from tests.models.conftest import labelled

pytestmark = pytest.mark.unit
CONFIG = FeatureConfig(Timeframe.parse("15m"))
FEATURES = [n for n in feature_registry(CONFIG).names if not n.startswith(("mtf_",))]
MODEL = ModelConfig(
    "lightgbm",
    {"learning_rate": 0.05, "num_leaves": 15, "min_data_in_leaf": 50},
    seed=5,
    num_boost_round=200,
    early_stopping_rounds=20,
)


@pytest.fixture(scope="module")
def data(sample_data: pl.DataFrame) -> pl.DataFrame:
    bars = shared_av_bars(["AAPL", "MSFT", "JPM", "XOM", "INTC", "NVDA"], before="2021-06-01")
    return sample_data if bars is None else labelled(bars)


def _folds(data: pl.DataFrame):  # type: ignore[no-untyped-def]
    days = (data["ts"].max() - data["ts"].min()).days  # type: ignore[operator]
    span = max(days // 8, 2)
    return walk_forward(
        data,
        train=timedelta(days=3 * span),
        validation=timedelta(days=span),
        test=timedelta(days=span),
        embargo=timedelta(hours=4),
    )


def _null_se(y: np.ndarray) -> float:
    n1, n0 = int(y.sum()), int((1 - y).sum())
    return math.sqrt((n1 + n0 + 1) / (12.0 * n1 * n0))


def test_shuffled_labels_give_chance_out_of_sample(data: pl.DataFrame) -> None:
    rng = np.random.default_rng(7)
    shuffled = data.with_columns(y=pl.Series(rng.permutation(data["y"].to_numpy())))
    result = run_walk_forward(shuffled, _folds(shuffled), MODEL, features=FEATURES)
    y = result.predictions["y"].to_numpy()
    auc = result.overall()["auc"]
    assert abs(auc - 0.5) < 4 * _null_se(y), f"AUC {auc:.3f} on shuffled labels: a leak"


def test_honest_walk_forward_is_believable(data: pl.DataFrame) -> None:
    result = run_walk_forward(data, _folds(data), MODEL, features=FEATURES, weight=None)
    overall = result.overall()
    # Near 0.5 is an acceptable answer for 15-minute bars; far above it would be a bug to chase.
    assert 0.4 < overall["auc"] < 0.6, overall
    assert (
        result.predictions.select(pl.struct("symbol", "ts").is_duplicated().any()).item() is False
    )
    for m in result.metrics:
        assert set(m) >= {"auc", "log_loss", "accuracy", "precision", "recall", "ic"}


def test_calibration_is_fitted_on_validation_and_monotone() -> None:
    rng = np.random.default_rng(1)
    raw = rng.uniform(size=2000)
    y = (rng.uniform(size=2000) < raw**2).astype(int)
    for method in ("isotonic", "platt"):
        cal = Calibrator.fit(method, raw, y)  # type: ignore[arg-type]
        grid = np.linspace(0, 1, 101)
        out = cal.apply(grid)
        assert (np.diff(out) >= -1e-12).all() and out.min() >= 0 and out.max() <= 1
        assert Calibrator(cal.method, cal.params).apply(grid).tolist() == out.tolist()
