"""Classifiers behind one small interface, saved in their native formats.

LightGBM (text model), CatBoost (``.cbm``) and a logistic-regression baseline (coefficients as
JSON) predict the probability of the positive class. Every model remembers its feature list in
order: predicting on a frame whose feature columns differ in name or order is an error, never a
silent reorder. A saved model is a directory with the native file and a manifest holding its
SHA-256; loading refuses a file whose checksum does not match. Nothing is pickled.

Missing values: LightGBM and CatBoost route them natively; the logistic baseline standardises
each feature with the training mean and standard deviation and then treats a missing value as
the training mean (0 after standardisation).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import polars as pl

Kind = Literal["lightgbm", "catboost", "logistic"]
F64 = npt.NDArray[np.float64]
MANIFEST = "manifest.json"
NATIVE_FILE = {"lightgbm": "model.txt", "catboost": "model.cbm", "logistic": "model.json"}


class ModelError(ValueError):
    """Training or prediction cannot proceed; the message says why."""


@dataclass(frozen=True)
class ModelConfig:
    """What to train. ``params`` go to the library as they are; ``seed`` fixes every random
    choice; ``early_stopping_rounds`` applies to the validation set only, when one is given.

    Example: ``ModelConfig("lightgbm", {"num_leaves": 15, "learning_rate": 0.05}, seed=7)``.
    """

    kind: Kind
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    num_boost_round: int = 500
    early_stopping_rounds: int = 50


def _matrix(frame: pl.DataFrame, features: tuple[str, ...]) -> F64:
    wanted = set(features)
    present = tuple(c for c in frame.columns if c in wanted)
    if present != features:
        missing = [c for c in features if c not in frame.columns]
        raise ModelError(
            "feature columns differ from the model's list"
            + (f": missing {missing[:5]}" if missing else ": same names in another order")
        )
    # Indexing by a list of names is several times faster than ``select`` for a few rows of
    # 150+ columns, which is the live path's shape; so is testing the dtypes' class first.
    sub = frame[list(features)]
    dtypes = sub.dtypes
    if not all(type(d) is pl.Float64 for d in dtypes):
        # Casting would turn a string, boolean or date column into numbers the model never
        # meant; only integer and float columns are features.
        wrong = [f"{c} ({d})" for c, d in zip(features, dtypes, strict=True) if not d.is_numeric()]
        if wrong:
            raise ModelError(
                f"feature columns must be integer or float; {wrong[:5]} are not: cast them in "
                "the feature build or leave them out of the feature list"
            )
    return np.asarray(sub.to_numpy(), dtype=np.float64)


def _check_target(y: npt.NDArray[Any], where: str) -> None:
    classes = np.unique(y)
    if classes.size < 2:
        raise ModelError(
            f"{where} holds only class {classes.tolist()}: a classifier needs both; "
            "widen the window or skip this fold"
        )


@dataclass
class FittedModel:
    """A trained classifier with its ordered feature list."""

    kind: Kind
    features: tuple[str, ...]
    model: Any
    best_iteration: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def predict_proba(self, frame: pl.DataFrame) -> F64:
        """Probability of the positive class for each row of ``frame``."""
        return self.predict_matrix(_matrix(frame, self.features))

    def matrix(self, frame: pl.DataFrame) -> F64:
        """``frame``'s feature columns as a matrix in the model's order (checked)."""
        return _matrix(frame, self.features)

    def predict_matrix(self, x: F64) -> F64:
        """Probability of the positive class for a matrix already in the model's column order."""
        if self.kind == "lightgbm":
            # A few rows (the live path) are faster on one thread than waking a pool.
            threads = 1 if x.shape[0] < 1000 else 0
            return np.asarray(
                self.model.predict(x, num_iteration=self.best_iteration, num_threads=threads)
            )
        if self.kind == "catboost":
            return np.asarray(self.model.predict_proba(x)[:, 1])
        return _logistic_predict(self.model, x)

    def save(self, directory: Path) -> str:
        """Write the native model file and the manifest; return the file's SHA-256."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / NATIVE_FILE[self.kind]
        if self.kind == "lightgbm":
            self.model.save_model(str(path), num_iteration=self.best_iteration)
        elif self.kind == "catboost":
            self.model.save_model(str(path), format="cbm")
        else:
            path.write_text(json.dumps(self.model, sort_keys=True))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        manifest = {
            "kind": self.kind,
            "features": list(self.features),
            "sha256": digest,
            "file": path.name,
            "best_iteration": self.best_iteration,
            "info": self.info,
        }
        (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        return digest

    @classmethod
    def load(cls, directory: Path) -> FittedModel:
        """Load a saved model, refusing one whose file does not match its checksum."""
        manifest = json.loads((directory / MANIFEST).read_text())
        path = directory / manifest["file"]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != manifest["sha256"]:
            raise ModelError(
                f"{path}: checksum {digest[:12]} does not match the manifest's "
                f"{manifest['sha256'][:12]}; refusing to load it"
            )
        kind: Kind = manifest["kind"]
        model: Any
        if kind == "lightgbm":
            import lightgbm as lgb

            model = lgb.Booster(model_file=str(path))
        elif kind == "catboost":
            from catboost import CatBoostClassifier

            model = CatBoostClassifier()
            model.load_model(str(path), format="cbm")
        else:
            model = json.loads(path.read_text())
        return cls(
            kind, tuple(manifest["features"]), model, manifest["best_iteration"], manifest["info"]
        )


def train_classifier(
    config: ModelConfig,
    train: pl.DataFrame,
    y: npt.NDArray[Any],
    *,
    features: list[str],
    weight: F64 | None = None,
    validation: pl.DataFrame | None = None,
    y_validation: npt.NDArray[Any] | None = None,
    weight_validation: F64 | None = None,
) -> FittedModel:
    """Fit ``config.kind`` on ``train[features]`` with binary target ``y`` (0/1) and optional
    sample weights; early stopping watches ``validation`` only."""
    cols = tuple(features)
    if len(set(cols)) != len(cols):
        twice = sorted({c for c in cols if cols.count(c) > 1})
        raise ModelError(f"the feature list names {twice[:5]} more than once; list each once")
    x = _matrix(train, cols)
    y = np.asarray(y).astype(np.int64)
    _check_target(y, "the training set")
    has_val = validation is not None and y_validation is not None
    if has_val:
        assert validation is not None and y_validation is not None
        xv = _matrix(validation, cols)
        yv = np.asarray(y_validation).astype(np.int64)
        _check_target(yv, "the validation set")
    if config.kind == "lightgbm":
        import lightgbm as lgb

        params = {
            "objective": "binary",
            "verbosity": -1,
            "seed": config.seed,
            "deterministic": True,
            "force_row_wise": True,
            "num_threads": 2,
            **config.params,
        }
        dtrain = lgb.Dataset(x, y, weight=weight, feature_name=list(cols), free_raw_data=False)
        callbacks: list[Callable[..., Any]] = []
        valid_sets = []
        if has_val:
            valid_sets = [lgb.Dataset(xv, yv, weight=weight_validation, reference=dtrain)]
            callbacks = [lgb.early_stopping(config.early_stopping_rounds, verbose=False)]
        booster = lgb.train(
            params,
            dtrain,
            num_boost_round=config.num_boost_round,
            valid_sets=valid_sets,
            callbacks=callbacks,
        )
        best = booster.best_iteration if has_val and booster.best_iteration > 0 else None
        return FittedModel("lightgbm", cols, booster, best)
    if config.kind == "catboost":
        from catboost import CatBoostClassifier, Pool

        model = CatBoostClassifier(
            iterations=config.num_boost_round,
            random_seed=config.seed,
            verbose=False,
            thread_count=2,
            allow_writing_files=False,
            **config.params,
        )
        eval_set = Pool(xv, yv, weight=weight_validation) if has_val else None
        model.fit(
            Pool(x, y, weight=weight),
            eval_set=eval_set,
            early_stopping_rounds=config.early_stopping_rounds if has_val else None,
            use_best_model=has_val,
        )
        best = int(model.get_best_iteration()) if has_val else None
        return FittedModel("catboost", cols, model, best)
    return FittedModel("logistic", cols, _logistic_fit(x, y, weight, config))


def _logistic_fit(
    x: F64, y: npt.NDArray[np.int64], weight: F64 | None, config: ModelConfig
) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    seen = np.isfinite(x)
    count = seen.sum(axis=0)
    filled = np.where(seen, x, 0.0)
    mean = np.divide(filled.sum(axis=0), count, out=np.zeros(x.shape[1]), where=count > 0)
    sq = np.where(seen, (x - mean) ** 2, 0.0).sum(axis=0)
    std = np.sqrt(np.divide(sq, count, out=np.zeros(x.shape[1]), where=count > 0))
    std = np.where(std > 0, std, 1.0)  # a constant or empty feature contributes nothing
    z = np.nan_to_num((x - mean) / std, nan=0.0)
    params = {"C": 1.0, "max_iter": 1000, **config.params}
    clf = LogisticRegression(random_state=config.seed, **params).fit(z, y, sample_weight=weight)
    return {
        "mean": mean.tolist(),
        "std": std.tolist(),
        "coef": clf.coef_[0].tolist(),
        "intercept": float(clf.intercept_[0]),
    }


def _logistic_predict(model: dict[str, Any], x: F64) -> F64:
    z = np.nan_to_num((x - np.array(model["mean"])) / np.array(model["std"]), nan=0.0)
    logit = z @ np.array(model["coef"]) + model["intercept"]
    return np.asarray(1.0 / (1.0 + np.exp(-logit)))
