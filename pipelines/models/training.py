"""The training recipe the assets run: the training set, the folds and the model per mode."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal, cast

import polars as pl

from pipelines.features.registry import CATEGORIES
from pipelines.models.estimators import Kind, ModelConfig
from pipelines.models.registry import PromotionRule, RegistryDecision, log_and_register
from pipelines.models.splits import Fold, walk_forward
from pipelines.models.stacking import stack_out_of_fold
from pipelines.models.tuning import TuningConfig, best_params, trials_taken, tune
from pipelines.models.walk_forward import Calibration, WalkForwardResult, run_walk_forward

Mode = Literal["quick", "full"]


@dataclass(frozen=True)
class TrainingPlan:
    """``quick`` trains a small model on few folds (for ``make run`` and tests); ``full`` the
    nightly one. Fold sizes follow the data: ``test_windows`` test blocks, each preceded by a
    validation block of the same length and a training window ``train_multiple`` times as long;
    an embargo of ``embargo`` after each held-out block."""

    mode: Mode
    model: ModelConfig
    test_windows: int
    train_multiple: int = 3
    calibration: Calibration = "isotonic"
    embargo: timedelta = field(default_factory=lambda: timedelta(hours=4))


def plan_for(mode: Mode, kind: Kind = "lightgbm", seed: int = 0) -> TrainingPlan:
    if mode == "quick":
        model = ModelConfig(
            kind,
            {"num_leaves": 15, "learning_rate": 0.1, "min_data_in_leaf": 50}
            if kind == "lightgbm"
            else {},
            seed=seed,
            num_boost_round=100,
            early_stopping_rounds=10,
        )
        return TrainingPlan("quick", model, test_windows=3)
    model = ModelConfig(
        kind,
        {
            "num_leaves": 31,
            "learning_rate": 0.03,
            "min_data_in_leaf": 200,
            "feature_fraction": 0.7,
            "bagging_fraction": 0.8,
            "bagging_freq": 1,
        }
        if kind == "lightgbm"
        else {},
        seed=seed,
        num_boost_round=2000,
        early_stopping_rounds=100,
    )
    return TrainingPlan("full", model, test_windows=12)


def build_training_set(features: pl.DataFrame, labels: pl.DataFrame) -> pl.DataFrame:
    """Features joined to their labels (inner: a row needs both), target ``y`` = label is +1,
    sorted by time then symbol."""
    keep = [c for c in ("symbol", "ts", "t1", "label", "ret", "weight") if c in labels.columns]
    data = features.join(labels.select(keep), on=["symbol", "ts"], how="inner")
    return data.with_columns(y=(pl.col("label") == 1).cast(pl.Int8)).sort("ts", "symbol")


def folds_for(data: pl.DataFrame, plan: TrainingPlan) -> list[Fold]:
    first, last = cast(datetime, data["ts"].min()), cast(datetime, data["ts"].max())
    block = (last - first) / (plan.test_windows + 1 + plan.train_multiple)
    return walk_forward(
        data, train=block * plan.train_multiple, validation=block, test=block, embargo=plan.embargo
    )


def train_walk_forward(
    data: pl.DataFrame, plan: TrainingPlan, features: list[str]
) -> WalkForwardResult:
    weight = "weight" if "weight" in data.columns else None
    return run_walk_forward(
        data,
        folds_for(data, plan),
        plan.model,
        features=features,
        weight=weight,
        calibration=plan.calibration,
    )


def build_meta_training_set(
    features: pl.DataFrame, meta: pl.DataFrame, primary_side: str = "side"
) -> pl.DataFrame:
    """Features joined to meta-labels (:func:`pipelines.labels.meta_labels` of side-aware
    labels): target ``y`` = the primary model's bet made money, and the primary ``side`` kept
    as a feature, so the meta model learns when to act on the primary model's call."""
    keep = [
        c
        for c in ("symbol", "ts", "t1", "ret", "weight", "meta_label", primary_side)
        if c in meta.columns
    ]
    data = features.join(meta.select(keep), on=["symbol", "ts"], how="inner")
    return data.with_columns(
        y=pl.col("meta_label").cast(pl.Int8),
        primary_side=pl.col(primary_side).cast(pl.Float64),
    ).sort("ts", "symbol")


@dataclass(frozen=True)
class TrainingRequest:
    """What one training run does: ``mode``, model ``kind`` and ``seed``; in full mode
    ``tune_trials`` Optuna trials first (study ``study_name`` in ``study_storage``); ``stack``
    also fits the LightGBM + CatBoost stack on out-of-fold predictions."""

    mode: Mode = "full"
    kind: Kind = "lightgbm"
    seed: int = 0
    tune_trials: int = 20
    study_storage: str | None = None
    study_name: str = "quantdag"
    stack: bool = False


@dataclass(frozen=True)
class TrainingOutcome:
    """The walk-forward result, the registry decision, the trials taken, and the out-of-sample
    predictions with the registered model version (and ``prob_stacked`` when stacked)."""

    result: WalkForwardResult
    decision: RegistryDecision
    trials: int
    predictions: pl.DataFrame
    stacked_metrics: dict[str, float]


def run_training(
    data: pl.DataFrame,
    request: TrainingRequest,
    *,
    tracking_uri: str,
    experiment: str,
    model_name: str,
    rule: PromotionRule,
    feature_set_version: str,
) -> TrainingOutcome:
    """Tune (full mode), train walk-forward, log to MLflow, register and decide the champion,
    and optionally stack; the one core call of the training assets."""
    features = [c for c in data.columns if c.split("_", 1)[0] in CATEGORIES]
    plan = plan_for(request.mode, request.kind, request.seed)
    trials = 0
    if request.mode == "full" and request.tune_trials > 0:
        tuning = TuningConfig(
            study_name=request.study_name,
            n_trials=request.tune_trials,
            storage=request.study_storage,
            seed=request.seed,
        )
        study = tune(data, features=features, kind=request.kind, config=tuning)
        trials = trials_taken(study)
        plan = replace(
            plan, model=replace(plan.model, params={**plan.model.params, **best_params(study)})
        )
    result = train_walk_forward(data, plan, features)
    decision = log_and_register(
        result,
        config=plan.model,
        tracking_uri=tracking_uri,
        experiment=experiment,
        model_name=model_name,
        feature_set_version=feature_set_version,
        data_range=(str(data["ts"].min()), str(data["ts"].max())),
        rule=rule,
        importance_sample=data.tail(2000),
        tags={"optuna.trials": str(trials), "mode": request.mode},
    )
    predictions = result.predictions.with_columns(
        model_version=pl.lit(decision.version), run_id=pl.lit(decision.run_id)
    )
    stacked_metrics: dict[str, float] = {}
    if request.stack:
        bases = {k: plan_for(request.mode, k, request.seed).model for k in ("lightgbm", "catboost")}
        stacked = stack_out_of_fold(data, folds_for(data, plan), bases, features=features)
        predictions = predictions.join(
            stacked.predictions.select("symbol", "ts", "fold", prob_stacked=pl.col("prob")),
            on=["symbol", "ts", "fold"],
            how="left",
        )
        stacked_metrics = stacked.metrics()
    return TrainingOutcome(result, decision, trials, predictions, stacked_metrics)
