"""Models on real features and labels: seeds, early stopping, native formats, refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipelines.features import FeatureConfig, build_features, feature_registry
from pipelines.labels import BarrierConfig, label_triple_barrier
from pipelines.models.estimators import FittedModel, ModelConfig, ModelError, train_classifier
from pipelines.timeframes import Timeframe

pytestmark = pytest.mark.unit
CONFIG = FeatureConfig(Timeframe.parse("15m"))
FEATURES = [n for n in feature_registry(CONFIG).names if not n.startswith(("mtf_", "xs_"))][:60]


@pytest.fixture(scope="module")
def dataset(sample_data: pl.DataFrame) -> pl.DataFrame:
    return sample_data.filter(pl.col("trend_sma_200").is_not_null())


def _split(data: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    n = data.height
    return data[: n * 6 // 10], data[n * 6 // 10 : n * 8 // 10], data[n * 8 // 10 :]


@pytest.mark.parametrize("kind", ["lightgbm", "catboost", "logistic"])
def test_same_seed_same_model_and_native_round_trip(
    dataset: pl.DataFrame, kind: str, tmp_path: Path
) -> None:
    train, val, test = _split(dataset)
    config = ModelConfig(
        kind,
        {"learning_rate": 0.05} if kind != "logistic" else {},
        seed=11,  # type: ignore[arg-type]
        num_boost_round=60,
        early_stopping_rounds=10,
    )
    kw = {"features": FEATURES, "validation": val, "y_validation": val["y"].to_numpy()}
    a = train_classifier(config, train, train["y"].to_numpy(), **kw)  # type: ignore[arg-type]
    b = train_classifier(config, train, train["y"].to_numpy(), **kw)  # type: ignore[arg-type]
    pa, pb = a.predict_proba(test), b.predict_proba(test)
    assert np.array_equal(pa, pb)
    assert ((pa > 0) & (pa < 1)).all()
    digest = a.save(tmp_path / kind)
    loaded = FittedModel.load(tmp_path / kind)
    np.testing.assert_allclose(loaded.predict_proba(test), pa, rtol=1e-12)
    assert len(digest) == 64 and loaded.features == tuple(FEATURES)


def test_early_stopping_watches_the_validation_set_only(dataset: pl.DataFrame) -> None:
    train, val, _ = _split(dataset)
    config = ModelConfig(
        "lightgbm",
        {"learning_rate": 0.3, "num_leaves": 63},
        seed=1,
        num_boost_round=400,
        early_stopping_rounds=5,
    )
    model = train_classifier(
        config,
        train,
        train["y"].to_numpy(),
        features=FEATURES,
        validation=val,
        y_validation=val["y"].to_numpy(),
    )
    assert model.best_iteration is not None and model.best_iteration < 400
    no_val = train_classifier(config, train, train["y"].to_numpy(), features=FEATURES)
    assert no_val.best_iteration is None


def test_sample_weights_change_the_model(dataset: pl.DataFrame) -> None:
    train, _, test = _split(dataset)
    config = ModelConfig("lightgbm", seed=3, num_boost_round=40)
    w = np.linspace(0.1, 2.0, train.height)
    plain = train_classifier(config, train, train["y"].to_numpy(), features=FEATURES)
    weighted = train_classifier(config, train, train["y"].to_numpy(), features=FEATURES, weight=w)
    assert not np.array_equal(plain.predict_proba(test), weighted.predict_proba(test))


def test_refusals(dataset: pl.DataFrame, tmp_path: Path) -> None:
    train, _, test = _split(dataset)
    config = ModelConfig("lightgbm", seed=3, num_boost_round=20)
    model = train_classifier(config, train, train["y"].to_numpy(), features=FEATURES)
    reordered = test.select("symbol", "ts", FEATURES[1], FEATURES[0], *FEATURES[2:])
    with pytest.raises(ModelError, match="another order"):
        model.predict_proba(reordered)
    with pytest.raises(ModelError, match="missing"):
        model.predict_proba(test.drop(FEATURES[3]))
    with pytest.raises(ModelError, match="only class"):
        train_classifier(config, train, np.zeros(train.height), features=FEATURES)
    as_text = test.with_columns(pl.col(FEATURES[2]).cast(pl.Utf8))
    with pytest.raises(ModelError, match=f"integer or float.*{FEATURES[2]} \\(String\\)"):
        model.predict_proba(as_text)
    as_bool = test.with_columns(pl.col(FEATURES[1]) > 0)
    with pytest.raises(ModelError, match="integer or float"):
        model.predict_proba(as_bool)
    with pytest.raises(ModelError, match="more than once"):
        train_classifier(config, train, train["y"].to_numpy(), features=[*FEATURES, FEATURES[0]])
    model.save(tmp_path / "m")
    native = tmp_path / "m" / "model.txt"
    native.write_text(native.read_text().replace("num_leaves", "num_leaves ", 1))
    with pytest.raises(ModelError, match="checksum"):
        FittedModel.load(tmp_path / "m")


def test_missing_values_follow_the_stated_policy(dataset: pl.DataFrame) -> None:
    train, _, test = _split(dataset)
    holed = test.with_columns(pl.lit(None, pl.Float64).alias(FEATURES[0]))
    for kind in ("lightgbm", "logistic"):
        config = ModelConfig(kind, seed=2, num_boost_round=20)  # type: ignore[arg-type]
        model = train_classifier(config, train, train["y"].to_numpy(), features=FEATURES)
        p = model.predict_proba(holed)
        assert np.isfinite(p).all()


def test_live_prediction_equals_the_batch_path(dataset: pl.DataFrame) -> None:
    from pipelines.features.transform import FeatureTransform
    from pipelines.models.inference import predict_bar
    from pipelines.models.walk_forward import Calibrator

    train, val, test = _split(dataset)
    transform = FeatureTransform.fit(train, FEATURES)
    config = ModelConfig("lightgbm", seed=4, num_boost_round=30)
    model = train_classifier(
        config, transform.apply(train), train["y"].to_numpy(), features=FEATURES
    )
    cal = Calibrator.fit("platt", model.predict_proba(transform.apply(val)), val["y"].to_numpy())
    bar = test.group_by("symbol").last()
    live = predict_bar(model, bar, transform=transform, calibrator=cal)
    batch = cal.apply(model.predict_proba(transform.apply(bar)))
    np.testing.assert_allclose(live, batch, rtol=1e-12)
    other = FeatureTransform.fit(train, FEATURES[:-1])
    with pytest.raises(ModelError, match="other features"):
        predict_bar(model, bar, transform=other)


def test_meta_label_model_on_a_primary_side(sample_bars: pl.DataFrame) -> None:
    from pipelines.labels import meta_labels
    from pipelines.models.training import build_meta_training_set

    matrix = build_features(sample_bars, CONFIG)
    # A primary model: follow the 5-bar momentum.
    events = matrix.filter(pl.col("momentum_roc_5").is_not_null() & (pl.col("momentum_roc_5") != 0))
    events = events.select("symbol", "ts", side=pl.col("momentum_roc_5").sign().cast(pl.Int8))
    labels = label_triple_barrier(sample_bars, BarrierConfig(), events=events).labels
    data = build_meta_training_set(matrix, meta_labels(labels))
    assert set(data["primary_side"].unique()) == {-1.0, 1.0}
    assert ((data["y"] == 1) == (data["ret"] > 0)).all()
    cut = data["ts"].sort()[data.height * 3 // 4]
    train, test = data.filter(pl.col("ts") < cut), data.filter(pl.col("ts") >= cut)
    cols = [*FEATURES, "primary_side"]
    model = train_classifier(
        ModelConfig("lightgbm", seed=1, num_boost_round=30),
        train,
        train["y"].to_numpy(),
        features=cols,
    )
    p = model.predict_proba(test)
    assert ((p > 0) & (p < 1)).all() and len(p) == test.height
