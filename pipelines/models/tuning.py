"""Hyper-parameter search with Optuna, scored out of sample on purged, embargoed k-fold CV.

The study lives in memory, in SQLite or in PostgreSQL (any SQLAlchemy URL): with a shared
database several workers on several machines add trials to one study. Unpromising trials are
pruned after each fold (median rule). The number of trials taken is what the Deflated Sharpe
Ratio needs later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import optuna
import polars as pl
from sqlalchemy.exc import SQLAlchemyError

from pipelines.models.estimators import Kind, ModelConfig, ModelError, train_classifier
from pipelines.models.splits import purged_kfold
from pipelines.models.walk_forward import fold_metrics
from pipelines.secrets import redact_uri

Metric = Literal["log_loss", "auc", "trade_return"]


class TuningError(RuntimeError):
    """The search cannot run; the message says why."""


@dataclass(frozen=True)
class TuningConfig:
    """``n_trials`` and ``timeout_s`` bound the search (whichever comes first); ``storage`` is
    None (in memory) or a SQLAlchemy URL; ``metric`` is minimised (log loss) or maximised
    (AUC). Example: ``TuningConfig(n_trials=50, storage="sqlite:///optuna.db")``."""

    study_name: str = "quantdag"
    n_trials: int = 20
    timeout_s: float | None = None
    storage: str | None = None
    n_splits: int = 4
    embargo: timedelta = timedelta(hours=4)
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


def prepare_study(config: TuningConfig) -> None:
    """Create the study's tables and the study itself once, before several workers join it
    (workers racing to create the schema of an empty database would collide)."""
    optuna.create_study(
        study_name=config.study_name,
        storage=_storage(config.storage),
        load_if_exists=True,
        direction=_direction(config),
    )


def tune(
    data: pl.DataFrame,
    *,
    features: list[str],
    kind: Kind,
    config: TuningConfig,
    worker: str = "main",
) -> optuna.Study:
    """Run trials (joining the study if it exists) and return the study."""
    folds = purged_kfold(data, n_splits=config.n_splits, embargo=config.embargo)
    y = data["y"].to_numpy()
    if config.metric == "trade_return" and "ret" not in data.columns:
        raise TuningError("the trade_return metric needs the labels' `ret` column")
    ret = data["ret"].to_numpy() if "ret" in data.columns else np.zeros(data.height)
    direction = _direction(config)

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", worker)
        params = _params(trial, kind)
        rounds = trial.suggest_int(
            "num_boost_round", min(50, config.max_rounds), config.max_rounds, log=True
        )
        model_cfg = ModelConfig(kind, params, seed=config.seed, num_boost_round=rounds)
        scores = []
        for step, fold in enumerate(folds):
            try:
                model = train_classifier(
                    model_cfg, data[fold.train], y[fold.train], features=features
                )
            except ModelError as exc:
                raise optuna.TrialPruned(f"fold {fold.index}: {exc}") from None
            p = model.predict_proba(data[fold.test])
            if config.metric == "trade_return":
                scores.append(trade_return(p, ret[fold.test]))
            else:
                scores.append(fold_metrics(y[fold.test], p)[config.metric])
            trial.report(float(np.mean(scores)), step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return float(np.mean(scores))

    study = optuna.create_study(
        study_name=config.study_name,
        storage=_storage(config.storage),
        load_if_exists=True,
        direction=direction,
        sampler=optuna.samplers.TPESampler(seed=config.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
    )
    study.optimize(
        objective, n_trials=config.n_trials, timeout=config.timeout_s, gc_after_trial=False
    )
    return study


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
