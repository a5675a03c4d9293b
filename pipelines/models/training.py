"""The training recipe the assets run: the training set, the folds and the model per mode."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Literal

import polars as pl

from pipelines.features.registry import CATEGORIES
from pipelines.labels.partition import calendar_days
from pipelines.models.estimators import Kind, ModelConfig, ModelError
from pipelines.models.evaluation import EvaluationError
from pipelines.models.holdout import HoldoutError
from pipelines.models.promotion import (
    Comparison,
    GateConfig,
    GateVerdict,
    PromotionRule,
    Unusable,
    compare_on_rows,
    skill_gate,
)
from pipelines.models.registry import (
    ChampionInfo,
    RegistryDecision,
    log_and_register,
    scored_holdout_rows,
)
from pipelines.models.splits import Fold, walk_forward
from pipelines.models.stacking import stack_out_of_fold
from pipelines.models.tuning import TuningConfig, trials_taken, tune_fold
from pipelines.models.walk_forward import (
    Calibration,
    FoldFit,
    FoldTuner,
    WalkForwardResult,
    run_walk_forward,
)
from pipelines.timeframes import Timeframe

Mode = Literal["quick", "full"]
INTRADAY_EMBARGO = timedelta(hours=4)


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
    calibration: Calibration = "platt"
    embargo: timedelta = INTRADAY_EMBARGO


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
    """The plan's walk-forward folds on ``data``: blocks of an equal number of bar times (not
    of calendar time, whose weekends and holidays would leave some windows empty)."""
    times = data["ts"].n_unique()
    blocks = plan.test_windows + 1 + plan.train_multiple
    block = max(times // blocks, 1)
    # The bar times left over widen the training windows, so that the last test window ends
    # with the data and is as long as the others.
    train = block * plan.train_multiple + max(times - block * blocks, 0)
    return walk_forward(data, train=train, validation=block, test=block, embargo=plan.embargo)


def train_walk_forward(
    data: pl.DataFrame, plan: TrainingPlan, features: list[str], tuner: FoldTuner | None = None
) -> WalkForwardResult:
    """The walk-forward of ``plan`` on ``data`` (sample weights when it has a ``weight``
    column), each fold tuned by ``tuner`` when given."""
    weight = "weight" if "weight" in data.columns else None
    return run_walk_forward(
        data,
        folds_for(data, plan),
        plan.model,
        features=features,
        weight=weight,
        calibration=plan.calibration,
        tuner=tuner,
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
    ``tune_trials`` Optuna trials per walk-forward fold, on that fold's own rows (studies
    named from ``study_name`` in ``study_storage``); ``gate`` and ``rule`` decide promotion;
    ``stack`` also fits the LightGBM + CatBoost stack on out-of-fold predictions;
    ``test_windows`` overrides the plan's number of walk-forward test windows."""

    mode: Mode = "full"
    kind: Kind = "lightgbm"
    seed: int = 0
    tune_trials: int = 20
    study_storage: str | None = None
    study_name: str = "quantdag"
    stack: bool = False
    gate: GateConfig = field(default_factory=GateConfig)
    rule: PromotionRule = field(default_factory=PromotionRule)
    test_windows: int | None = None
    embargo: timedelta | None = None
    """The embargo after each held-out block (None: the plan's 4 hours, for intraday bars);
    see :func:`embargo_for`."""


def embargo_for(timeframe: Timeframe, max_holding_bars: int) -> timedelta:
    """The embargo after a held-out block for bars of ``timeframe``: 4 hours on intraday bars
    (the plan's default: sixteen 15-minute bars, the labels' horizon), and on daily bars the
    calendar days that cover ``max_holding_bars`` sessions (the labels' horizon again, weekends,
    holidays and an unscheduled closure such as September 2001's included). Example: daily bars
    with ``max_holding_bars=10`` give 23 days."""
    if not timeframe.is_daily:
        return INTRADAY_EMBARGO
    return timedelta(days=calendar_days(max_holding_bars) + 9)


@dataclass(frozen=True)
class TrainingOutcome:
    """The walk-forward result, the gate's verdict, the registry decision, and the
    out-of-sample predictions with the registered model version (and ``prob_stacked`` when
    stacked)."""

    result: WalkForwardResult
    verdict: GateVerdict
    decision: RegistryDecision
    predictions: pl.DataFrame
    stacked_metrics: dict[str, float]

    @property
    def trials(self) -> int:
        return self.result.trials


def fold_tuner(
    request: TrainingRequest,
    features: list[str],
    weight: str | None,
    progress: Callable[[str], None] | None = None,
) -> FoldTuner:
    """Nested tuning: each fold's configuration is tuned on that fold's own rows (``progress``,
    optional, is told of each trial)."""

    def tuner(data: pl.DataFrame, fold: Fold) -> tuple[ModelConfig, int]:
        base = plan_for(request.mode, request.kind, request.seed).model
        config = TuningConfig(
            study_name=request.study_name,
            n_trials=request.tune_trials,
            storage=request.study_storage,
            seed=request.seed,
        )
        tuned, study = tune_fold(
            data,
            fold,
            base=base,
            features=features,
            config=config,
            weight=weight,
            progress=progress,
        )
        return tuned, trials_taken(study)

    return tuner


