"""Training assets: the training set, out-of-sample predictions and the champion model."""

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal

import dagster as dg
import polars as pl

from assets.common import markdown_table, partition_records
from pipelines.features import FEATURE_SET_VERSION
from pipelines.models.registry import PromotionRule
from pipelines.models.training import TrainingRequest, build_training_set, run_training
from pipelines.months import rows_in_windows, select_training_months
from resources import MlflowResource, OptunaResource

GROUP = "training"


class TrainingSetConfig(dg.Config):  # type: ignore[misc]
    """Run config of the training set."""

    allow_gaps: bool = False
    """Train on the usable months when others failed a blocking check or were never
    materialized; those are left out and named in the log and the metadata."""


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


def build_training_set_asset(upstream: Sequence[dg.AssetsDefinition]) -> dg.AssetsDefinition:
    """The training set over the months that every asset of ``upstream`` (the feature matrix
    and the labels it reads, and the bars they are built from) holds and passed the blocking
    checks of; all on one set of time partitions."""
    partitions = upstream[0].partitions_def if upstream else None
    if not isinstance(partitions, dg.TimeWindowPartitionsDefinition) or any(
        a.partitions_def != partitions for a in upstream
    ):
        raise ValueError(
            "training_set needs upstream assets on one set of time partitions; got "
            f"{ {a.key.to_user_string(): a.partitions_def for a in upstream} }"
        )
    reads = ("feature_matrix", "triple_barrier_labels")
    if not set(reads) <= {a.key.to_user_string() for a in upstream}:
        raise ValueError(f"training_set reads {list(reads)}: give their definitions in upstream")

    @dg.asset(
        group_name=GROUP,
        ins={name: dg.AssetIn(metadata={"allow_missing_partitions": True}) for name in reads},
        deps=[a.key for a in upstream if a.key.to_user_string() not in reads],
        io_manager_key="parquet_io_manager",
        kinds={"polars", "parquet"},
    )
    def training_set(
        context: dg.AssetExecutionContext,
        config: TrainingSetConfig,
        feature_matrix: pl.DataFrame,
        triple_barrier_labels: pl.DataFrame,
    ):  # type: ignore[no-untyped-def]
        """Every labelled bar with its features and target y (label +1), over every month that
        is materialized and passed its blocking checks (run config ``allow_gaps``)."""
        keys = partitions.get_partition_keys(dynamic_partitions_store=context.instance)
        records = {
            a.key.to_user_string(): partition_records(context.instance, a, keys) for a in upstream
        }
        months = select_training_months(keys, records, allow_gaps=config.allow_gaps)
        if months.left_out:
            n = len(months.left_out)
            context.log.warning(
                f"allow_gaps: {n} month{'s' if n > 1 else ''} left out of the training set:\n"
                + months.describe_left_out()
            )
        windows = [
            (w.start.astimezone(UTC), w.end.astimezone(UTC))
            for w in map(partitions.time_window_for_partition_key, months.used)
        ]
        data = build_training_set(
            rows_in_windows(feature_matrix, windows),
            rows_in_windows(triple_barrier_labels, windows),
        )
        return dg.MaterializeResult(
            value=data,
            metadata={
                "rows": data.height,
                "symbols": data["symbol"].n_unique(),
                "start": str(data["ts"].min()),
                "end": str(data["ts"].max()),
                "positive_share": float(data["y"].mean() or 0.0),
                "months": list(months.used),
                "left_out_months": {m: "; ".join(why) for m, why in months.left_out.items()},
            },  # type: ignore[arg-type]
        )

    return training_set


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
