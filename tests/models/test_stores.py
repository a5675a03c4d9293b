"""Tracking and study stores: a store that is down is a clear error and leaves nothing behind;
MLflow and Optuna on the real local PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

from pipelines.features import FeatureConfig, feature_registry
from pipelines.models.estimators import ModelConfig, ModelError
from pipelines.models.promotion import GateConfig, PromotionRule, skill_gate
from pipelines.models.registry import log_and_register
from pipelines.models.splits import walk_forward
from pipelines.models.walk_forward import WalkForwardResult, run_walk_forward
from pipelines.timeframes import Timeframe

CONFIG = FeatureConfig(Timeframe.parse("15m"))
FEATURES = [n for n in feature_registry(CONFIG).names if not n.startswith("mtf_")][:30]
DOWN = "postgresql+psycopg://quantdag:secret@127.0.0.1:1/none"


@pytest.fixture(scope="module")
def result(sample_data: pl.DataFrame) -> WalkForwardResult:
    data = sample_data.filter(pl.col("symbol").is_in(["AAPL", "MSFT", "SPY", "JPM"]))
    folds = walk_forward(
        data, train=timedelta(days=8), validation=timedelta(days=2), test=timedelta(days=3)
    )
    return run_walk_forward(
        data, folds, ModelConfig("lightgbm", seed=1, num_boost_round=20), features=FEATURES
    )


def _register(result: WalkForwardResult, uri: str):  # type: ignore[no-untyped-def]
    return log_and_register(
        result,
        config=ModelConfig("lightgbm"),
        tracking_uri=uri,
        experiment="e",
        model_name="m",
        feature_set_version="1",
        data_range=("a", "b"),
        rule=PromotionRule(),
        verdict=skill_gate(result.predictions, GateConfig(min_rows=10)),
        rescore=lambda info, load: "not compared here",
    )


@pytest.mark.unit
def test_mlflow_store_down_is_a_clear_error(result: WalkForwardResult) -> None:
    with pytest.raises(ModelError, match=r"does not answer.*nothing was logged") as err:
        _register(result, DOWN)
    assert "secret" not in str(err.value)


@pytest.mark.unit
def test_optuna_store_down_is_a_clear_error(result: WalkForwardResult) -> None:
    from pipelines.models.tuning import TuningConfig, TuningError, prepare_study

    with pytest.raises(TuningError, match=r"127\.0\.0\.1:1/none does not answer") as err:
        prepare_study(TuningConfig(storage=DOWN))
    assert "secret" not in str(err.value)


@pytest.mark.unit
def test_a_fold_with_one_class_is_skipped_with_its_reason(
    result: WalkForwardResult, sample_bars: pl.DataFrame
) -> None:
    preds = result.predictions
    assert preds.height > 0
    data = pl.DataFrame(
        {
            "ts": preds["ts"],
            "t1": preds["ts"],
            "symbol": preds["symbol"],
            "f": preds["prob_raw"],
            "y": pl.Series("y", [0] * preds.height, pl.Int8),
        }
    )
    folds = walk_forward(data.sort("ts"), train=20, validation=5, test=5)
    with pytest.raises(ModelError, match=r"every fold was skipped.*only class"):
        run_walk_forward(
            data.sort("ts"), folds, ModelConfig("lightgbm", num_boost_round=5), features=["f"]
        )


@pytest.mark.integration
def test_mlflow_on_postgres(result: WalkForwardResult, pg_database: str, tmp_path: Path) -> None:
    import mlflow

    decision = _register(result, pg_database)
    assert decision.version == "1"
    run = mlflow.MlflowClient(pg_database).get_run(decision.run_id)
    assert run.data.tags["registry.reason"] == decision.reason and "oos.auc" in run.data.metrics


@pytest.mark.integration
def test_optuna_on_postgres_stores_no_password(sample_data: pl.DataFrame, pg_database: str) -> None:
    """A study on a storage URL holding a password: no table of the storage holds it."""
    import uuid

    import sqlalchemy as sa

    from pipelines.models.estimators import ModelConfig
    from pipelines.models.splits import walk_forward
    from pipelines.models.tuning import TuningConfig, trials_taken, tune_fold
    from tests.secrets_search import Search, postgres_rows, scan_rows

    secret = f"S3cr3t-optuna-{uuid.uuid4().hex}"
    url = sa.make_url(pg_database).set(password=secret).render_as_string(hide_password=False)
    config = TuningConfig(study_name="s", n_trials=2, storage=url, max_rounds=50)
    fold = walk_forward(
        sample_data, train=timedelta(days=10), validation=timedelta(days=3), test=timedelta(days=3)
    )[0]
    _, study = tune_fold(
        sample_data, fold, base=ModelConfig("logistic"), features=FEATURES[:10], config=config
    )
    assert trials_taken(study) == 2
    search = Search({"QUANTDAG_OPTUNA_URI": secret})
    scan_rows(search, "optuna", postgres_rows(pg_database))
    assert not search.hits, "\n".join(search.hits)
    assert search.searched["optuna"] > 10  # the study, its two trials, their parameters...
