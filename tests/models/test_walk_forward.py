"""Leakage canaries with power, the honest walk-forward judged by its confidence interval, and
calibration."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl
import pytest

from pipelines.features import FeatureConfig, feature_registry
from pipelines.models.estimators import ModelConfig, ModelError
from pipelines.models.splits import walk_forward
from pipelines.models.training import folds_for, plan_for
from pipelines.models.validity import block_shuffle, leak_canary, within_fold_auc
from pipelines.models.walk_forward import PROB_CLIP, Calibrator, run_walk_forward
from pipelines.timeframes import Timeframe
from tests.conftest import shared_av_bars
from tests.models.conftest import labelled

pytestmark = pytest.mark.unit
CONFIG = FeatureConfig(Timeframe.parse("15m"))
FEATURES = [n for n in feature_registry(CONFIG).names if not n.startswith(("mtf_",))]
# The canary's learner: small and fast; trees memorise neighbouring rows, which is the leak.
CANARY_MODEL = ModelConfig(
    "lightgbm",
    {"learning_rate": 0.1, "num_leaves": 15, "min_data_in_leaf": 50},
    seed=5,
    num_boost_round=30,
    early_stopping_rounds=10,
)
CANARY_FEATURES = [n for n in FEATURES if not n.startswith("xs_")][:24]


def test_block_shuffle_moves_whole_sessions_and_keeps_their_labels(
    sample_data: pl.DataFrame,
) -> None:
    moved = block_shuffle(sample_data, seed=3)
    assert 0.95 * sample_data.height < moved.height <= sample_data.height
    assert moved.columns == sample_data.columns
    assert not moved["y"].equals(sample_data["y"])
    flips = moved.sort("symbol", "ts")["y"].diff().abs().sum()
    original = sample_data.sort("symbol", "ts")["y"].diff().abs().sum()
    assert flips < 1.2 * original  # the serial structure survives (an i.i.d. shuffle doubles it)


def _daily_split(purge: bool):  # type: ignore[no-untyped-def]
    # Test windows of 26 bar times: with 25 labelled bars a session their boundaries fall
    # inside sessions, where labels of the training and the test rows overlap unless purged.
    return lambda d: walk_forward(
        d, train=26 * 6, validation=0, test=26, embargo=timedelta(hours=4), purge_spans=purge
    )


def test_block_shuffled_labels_score_chance_in_the_production_plan(
    sample_data: pl.DataFrame,
) -> None:
    plan = plan_for("quick")
    result = leak_canary(
        sample_data, lambda d: folds_for(d, plan), plan.model, features=FEATURES, seeds=(1, 2)
    )
    assert result.passed, f"AUC {result.auc} on block-shuffled labels: a leak"


def test_leak_canary_passes_with_purging_and_fails_without(sample_data: pl.DataFrame) -> None:
    honest = leak_canary(sample_data, _daily_split(True), CANARY_MODEL, features=CANARY_FEATURES)
    leaky = leak_canary(sample_data, _daily_split(False), CANARY_MODEL, features=CANARY_FEATURES)
    assert honest.passed, f"purged: AUC {honest.auc}"
    assert not leaky.passed, f"purging off went unseen: AUC {leaky.auc}"
    assert leaky.auc.value > honest.auc.value


def test_an_iid_shuffle_cannot_see_the_missing_purge(sample_data: pl.DataFrame) -> None:
    """Why the canary shuffles blocks: with labels permuted row by row, switching the purge
    off shows nothing, so the old canary could never have caught it."""
    rng = np.random.default_rng(1)
    iid = sample_data.with_columns(y=pl.Series(rng.permutation(sample_data["y"].to_numpy())))
    result = run_walk_forward(
        iid,
        _daily_split(False)(iid),
        CANARY_MODEL,
        features=CANARY_FEATURES,
        calibration="none",
    )
    assert within_fold_auc(result.predictions).z < 3.0


@pytest.fixture(scope="module")
def av_data(sample_data: pl.DataFrame) -> pl.DataFrame:
    bars = shared_av_bars(["AAPL", "MSFT", "JPM", "XOM", "INTC", "NVDA"], before="2021-06-01")
    return sample_data if bars is None else labelled(bars)


def test_honest_walk_forward_is_judged_by_its_interval(av_data: pl.DataFrame) -> None:
    """A real skill that large on 15-minute bars would be a bug to chase (a leak): the
    within-fold AUC's 99% interval must not lie wholly above 0.5 + 0.03. Below chance is
    reported, not hidden (see docs/research/anti_skill.md)."""
    plan = plan_for("quick")
    result = run_walk_forward(
        av_data, folds_for(av_data, plan), plan.model, features=FEATURES, weight=None
    )
    auc = within_fold_auc(result.predictions)
    assert auc.interval(2.58)[0] < 0.53, auc
    assert (
        result.predictions.select(pl.struct("symbol", "ts").is_duplicated().any()).item() is False
    )
    assert set(result.predictions.columns) >= {"prob", "prob_raw", "base_rate", "fold"}
    for m in result.metrics:
        assert set(m) >= {"auc", "log_loss", "accuracy", "precision", "recall", "ic"}


def test_calibration_is_monotone_and_never_certain() -> None:
    rng = np.random.default_rng(1)
    raw = rng.uniform(size=300)
    y = (rng.uniform(size=300) < raw**2).astype(int)
    for method in ("isotonic", "platt"):
        cal = Calibrator.fit(method, raw, y)  # type: ignore[arg-type]
        grid = np.linspace(0, 1, 101)
        out = cal.apply(grid)
        assert (np.diff(out) >= -1e-12).all()
        assert out.min() >= PROB_CLIP and out.max() <= 1 - PROB_CLIP  # no 0 or 1
        assert Calibrator(cal.method, cal.params).apply(grid).tolist() == out.tolist()
    # Validation rows on which the model ranks backwards: Platt's free slope would be negative
    # and turn the test ranking upside down; the calibration says "no skill" instead.
    inverted = (rng.uniform(size=300) < (1 - raw) ** 2).astype(int)
    cal = Calibrator.fit("platt", raw, inverted)
    out = cal.apply(np.linspace(0, 1, 101))
    assert cal.params["a"] == 0.0
    assert np.allclose(out, np.clip(inverted.mean(), PROB_CLIP, 1 - PROB_CLIP))
    with pytest.raises(ModelError, match="invert"):  # one saved with a free slope is refused
        Calibrator("platt", {"a": -1.0, "b": 0.0})
    # Isotonic regression on few rows reaches 0 and 1 before clipping.
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(raw, y)
    assert iso.predict(grid).min() == 0.0
