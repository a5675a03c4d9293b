"""Training assets: the training set, out-of-sample predictions and the champion model."""

import tempfile
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import dagster as dg
import polars as pl

from assets.common import markdown_table, partition_records, progress_to, say
from assets.metadata import OWNERS, column_schema, figure, figures, readable, table_schema
from pipelines.features import FEATURE_SET_VERSION
from pipelines.models.holdout import HoldoutConfig, split_holdout
from pipelines.models.promotion import GateConfig, PromotionRule
from pipelines.models.registry import score_holdout
from pipelines.models.training import TrainingRequest, build_training_set, run_training
from pipelines.months import rows_in_windows, select_training_months
from pipelines.ops.alerts import Alert, AlertError
from resources import MlflowResource, OptunaResource, TradingDatabaseResource
from resources.alerts import AlertsResource

GROUP = "training"
CODE_VERSION = {"training_set": "1", "walk_forward_models": "1", "holdout_predictions": "1"}
"""Bump an asset's version when its logic changes (see assets/metadata.py)."""
TARGET = dg.TableColumn("y", "Int8", description="The target: 1 if the label is +1, else 0.")
OOS_COLUMNS = column_schema(
    table_schema(
        {
            "symbol": pl.String(),
            "ts": pl.Datetime("us", "UTC"),
            "y": pl.Int8(),
            "ret": pl.Float64(),
            "fold": pl.Int32(),
            "prob_raw": pl.Float64(),
            "prob": pl.Float64(),
            "base_rate": pl.Float64(),
            "model_version": pl.String(),
            "run_id": pl.String(),
            "prob_stacked": pl.Float64(),
        },
        {
            "symbol": "The universe's symbol.",
            "ts": "The bar's START, UTC.",
            "y": "The target: 1 if the label is +1, else 0.",
            "ret": "The label's side-adjusted return to its first barrier (fraction).",
            "fold": "The walk-forward fold whose test window holds the bar.",
            "prob_raw": "The fold model's probability of y = 1, before calibration.",
            "prob": "The calibrated probability of y = 1 (what the strategy trades).",
            "base_rate": "The share of y = 1 the fold's model learnt from (the naive forecast).",
            "model_version": "The registered model version of the training run.",
            "run_id": "The MLflow run of the training.",
            "prob_stacked": "The stacker's probability (only when trained with stack: true).",
        },
    )
)


def set_schema(
    upstream: Sequence[dg.AssetsDefinition], *extra: dg.TableColumn
) -> dict[str, dg.TableSchema]:
    """The column schema of a set of labelled rows: the feature matrix's columns, the labels'
    columns it keeps, the target and ``extra``; none when the upstream declare no schema."""
    schemas = {
        a.key.to_user_string(): a.specs_by_key[a.key].metadata.get("dagster/column_schema")
        for a in upstream
    }
    features, labels = schemas.get("feature_matrix"), schemas.get("triple_barrier_labels")
    if features is None or labels is None:
        return {}
    kept = [c for c in labels.columns if c.name in ("t1", "label", "ret", "weight")]
    return column_schema(dg.TableSchema(columns=[*features.columns, *kept, TARGET, *extra]))


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
    """Against a champion: compared on the rows both models never learnt from."""
    promote_margin: float = 0.0
    """Against a champion: the least improvement (nats a row, or AUC) that promotes."""
    promote_z: float = 2.0
    """Against a champion: the improvement must also be this many standard errors clear."""
    tune_trials: int = 20
    """Optuna trials per walk-forward fold in full mode, on that fold's own training and
    validation rows (0: use the plan's parameters as they are)."""
    gate_log_loss_z: float = 2.0
    """The out-of-sample log loss must beat the base-rate forecast by this many standard
    errors (clustered by contiguous blocks of sessions) for the model to be deployable."""
    gate_auc_z: float = 2.0
    """The within-fold AUC must exceed 0.5 by this many standard errors."""
    gate_min_rows: int = 500
    """Fewer out-of-sample rows than this cannot pass the gate."""
    test_windows: int | None = None
    """Walk-forward test windows (None: the mode's plan, 3 in quick mode and 12 in full)."""
    stack: bool = False
    """Also train CatBoost and a stacker on out-of-fold predictions (column prob_stacked)."""


