"""Training assets: the training set, out-of-sample predictions and the champion model."""

from datetime import UTC, datetime
from typing import Literal

import dagster as dg
import polars as pl

from assets.common import markdown_table
from pipelines.features import FEATURE_SET_VERSION
from pipelines.models.registry import PromotionRule
from pipelines.models.training import TrainingRequest, build_training_set, run_training
from resources import MlflowResource, OptunaResource

GROUP = "training"


class TrainingConfig(dg.Config):  # type: ignore[misc]
    """Run config of the training assets."""

    mode: Literal["quick", "full"] = "full"
    kind: Literal["lightgbm", "catboost", "logistic"] = "lightgbm"
    seed: int = 0
    promote_metric: Literal["log_loss", "auc"] = "log_loss"
    promote_margin: float = 0.0
    tune_trials: int = 20
    """Optuna trials before training in full mode (0: use the plan's parameters as they are)."""
    stack: bool = False
    """Also train CatBoost and a stacker on out-of-fold predictions (column prob_stacked)."""


@dg.asset(
    group_name=GROUP,
    ins={
        "feature_matrix": dg.AssetIn(metadata={"allow_missing_partitions": True}),
        "triple_barrier_labels": dg.AssetIn(metadata={"allow_missing_partitions": True}),
    },
    io_manager_key="parquet_io_manager",
    kinds={"polars", "parquet"},
)
def training_set(
    context: dg.AssetExecutionContext,
    feature_matrix: pl.DataFrame,
    triple_barrier_labels: pl.DataFrame,
):  # type: ignore[no-untyped-def]
    """Every labelled bar with its features and target y (label +1), over all partitions."""
    data = build_training_set(feature_matrix, triple_barrier_labels)
    return dg.MaterializeResult(
        value=data,
        metadata={
            "rows": data.height,
            "symbols": data["symbol"].n_unique(),
            "start": str(data["ts"].min()),
            "end": str(data["ts"].max()),
            "positive_share": float(data["y"].mean() or 0.0),
        },  # type: ignore[arg-type]
    )


@dg.multi_asset(
    group_name=GROUP,
    outs={
        "oos_predictions": dg.AssetOut(
            io_manager_key="parquet_io_manager",
            kinds={"polars", "parquet"},
            description="Calibrated out-of-sample probability, fold and model version for "
            "every bar of every walk-forward test window.",
        ),
        "champion_model": dg.AssetOut(
            io_manager_key="parquet_io_manager",
            kinds={"mlflow"},
            description="The registry decision of the last training run: the newest model is "
            "promoted to champion only if it beats the champion out of sample.",
        ),
    },
    can_subset=False,
)
def walk_forward_models(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    mlflow: MlflowResource,
    optuna: OptunaResource,
    training_set: pl.DataFrame,
):  # type: ignore[no-untyped-def]
    """Purged walk-forward training, MLflow tracking and the champion/challenger decision."""
    end = str(training_set["ts"].max())[:10]
    request = TrainingRequest(
        mode=config.mode,
        kind=config.kind,
        seed=config.seed,
        tune_trials=config.tune_trials,
        study_storage=optuna.storage,
        study_name=f"{mlflow.model_name}-{config.kind}-{end}",
        stack=config.stack,
    )
    outcome = run_training(
        training_set,
        request,
        tracking_uri=mlflow.tracking_uri,
        experiment=mlflow.experiment,
        model_name=mlflow.model_name,
        feature_set_version=FEATURE_SET_VERSION,
        rule=PromotionRule(
            config.promote_metric, config.promote_metric != "auc", config.promote_margin
        ),
    )
    result, decision, predictions = outcome.result, outcome.decision, outcome.predictions
    yield dg.Output(
        predictions,
        output_name="oos_predictions",
        metadata={
            "rows": predictions.height,
            "folds": len(result.metrics),
            "skipped_folds": result.skipped or "none",
            "optuna_trials": outcome.trials,
            **{f"stacked_{k}": v for k, v in outcome.stacked_metrics.items()},
            **{f"oos_{k}": v for k, v in result.overall().items()},
            "per_fold": markdown_table(pl.DataFrame(result.metrics)),
        },
    )
    yield dg.Output(
        pl.DataFrame(
            {
                "run_id": [decision.run_id],
                "version": [decision.version],
                "promoted": [decision.promoted],
                "reason": [decision.reason],
                "decided_at": [datetime.now(UTC)],
            }
        ),
        output_name="champion_model",
        metadata={
            "mlflow_run": mlflow.run_link(decision.run_id),
            "version": decision.version,
            "promoted": decision.promoted,
            "reason": decision.reason,
            "oos_metric": decision.challenger_value,
        },
    )