def champion_rescore(
    data: pl.DataFrame,
    predictions: pl.DataFrame,
    *,
    metric: str,
    embargo: timedelta,
    min_rows: int = 200,
) -> Callable[[ChampionInfo, Callable[[Path], FoldFit]], Comparison | Unusable | str]:
    """Re-scores a champion on the challenger's out-of-sample rows that start after the last
    label the champion learnt from (plus ``embargo``): the same rows for both models, and out
    of sample for both."""

    def rescore(info: ChampionInfo, load: Callable[[Path], FoldFit]) -> Comparison | Unusable | str:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                fit = load(Path(tmp))
            except ModelError as exc:
                return Unusable(f"it cannot be loaded: {exc}")
        missing = [c for c in fit.model.features if c not in data.columns]
        if missing:
            return Unusable(f"its features are not in this feature set (e.g. {missing[:3]})")
        if info.trained_through is None:
            return Unusable("it records no trained_through date: no row is out of sample for it")
        after = info.trained_through + embargo
        rows = predictions.filter(pl.col("ts") > after)
        if rows.height < min_rows or rows["y"].n_unique() < 2:
            return (
                f"only {rows.height} of the challenger's out-of-sample rows start after "
                f"{after.isoformat()}, when the champion's training ended (need {min_rows} "
                "with both classes)"
            )
        frame = rows.select("symbol", "ts", "y", "prob").join(
            data.select("symbol", "ts", *fit.model.features), on=["symbol", "ts"], how="left"
        )
        _, champion = fit.predict(frame)
        try:
            return compare_on_rows(
                frame["y"].to_numpy(), frame["prob"].to_numpy(), champion, frame["ts"], metric
            )
        except EvaluationError as exc:
            return f"the rows both models never learnt from cannot be compared: {exc}"

    return rescore


def run_training(
    data: pl.DataFrame,
    request: TrainingRequest,
    *,
    tracking_uri: str,
    experiment: str,
    model_name: str,
    feature_set_version: str,
    tags: dict[str, str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> TrainingOutcome:
    """Train walk-forward (tuning each fold on its own rows in full mode), judge the result by
    the skill gate, log to MLflow, register and decide the champion, and optionally stack; the
    one core call of the training assets. ``data`` holds development rows only: split the
    holdout off first (:func:`pipelines.models.holdout.split_holdout`). ``progress``
    (optional) is told of each fold, each tuning trial and the decision."""
    overlap = scored_holdout_rows(tracking_uri, experiment, data)
    if overlap is not None:
        raise HoldoutError(overlap)
    features = [c for c in data.columns if c.split("_", 1)[0] in CATEGORIES]
    plan = plan_for(request.mode, request.kind, request.seed)
    if request.test_windows is not None:
        plan = replace(plan, test_windows=request.test_windows)
    if request.embargo is not None:
        plan = replace(plan, embargo=request.embargo)
    weight = "weight" if "weight" in data.columns else None
    tuner = None
    if request.mode == "full" and request.tune_trials > 0:
        tuner = fold_tuner(request, features, weight, progress)
    folds = folds_for(data, plan)
    result = run_walk_forward(
        data,
        folds,
        plan.model,
        features=features,
        weight=weight,
        calibration=plan.calibration,
        tuner=tuner,
        progress=progress,
    )
    verdict = skill_gate(result.predictions, request.gate)
    if progress is not None:
        progress(
            f"skill gate {'passed' if verdict.passed else 'refused'}; logging to MLflow and "
            "deciding the champion"
        )
    decision = log_and_register(
        result,
        config=plan.model,
        verdict=verdict,
        rule=request.rule,
        rescore=champion_rescore(
            data, result.predictions, metric=request.rule.metric, embargo=plan.embargo
        ),
        tracking_uri=tracking_uri,
        experiment=experiment,
        model_name=model_name,
        feature_set_version=feature_set_version,
        data_range=(str(data["ts"].min()), str(data["ts"].max())),
        importance_sample=data.tail(2000),
        tags={"mode": request.mode, **(tags or {})},
    )
    predictions = result.predictions.with_columns(
        model_version=pl.lit(decision.version), run_id=pl.lit(decision.run_id)
    )
    stacked_metrics: dict[str, float] = {}
    if request.stack:
        bases = {k: plan_for(request.mode, k, request.seed).model for k in ("lightgbm", "catboost")}
        stacked = stack_out_of_fold(data, folds, bases, features=features)
        predictions = predictions.join(
            stacked.predictions.select("symbol", "ts", "fold", prob_stacked=pl.col("prob")),
            on=["symbol", "ts", "fold"],
            how="left",
        )
        stacked_metrics = stacked.metrics()
    return TrainingOutcome(result, verdict, decision, predictions, stacked_metrics)