def build_training_set_asset(
    upstream: Sequence[dg.AssetsDefinition], holdout: HoldoutConfig | None = None
) -> dg.AssetsDefinition:
    """The training set (development rows) and the holdout set over the months that every
    asset of ``upstream`` (the feature matrix and the labels it reads, and the bars they are
    built from) holds and passed the blocking checks of; all on one set of time partitions.
    ``holdout`` (None: none) is split off before anything is fitted."""
    holdout = holdout or HoldoutConfig()
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

    @dg.multi_asset(
        group_name=GROUP,
        ins={name: dg.AssetIn(metadata={"allow_missing_partitions": True}) for name in reads},
        deps=[a.key for a in upstream if a.key.to_user_string() not in reads],
        outs={
            "training_set": dg.AssetOut(
                io_manager_key="parquet_io_manager",
                kinds={"polars", "parquet"},
                owners=OWNERS[GROUP],
                code_version=CODE_VERSION["training_set"],
                metadata=set_schema(upstream),
                description="Every labelled bar outside the holdout with its features and "
                "target y (label +1): the only rows tuning, training, selection and "
                "promotion read.",
            ),
            "holdout_set": dg.AssetOut(
                io_manager_key="parquet_io_manager",
                kinds={"polars", "parquet"},
                owners=OWNERS[GROUP],
                code_version=CODE_VERSION["training_set"],
                metadata=set_schema(
                    upstream,
                    dg.TableColumn(
                        "segment",
                        "String",
                        description="time, symbol or both: how the row is held out.",
                    ),
                ),
                description="The holdout's labelled bars (time range and symbols declared in "
                "the settings' research.holdout), each with its segment; read once per model.",
            ),
        },
        can_subset=False,
    )
    def training_set(
        context: dg.AssetExecutionContext,
        config: TrainingSetConfig,
        feature_matrix: pl.DataFrame,
        triple_barrier_labels: pl.DataFrame,
    ):  # type: ignore[no-untyped-def]
        """Every labelled bar with its features and target y (label +1), over every month that
        is materialized and passed its blocking checks (run config ``allow_gaps``), split into
        development rows and the holdout."""
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
        labelled = build_training_set(
            rows_in_windows(feature_matrix, windows),
            rows_in_windows(triple_barrier_labels, windows),
        )
        split = split_holdout(labelled, holdout)
        data = split.development
        yield dg.Output(
            data,
            output_name="training_set",
            metadata={
                "rows": data.height,
                "dagster/row_count": data.height,
                "symbols": data["symbol"].n_unique(),
                "start": str(data["ts"].min()),
                "end": str(data["ts"].max()),
                "positive_share": figure(float(data["y"].mean() or 0.0)),
                "months": list(months.used),
                "left_out_months": {m: "; ".join(why) for m, why in months.left_out.items()},
                "holdout": holdout.describe(),
                "purged_before_holdout": split.purged,
            },  # type: ignore[arg-type]
        )
        counts = split.holdout.group_by("segment").len().sort("segment")
        yield dg.Output(
            split.holdout,
            output_name="holdout_set",
            metadata={
                "holdout": holdout.describe(),
                "rows": split.holdout.height,
                "dagster/row_count": split.holdout.height,
                "rows_by_segment": dict(counts.iter_rows()),
            },
        )

    return training_set


