"""Hyper-parameter search with Optuna, nested inside the walk-forward.

Each walk-forward fold is tuned on its own rows only: every trial fits the fold's recipe
(:func:`pipelines.models.walk_forward.fit_fold`: the same feature transform, sample weights and
early stopping on the validation rows as the final fit) on the fold's training rows and is
scored on its validation rows. Two differences, both for speed: a trial's boosting rounds are
capped at ``TuningConfig.max_rounds`` (the final fit may run to the plan's
``num_boost_round``), which favours learning rates that converge within the cap; and a trial is
scored uncalibrated (calibration is fitted on the same validation rows, so scoring it there
would reward the calibration, not the model). No trial ever reads a test row, so the
out-of-sample figures, the champion decision and the backtest do not inherit a choice made
knowing the test windows.

Each fold's study lives in memory, in SQLite or in PostgreSQL (any SQLAlchemy URL): with a
shared database several workers on several machines add trials to one study. Its name carries
a fingerprint of the fold's rows, features and recipe, so a study never mixes trials scored on
different data.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import optuna
import polars as pl
from sqlalchemy.exc import SQLAlchemyError

from pipelines.models.estimators import Kind, ModelConfig, ModelError, train_classifier
from pipelines.models.splits import Fold
from pipelines.models.walk_forward import Trainer, fit_fold, fold_metrics
from pipelines.secrets import redact_uri

Metric = Literal["log_loss", "auc", "trade_return"]


class TuningError(RuntimeError):
    """The search cannot run; the message says why."""


@dataclass(frozen=True)
class TuningConfig:
    """``n_trials`` and ``timeout_s`` bound each fold's search (whichever comes first);
    ``storage`` is None (in memory) or a SQLAlchemy URL; ``metric`` is minimised (log loss) or
    maximised (AUC, trade return) on the fold's validation rows; ``max_rounds`` caps the
    boosting rounds of a trial (early stopping picks fewer).
    Example: ``TuningConfig(n_trials=50, storage="sqlite:///optuna.db")``."""

    study_name: str = "quantdag"
    n_trials: int = 20
    timeout_s: float | None = None
    storage: str | None = None
    metric: Metric = "log_loss"
    seed: int = 0
    max_rounds: int = 400


def _params(trial: optuna.Trial, kind: Kind) -> dict[str, Any]:
    if kind == "lightgbm":
        return {
            "num_leaves": trial.suggest_int("num_leaves", 7, 63, log=True),
            "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.2, log=True),
            "min_data_in_leaf": trial.suggest_int("min_data_in_leaf", 20, 500, log=True),
            "feature_fraction": trial.suggest_float("feature_fraction", 0.5, 1.0),
            "lambda_l2": trial.suggest_float("lambda_l2", 1e-3, 10.0, log=True),
        }
    if kind == "catboost":
        return {
            "depth": trial.suggest_int("depth", 3, 8),
            "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.2, log=True),
            "l2_leaf_reg": trial.suggest_float("l2_leaf_reg", 1.0, 20.0, log=True),
        }
    return {"C": trial.suggest_float("C", 1e-3, 10.0, log=True)}


def _storage(url: str | None) -> optuna.storages.BaseStorage | None:
    """The study storage; a database that does not answer is a clear error (no password)."""
    if url is None:
        return None
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    try:
        return optuna.storages.RDBStorage(url)
    except SQLAlchemyError as exc:
        raise TuningError(
            f"the Optuna study storage at {redact_uri(url)} does not answer "
            f"({type(exc).__name__}); start it or choose another storage"
        ) from None


def trade_return(p: npt.NDArray[np.float64], ret: npt.NDArray[np.float64]) -> float:
    """Mean return per bar of taking each labelled trade where ``p >= 0.5`` (flat elsewhere)."""
    return float(np.where(p >= 0.5, ret, 0.0).mean())


def _direction(config: TuningConfig) -> Literal["minimize", "maximize"]:
    return "minimize" if config.metric == "log_loss" else "maximize"


def prepare_study(config: TuningConfig, name: str | None = None) -> None:
    """Create the study's tables and the study ``name`` (default ``config.study_name``) once,
    before several workers join it (workers racing to create the schema of an empty database
    would collide)."""
    optuna.create_study(
        study_name=name or config.study_name,
        storage=_storage(config.storage),
        load_if_exists=True,
        direction=_direction(config),
    )


def fold_fingerprint(
    data: pl.DataFrame,
    fold: Fold,
    features: list[str],
    *,
    base: ModelConfig,
    config: TuningConfig,
    weight: str | None = None,
) -> str:
    """A short digest of what a fold's trials are scored on: the rows they read (symbols, times,
    labels, weights and every feature's values), the feature list, the base configuration and
    the metric. A study is resumed only when all of these are unchanged."""
    rows = np.concatenate([fold.train, fold.validation])
    digest = hashlib.sha256()
    recipe = (features, weight, repr(base), config.metric, config.max_rounds, len(fold.train))
    digest.update(repr(recipe).encode())
    columns = [c for c in ("symbol", "ts", "y", weight) if c is not None and c in data.columns]
    digest.update(data[rows].select(*columns, *features).hash_rows(seed=0).to_numpy().tobytes())
    return digest.hexdigest()[:10]


def tune_fold(
    data: pl.DataFrame,
    fold: Fold,
    *,
    base: ModelConfig,
    features: list[str],
    config: TuningConfig,
    weight: str | None = None,
    worker: str = "main",
    trainer: Trainer = train_classifier,
    progress: Callable[[str], None] | None = None,
) -> tuple[ModelConfig, optuna.Study]:
    """Tune ``base`` on ``fold``: each trial fits the fold's recipe on its training rows with
    early stopping on its validation rows and is scored there. Returns ``base`` with the best
    trial's parameters, and the study (``study_name-f{fold}-{fingerprint}``)."""
    if not fold.validation.size:
        raise TuningError(
            f"fold {fold.index} has no validation rows to score trials on (its validation "
            "window is shorter than the labels' span, so purging emptied it): give the "
            "walk-forward more data or fewer test windows (mode quick), or set tune_trials 0"
        )
    val = data[fold.validation]
    y_val = val["y"].to_numpy()
    if config.metric == "trade_return" and "ret" not in data.columns:
        raise TuningError("the trade_return metric needs the labels' `ret` column")
    ret = val["ret"].to_numpy() if "ret" in val.columns else np.zeros(val.height)
    rounds = min(base.num_boost_round, config.max_rounds)

    refusals: list[ModelError] = []

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", worker)
        params = {**base.params, **_params(trial, base.kind)}
        cfg = replace(base, params=params, num_boost_round=rounds)
        try:
            fit = fit_fold(
                data,
                fold,
                cfg,
                features=features,
                weight=weight,
                calibration="none",
                trainer=trainer,
            )
        except ModelError as exc:
            refusals.append(exc)
            raise optuna.TrialPruned(f"fold {fold.index}: {exc}") from None
        p = fit.model.predict_proba(fit.transform.apply(val) if fit.transform else val)
        if config.metric == "trade_return":
            return trade_return(p, ret)
        return fold_metrics(y_val, p)[config.metric]

    study = optuna.create_study(
        study_name=f"{config.study_name}-f{fold.index}-"
        + fold_fingerprint(data, fold, features, base=base, config=config, weight=weight),
        storage=_storage(config.storage),
        load_if_exists=True,
        direction=_direction(config),
        sampler=optuna.samplers.TPESampler(seed=config.seed + fold.index),
    )

    def told(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if progress is not None:
            value = "pruned" if trial.value is None else f"{config.metric} {trial.value:.4f}"
            progress(f"fold {fold.index}: tuning trial {trial.number + 1} ({value})")

    study.optimize(
        objective,
        n_trials=config.n_trials,
        timeout=config.timeout_s,
        gc_after_trial=False,
        callbacks=[told],
    )
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        if refusals:  # the fold's rows cannot be fitted (e.g. one class): as fit_fold says
            raise refusals[0]
        raise TuningError(f"fold {fold.index}: no tuning trial completed")
    return replace(base, params={**base.params, **best_params(study)}), study


def trials_taken(study: optuna.Study) -> int:
    """Completed and pruned trials: every configuration looked at counts as a trial."""
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return sum(1 for t in study.trials if t.state in states)


def best_params(study: optuna.Study) -> dict[str, Any]:
    """The best trial's model parameters. The number of boosting rounds is left out: walk-forward
    training picks it by early stopping on each fold's validation window."""
    best = study.best_trial.params
    return {
        k: v
        for k, v in best.items()
        if k != "num_boost_round" and not (isinstance(v, float) and math.isnan(v))
    }
