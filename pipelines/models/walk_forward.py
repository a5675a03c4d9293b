"""Walk-forward training: one model per fold, out-of-sample predictions, per-fold metrics.

Each fold trains on its (purged) training rows, stops early and fits the probability calibration
on its validation rows only, and predicts its test rows, which no model of that fold has seen.
The calibration (isotonic or Platt) is stored as JSON beside the model, never pickled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import polars as pl

from pipelines.features.transform import FeatureTransform
from pipelines.models.estimators import FittedModel, ModelConfig, ModelError, train_classifier
from pipelines.models.splits import Fold

F64 = npt.NDArray[np.float64]
Calibration = Literal["isotonic", "platt", "none"]


@dataclass(frozen=True)
class Calibrator:
    """A monotone map from raw to calibrated probability, fitted on validation rows only."""

    method: Calibration
    params: dict[str, Any]

    @classmethod
    def fit(cls, method: Calibration, raw: F64, y: npt.NDArray[Any]) -> Calibrator:
        if method == "none":
            return cls("none", {})
        if method == "platt":
            from sklearn.linear_model import LogisticRegression

            logit = np.log(np.clip(raw, 1e-9, 1 - 1e-9) / np.clip(1 - raw, 1e-9, 1)).reshape(-1, 1)
            lr = LogisticRegression(C=1e6, max_iter=1000).fit(logit, y)
            return cls("platt", {"a": float(lr.coef_[0, 0]), "b": float(lr.intercept_[0])})
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(raw, y)
        return cls("isotonic", {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()})

    def apply(self, raw: F64) -> F64:
        if self.method == "none":
            return raw
        if self.method == "platt":
            logit = np.log(np.clip(raw, 1e-9, 1 - 1e-9) / np.clip(1 - raw, 1e-9, 1))
            return np.asarray(1.0 / (1.0 + np.exp(-(self.params["a"] * logit + self.params["b"]))))
        return np.asarray(np.interp(raw, self.params["x"], self.params["y"]))


def fold_metrics(y: npt.NDArray[Any], p: F64, ret: F64 | None = None) -> dict[str, float]:
    """AUC, log loss, accuracy, precision and recall at 0.5, and the information coefficient
    (Spearman correlation of probability and realised return) when returns are given."""
    from scipy.stats import spearmanr
    from sklearn.metrics import (
        accuracy_score,
        log_loss,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    pred = (p >= 0.5).astype(int)
    out = {
        "auc": float(roc_auc_score(y, p)),
        "log_loss": float(log_loss(y, np.clip(p, 1e-9, 1 - 1e-9), labels=[0, 1])),
        "accuracy": float(accuracy_score(y, pred)),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "n": float(len(y)),
        "positive_share": float(np.mean(y)),
    }
    if ret is not None:
        # Undefined (NaN, not a made-up number) when either side is constant.
        flat = np.ptp(p) == 0 or np.ptp(ret) == 0
        out["ic"] = float("nan") if flat else float(spearmanr(p, ret).statistic)
    return out


@dataclass
class WalkForwardResult:
    """Out-of-sample predictions (``symbol``, ``ts``, ``fold``, ``prob_raw``, ``prob``), the
    metrics of each fold, the folds skipped (and why), and the fitted models and calibrators."""

    predictions: pl.DataFrame
    metrics: list[dict[str, float]]
    skipped: list[str] = field(default_factory=list)
    models: list[FittedModel] = field(default_factory=list)
    calibrators: list[Calibrator] = field(default_factory=list)
    transforms: list[FeatureTransform | None] = field(default_factory=list)

    def overall(self) -> dict[str, float]:
        p = self.predictions
        return fold_metrics(
            p["y"].to_numpy(),
            p["prob"].to_numpy(),
            p["ret"].to_numpy() if "ret" in p.columns else None,
        )


def run_walk_forward(
    data: pl.DataFrame,
    folds: list[Fold],
    config: ModelConfig,
    *,
    features: list[str],
    target: str = "y",
    weight: str | None = None,
    calibration: Calibration = "isotonic",
    winsorise: bool = True,
) -> WalkForwardResult:
    """Train ``config`` on every fold of ``data`` (rows in the order the folds index) and
    predict each test block out of sample. With ``winsorise``, a :class:`FeatureTransform` is
    fitted on each fold's training rows only and applied to its validation and test rows. A
    fold whose training or validation rows hold a single class is skipped, with the reason
    recorded, never silently."""
    y = data[target].to_numpy()
    w = data[weight].to_numpy() if weight else None
    preds, metrics, skipped, models, calibrators = [], [], [], [], []
    transforms: list[FeatureTransform | None] = []
    for fold in folds:
        train, test = data[fold.train], data[fold.test]
        val = data[fold.validation] if fold.validation.size else None
        transform = FeatureTransform.fit(train, features) if winsorise and train.height else None
        if transform is not None:
            train, test = transform.apply(train), transform.apply(test)
            val = None if val is None else transform.apply(val)
        try:
            model = train_classifier(
                config,
                train,
                y[fold.train],
                features=features,
                weight=None if w is None else w[fold.train],
                validation=val,
                y_validation=None if val is None else y[fold.validation],
                weight_validation=None if w is None or val is None else w[fold.validation],
            )
        except ModelError as exc:
            skipped.append(f"fold {fold.index}: {exc}")
            continue
        raw = model.predict_proba(test)
        if val is not None and calibration != "none" and np.unique(y[fold.validation]).size > 1:
            cal = Calibrator.fit(calibration, model.predict_proba(val), y[fold.validation])
        else:
            cal = Calibrator("none", {})
        prob = cal.apply(raw)
        keep = [c for c in ("symbol", "ts", target, "ret") if c in test.columns]
        preds.append(
            test.select(keep)
            .with_columns(
                fold=pl.lit(fold.index, pl.Int32),
                prob_raw=pl.Series(raw),
                prob=pl.Series(prob),
            )
            .rename({target: "y"} if target != "y" else {})
        )
        if np.unique(y[fold.test]).size > 1:
            metrics.append(
                {
                    "fold": float(fold.index),
                    **fold_metrics(
                        y[fold.test],
                        prob,
                        test["ret"].to_numpy() if "ret" in test.columns else None,
                    ),
                }
            )
        models.append(model)
        calibrators.append(cal)
        transforms.append(transform)
    if not preds:
        raise ModelError(f"every fold was skipped: {skipped}")
    return WalkForwardResult(pl.concat(preds), metrics, skipped, models, calibrators, transforms)