def build_walk_forward_models_asset(embargo: timedelta | None = None) -> dg.AssetsDefinition:
    """The training asset, with ``embargo`` after each held-out block (None: the plan's, for
    intraday bars; daily bars take :func:`pipelines.models.training.embargo_for`)."""

    @dg.multi_asset(
        group_name=GROUP,
        outs={
            "oos_predictions": dg.AssetOut(
                io_manager_key="parquet_io_manager",
                kinds={"polars", "parquet"},
                owners=OWNERS[GROUP],
                code_version=CODE_VERSION["walk_forward_models"],
                metadata=OOS_COLUMNS,
                description="Calibrated out-of-sample probability, base rate, fold and model "
                "version for every bar of every walk-forward test window.",
            ),
            "champion_model": dg.AssetOut(
                io_manager_key="parquet_io_manager",
                kinds={"mlflow"},
                owners=OWNERS[GROUP],
                code_version=CODE_VERSION["walk_forward_models"],
                description="The registry decision of the last training run: the new model "
                "is champion only if it passed the skill gate and beat the champion on the same "
                "rows.",
            ),
        },
        ins={"training_set": dg.AssetIn()},
        check_specs=[
            dg.AssetCheckSpec(
                "skill_gate",
                asset="oos_predictions",
                description="The out-of-sample predictions beat the base rate by the gate's "
                "z-scores (log loss and within-fold AUC); a model that fails it never trades.",
            ),
            dg.AssetCheckSpec(
                "not_one_sided",
                asset="oos_predictions",
                description="At most 95% of the out-of-sample predictions on one side of the "
                "base rate (a model calling 'up' nearly always has learnt the base rate only).",
            ),
        ],
        can_subset=False,
    )
    def walk_forward_models(  # type: ignore[no-untyped-def]
        context: dg.AssetExecutionContext,
        config: TrainingConfig,
        mlflow: MlflowResource,
        optuna: OptunaResource,
        trading_db: TradingDatabaseResource,
        alerts: AlertsResource,
        training_set: pl.DataFrame,
    ):
        """Purged walk-forward training (nested tuning in full mode), the skill gate and the
        champion decision, tracked in MLflow."""
        yield from _train_walk_forward(
            context, config, mlflow, optuna, training_set, embargo, trading_db, alerts
        )

    return walk_forward_models


walk_forward_models = build_walk_forward_models_asset()
"""The training asset with the intraday embargo."""


