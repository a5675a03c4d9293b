"""MLflow tracking and the champion/challenger rule, on a local SQLite tracking store."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipelines.features import FeatureConfig, feature_registry
from pipelines.models.estimators import ModelConfig, ModelError
from pipelines.models.registry import PromotionRule, load_champion, log_and_register
from pipelines.models.splits import walk_forward
from pipelines.models.walk_forward import WalkForwardResult, run_walk_forward
from pipelines.timeframes import Timeframe

pytestmark = pytest.mark.unit
CONFIG = FeatureConfig(Timeframe.parse("15m"))
FEATURES = [n for n in feature_registry(CONFIG).names if not n.startswith("mtf_")][:80]


@pytest.fixture(scope="module")
def trained(sample_data: pl.DataFrame) -> tuple[WalkForwardResult, pl.DataFrame]:
    data = sample_data
    folds = walk_forward(
        data, train=timedelta(days=10), validation=timedelta(days=3), test=timedelta(days=3)
    )
    config = ModelConfig(
        "lightgbm", {"num_leaves": 7}, seed=3, num_boost_round=50, early_stopping_rounds=10
    )
    return run_walk_forward(data, folds, config, features=FEATURES), data


def _log(result: WalkForwardResult, data: pl.DataFrame, uri: str, rule: PromotionRule):  # type: ignore[no-untyped-def]
    return log_and_register(
        result,
        config=ModelConfig("lightgbm", seed=3),
        tracking_uri=uri,
        experiment="test",
        model_name="quantdag-test",
        feature_set_version="1",
        data_range=("2019-01-01", "2019-02-15"),
        rule=rule,
        importance_sample=data.head(200),
    )


def test_first_model_becomes_champion_then_rule_decides(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import mlflow

    result, data = trained
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = _log(result, data, uri, PromotionRule("log_loss", True, 0.0))
    assert first.promoted and first.reason == "no champion yet"
    # The same model again cannot beat the champion by a positive margin.
    second = _log(result, data, uri, PromotionRule("log_loss", True, 0.01))
    assert not second.promoted and "<= margin 0.01" in second.reason
    client = mlflow.MlflowClient(uri)
    assert (
        str(client.get_model_version_by_alias("quantdag-test", "champion").version) == first.version
    )
    assert (
        str(client.get_model_version_by_alias("quantdag-test", "challenger").version)
        == second.version
    )
    run = client.get_run(second.run_id)
    assert run.data.tags["registry.decision"] == "kept challenger"
    assert "oos.auc" in run.data.metrics and run.data.tags["feature_set_version"] == "1"
    per_fold = client.list_artifacts(second.run_id, "importance")
    assert len(per_fold) == len(result.models)  # gain and SHAP of every fold's model
    history = client.get_metric_history(second.run_id, "fold.auc")
    assert len(history) == len(result.metrics)
    model, calibrator, transform = load_champion(uri, "quantdag-test", tmp_path / "dl")
    assert transform is not None and transform == result.transforms[-1]
    test = transform.apply(data.tail(50).select("symbol", "ts", *FEATURES))
    np.testing.assert_allclose(model.predict_proba(test), result.models[-1].predict_proba(test))
    assert calibrator == result.calibrators[-1]
    arts = {p.name for p in (tmp_path / "dl").rglob("*") if p.is_file()}
    assert {
        "model.txt",
        "manifest.json",
        "features.json",
        "calibration.json",
        "importance.json",
    } <= arts


def test_nothing_to_register_is_an_error(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result, data = trained
    empty = WalkForwardResult(result.predictions, [], ["all skipped"], [], [], [])
    with pytest.raises(ModelError, match="nothing to register"):
        _log(empty, data, f"sqlite:///{tmp_path / 'm.db'}", PromotionRule())
