"""Training assets: the training set, out-of-sample predictions and the champion model."""

from dataclasses import replace
from datetime import UTC, datetime
from typing import Literal

import dagster as dg
import polars as pl

from assets.common import markdown_table
from pipelines.features import FEATURE_SET_VERSION
from pipelines.features.registry import CATEGORIES
from pipelines.models.registry import PromotionRule, log_and_register
from pipelines.models.stacking import stack_out_of_fold
from pipelines.models.training import (
    build_training_set,
    folds_for,
    plan_for,
    train_walk_forward,
)
from pipelines.models.tuning import TuningConfig, best_params, trials_taken, tune
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
    features = [c for c in training_set.columns if c.split("_", 1)[0] in CATEGORIES]
    plan = plan_for(config.mode, config.kind, config.seed)
    trials = 0
    if config.mode == "full" and config.tune_trials > 0:
        end = str(training_set["ts"].max())[:10]
        tuning = TuningConfig(
            study_name=f"{mlflow.model_name}-{config.kind}-{end}",
            n_trials=config.tune_trials,
            storage=optuna.storage,
            seed=config.seed,
        )
        study = tune(training_set, features=features, kind=config.kind, config=tuning)
        trials = trials_taken(study)
        params = {**plan.model.params, **best_params(study)}
        plan = replace(plan, model=replace(plan.model, params=params))
    result = train_walk_forward(training_set, plan, features)
    decision = log_and_register(
        result,
        config=plan.model,
        tracking_uri=mlflow.tracking_uri,
        experiment=mlflow.experiment,
        model_name=mlflow.model_name,
        feature_set_version=FEATURE_SET_VERSION,
        data_range=(str(training_set["ts"].min()), str(training_set["ts"].max())),
        rule=PromotionRule(
            config.promote_metric, config.promote_metric != "auc", config.promote_margin
        ),
        importance_sample=training_set.tail(2000),
        tags={"optuna.trials": str(trials), "mode": config.mode},
    )
    overall = result.overall()
    predictions = result.predictions.with_columns(
        model_version=pl.lit(decision.version), run_id=pl.lit(decision.run_id)
    )
    stacked_meta: dict[str, float] = {}
    if config.stack:
        catboost = plan_for(config.mode, "catboost", config.seed).model
        stacked = stack_out_of_fold(
            training_set,
            folds_for(training_set, plan),
            {"lightgbm": plan.model, "catboost": catboost},
            features=features,
        )
        predictions = predictions.join(
            stacked.predictions.select("symbol", "ts", "fold", prob_stacked=pl.col("prob")),
            on=["symbol", "ts", "fold"],
            how="left",
        )
        stacked_meta = {f"stacked_{k}": v for k, v in stacked.metrics().items()}
    yield dg.Output(
        predictions,
        output_name="oos_predictions",
        metadata={
            "rows": predictions.height,
            "folds": len(result.metrics),
            "skipped_folds": result.skipped or "none",
            "optuna_trials": trials,
            **stacked_meta,
            **{f"oos_{k}": v for k, v in overall.items()},
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