def _train_walk_forward(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    mlflow: MlflowResource,
    optuna: OptunaResource,
    training_set: pl.DataFrame,
    embargo: timedelta | None,
    trading_db: TradingDatabaseResource,
    alerts: AlertsResource,
) -> Iterator[dg.Output[pl.DataFrame] | dg.AssetCheckResult]:
    end = str(training_set["ts"].max())[:10]
    request = TrainingRequest(
        mode=config.mode,
        kind=config.kind,
        seed=config.seed,
        tune_trials=config.tune_trials,
        study_storage=optuna.storage,
        study_name=f"{mlflow.model_name}-{config.kind}-{end}",
        stack=config.stack,
        gate=GateConfig(config.gate_log_loss_z, config.gate_auc_z, config.gate_min_rows),
        rule=PromotionRule(config.promote_metric, config.promote_margin, config.promote_z),
        test_windows=config.test_windows,
        embargo=embargo,
    )
    say(
        context,
        f"training {config.kind} in {config.mode} mode on {training_set.height} rows"
        + (f", {config.tune_trials} tuning trials a fold" if config.mode == "full" else ""),
    )
    outcome = run_training(
        training_set,
        request,
        tracking_uri=mlflow.tracking_uri,
        experiment=mlflow.experiment,
        model_name=mlflow.model_name,
        feature_set_version=FEATURE_SET_VERSION,
        progress=progress_to(context, "training"),
    )
    result, decision, predictions = outcome.result, outcome.decision, outcome.predictions
    verdict = outcome.verdict
    folds = pl.DataFrame(
        [
            {
                "fold": r.index,
                "test_start": str(r.test_start),
                "base_rate": round(r.base_rate, 4),
                "trials": r.trials,
                "best_iteration": r.best_iteration,
            }
            for r in result.records
        ]
    )
    per_fold = pl.DataFrame(result.metrics).with_columns(pl.col("fold").cast(pl.Int64))
    yield dg.Output(
        predictions,
        output_name="oos_predictions",
        metadata={
            "rows": predictions.height,
            "dagster/row_count": predictions.height,
            "folds": len(result.records),
            "skipped_folds": result.skipped or "none",
            "tuning_trials": outcome.trials,
            **figures(outcome.stacked_metrics, "stacked_"),
            **figures(result.overall(), "oos_"),
            **figures(verdict.figures, "gate_"),
            "per_fold": markdown_table(readable(folds.join(per_fold, on="fold", how="left"))),
        },
    )
    above = float((predictions["prob"] > predictions["base_rate"]).mean() or 0.0)
    yield dg.AssetCheckResult(
        check_name="skill_gate",
        asset_key="oos_predictions",
        passed=verdict.passed,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"reason": verdict.reason, **figures(verdict.figures)},
    )
    yield dg.AssetCheckResult(
        check_name="not_one_sided",
        asset_key="oos_predictions",
        passed=0.05 <= above <= 0.95,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"share_above_base_rate": round(above, 4), "limits": "0.05 .. 0.95"},
    )
    if not verdict.passed:
        alert = Alert(
            "gate_refused",
            f"gate_refused:{decision.run_id}",
            f"training run {decision.run_id[:8]} failed the skill gate: not deployable",
            f"{verdict.reason}\n{decision.reason}",
            "warn",
        )
        try:
            alerts.alerter(trading_db.store().engine).raise_alert(alert, datetime.now(UTC))
        except AlertError as exc:  # the model and its decision stand; only the telling failed
            context.log.warning(f"the gate_refused alert could not be delivered: {exc}")
    yield dg.Output(
        pl.DataFrame(
            {
                "run_id": [decision.run_id],
                "version": [decision.version],
                "promoted": [decision.promoted],
                "deployable": [decision.gate_passed],
                "reason": [decision.reason],
                "decided_at": [datetime.now(UTC)],
            }
        ),
        output_name="champion_model",
        metadata={
            "mlflow_run": mlflow.run_link(decision.run_id),
            "version": decision.version,
            "promoted": decision.promoted,
            "deployable": decision.gate_passed,
            "reason": decision.reason,
        },
    )


@dg.asset(
    group_name=GROUP,
    io_manager_key="parquet_io_manager",
    kinds={"polars", "parquet"},
    ins={"champion_model": dg.AssetIn(), "holdout_set": dg.AssetIn()},
    owners=OWNERS[GROUP],
    code_version=CODE_VERSION["holdout_predictions"],
)
def holdout_predictions(
    context: dg.AssetExecutionContext,
    mlflow: MlflowResource,
    champion_model: pl.DataFrame,
    holdout_set: pl.DataFrame,
):  # type: ignore[no-untyped-def]
    """The last trained model's one reading of the holdout: its predictions and figures."""
    version = str(champion_model["version"][0])
    if holdout_set.height == 0:
        context.log.warning(
            "the holdout holds no rows: none is declared for this environment "
            "(research.holdout), or the data has no row from its start on nor of its symbols"
        )
        return dg.MaterializeResult(
            value=holdout_set.select("symbol", "ts", "segment", "y").with_columns(
                prob=pl.lit(None, pl.Float64), base_rate=pl.lit(None, pl.Float64)
            ),
            metadata={"model_version": version, "holdout": "no rows (see research.holdout)"},
        )
    with tempfile.TemporaryDirectory() as tmp:
        score = score_holdout(
            mlflow.tracking_uri,
            mlflow.model_name,
            version,
            holdout_set,
            as_of=datetime.now(UTC),
            into=Path(tmp),
        )
    context.log.info(f"model v{version} scored once on {holdout_set.height} holdout rows")
    return dg.MaterializeResult(
        value=score.predictions,
        metadata={
            "model_version": version,
            "mlflow_run": mlflow.run_link(score.run_id),
            **figures(score.metrics),
        },
    )
