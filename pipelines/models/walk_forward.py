"""Walk-forward training: one model per fold, out-of-sample predictions, per-fold metrics.

Each fold trains on its (purged) training rows, stops early and fits the probability calibration
on its validation rows only, and predicts its test rows, which no model of that fold has seen.
:func:`fit_fold` is that recipe, used by the final fit and by every tuning trial (capped in
rounds and uncalibrated: see :mod:`pipelines.models.tuning`). The
calibration (isotonic or Platt) is stored as JSON beside the model, never pickled; calibrated
probabilities are clipped to ``[PROB_CLIP, 1 - PROB_CLIP]``: a few hundred validation rows cannot
justify certainty, and isotonic regression on them happily returns 0 or 1.

Every test row also carries ``base_rate``: the share of positive labels among the fold's
validation rows (its training rows when it has none), the no-skill forecast known when the fold
was fitted. Promotion gates and bet sizing measure the model against it, not against 0.5.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, cast

import numpy as np
import numpy.typing as npt
import polars as pl

from pipelines.features.transform import FeatureTransform
from pipelines.models.estimators import FittedModel, ModelConfig, ModelError, train_classifier
from pipelines.models.splits import Fold

F64 = npt.NDArray[np.float64]
Calibration = Literal["isotonic", "platt", "none"]
PROB_CLIP = 0.01


class Trainer(Protocol):
    """The signature of :func:`pipelines.models.estimators.train_classifier` (tests put a
    recording one in its place to audit which rows a fit saw)."""

    def __call__(
        self,
        config: ModelConfig,
        train: pl.DataFrame,
        y: npt.NDArray[Any],
        *,
        features: list[str],
        weight: F64 | None = None,
        validation: pl.DataFrame | None = None,
        y_validation: npt.NDArray[Any] | None = None,
        weight_validation: F64 | None = None,
    ) -> FittedModel: ...


@dataclass(frozen=True)
class Calibrator:
    """A non-decreasing map from raw to calibrated probability, fitted on validation rows only:
    it may flatten the model's ranking (Platt's slope is floored at 0, isotonic steps are
    level) but never inverts it."""

    method: Calibration
    params: dict[str, Any]

    def __post_init__(self) -> None:
        if self.method == "platt" and float(self.params.get("a", 0.0)) < 0:
            raise ModelError(
                f"a Platt calibration with slope {self.params['a']} would invert the model's "
                "ranking (saved before slopes were floored at 0): retrain the model"
            )

    @classmethod
    def fit(cls, method: Calibration, raw: F64, y: npt.NDArray[Any]) -> Calibrator:
        if method == "none":
            return cls("none", {})
        if method == "platt":
            from sklearn.linear_model import LogisticRegression

            logit = np.log(np.clip(raw, 1e-9, 1 - 1e-9) / np.clip(1 - raw, 1e-9, 1)).reshape(-1, 1)
            lr = LogisticRegression(C=1e6, max_iter=1000).fit(logit, y)
            a, b = float(lr.coef_[0, 0]), float(lr.intercept_[0])
            if a < 0:
                # A negative slope would invert the model's ranking on the strength of validation
                # rows on which it has no skill; a calibration may only say "no skill": the
                # validation base rate, for every row.
                rate = float(np.clip(np.mean(y), 1e-9, 1 - 1e-9))
                a, b = 0.0, float(np.log(rate / (1 - rate)))
            return cls("platt", {"a": a, "b": b})
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(raw, y)
        return cls("isotonic", {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()})

    def apply(self, raw: F64) -> F64:
        """Calibrated probabilities of ``raw`` scores, clipped to ``[PROB_CLIP, 1 - PROB_CLIP]``
        (``method="none"`` returns ``raw`` as it is)."""
        if self.method == "none":
            return raw
        if self.method == "platt":
            logit = np.log(np.clip(raw, 1e-9, 1 - 1e-9) / np.clip(1 - raw, 1e-9, 1))
            out = 1.0 / (1.0 + np.exp(-(self.params["a"] * logit + self.params["b"])))
        else:
            out = np.interp(raw, self.params["x"], self.params["y"])
        return np.asarray(np.clip(out, PROB_CLIP, 1.0 - PROB_CLIP))


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


@dataclass(frozen=True)
class FoldFit:
    """What one fold's recipe produced: the model, its calibration and feature transform, the
    base rate known at fitting time, and the last label end among the rows it learnt from."""

    model: FittedModel
    calibrator: Calibrator
    transform: FeatureTransform | None
    base_rate: float
    trained_through: datetime

    def predict(self, frame: pl.DataFrame) -> tuple[F64, F64]:
        """Raw and calibrated probabilities for ``frame``'s rows."""
        x = self.transform.apply(frame) if self.transform is not None else frame
        raw = self.model.predict_proba(x)
        return raw, self.calibrator.apply(raw)


def fit_fold(
    data: pl.DataFrame,
    fold: Fold,
    config: ModelConfig,
    *,
    features: list[str],
    target: str = "y",
    weight: str | None = None,
    calibration: Calibration = "platt",
    winsorise: bool = True,
    trainer: Trainer = train_classifier,
) -> FoldFit:
    """The recipe of one fold on ``data``'s training and validation rows only: fit the feature
    transform on the training rows, train with the sample weights, stop early and calibrate
    on the validation rows. Raises :class:`ModelError` when a set holds a single class."""
    train = data[fold.train]
    val = data[fold.validation] if fold.validation.size else None
    y_train = train[target].to_numpy()
    y_val = None if val is None else val[target].to_numpy()
    transform = FeatureTransform.fit(train, features) if winsorise and train.height else None
    if transform is not None:
        train = transform.apply(train)
        val = None if val is None else transform.apply(val)
    model = trainer(
        config,
        train,
        y_train,
        features=features,
        weight=None if weight is None else train[weight].to_numpy(),
        validation=val,
        y_validation=y_val,
        weight_validation=None if weight is None or val is None else val[weight].to_numpy(),
    )
    two_classes = y_val is not None and np.unique(y_val).size > 1
    if val is not None and y_val is not None and calibration != "none" and two_classes:
        cal = Calibrator.fit(calibration, model.predict_proba(val), y_val)
    else:
        cal = Calibrator("none", {})
    known = y_val if y_val is not None and y_val.size else y_train
    seen = np.concatenate([fold.train, fold.validation])
    through = data["t1"][seen].max() if "t1" in data.columns else data["ts"][seen].max()
    return FoldFit(model, cal, transform, float(np.mean(known)), cast(datetime, through))


@dataclass(frozen=True)
class FoldRecord:
    """One fold as trained: its test window, what it learnt from, and how it was tuned."""

    index: int
    test_start: datetime
    test_end: datetime
    trained_through: datetime
    base_rate: float
    best_iteration: int | None
    params: dict[str, Any]
    trials: int = 0


@dataclass
class WalkForwardResult:
    """Out-of-sample predictions (``symbol``, ``ts``, ``fold``, ``y``, ``prob_raw``, ``prob``,
    ``base_rate``), the metrics of each fold, the folds skipped (and why), the fitted fold
    recipes and a record of each fold."""

    predictions: pl.DataFrame
    metrics: list[dict[str, float]]
    skipped: list[str] = field(default_factory=list)
    fits: list[FoldFit] = field(default_factory=list)
    records: list[FoldRecord] = field(default_factory=list)

    @property
    def final(self) -> FoldFit:
        """The most recent fold's recipe: the model a registry run registers."""
        if not self.fits:
            raise ModelError(f"no fold produced a model: {self.skipped}")
        return self.fits[-1]

    @property
    def trials(self) -> int:
        """Tuning trials taken over every fold."""
        return sum(r.trials for r in self.records)

    def overall(self) -> dict[str, float]:
        p = self.predictions
        return fold_metrics(
            p["y"].to_numpy(),
            p["prob"].to_numpy(),
            p["ret"].to_numpy() if "ret" in p.columns else None,
        )


FoldTuner = Callable[[pl.DataFrame, Fold], tuple[ModelConfig, int]]
"""Given the rows and a fold, the model configuration to fit that fold with and the number of
tuning trials it took; it may read the fold's training and validation rows only."""


def run_walk_forward(
    data: pl.DataFrame,
    folds: list[Fold],
    config: ModelConfig,
    *,
    features: list[str],
    target: str = "y",
    weight: str | None = None,
    calibration: Calibration = "platt",
    winsorise: bool = True,
    tuner: FoldTuner | None = None,
    progress: Callable[[str], None] | None = None,
) -> WalkForwardResult:
    """Fit :func:`fit_fold` on every fold of ``data`` (rows in the order the folds index) and
    predict each test block out of sample. With a ``tuner``, each fold's configuration comes
    from it (nested tuning: it sees that fold's own training and validation rows only). A fold
    whose training or validation rows hold a single class is skipped, with the reason
    recorded, never silently. ``progress`` (optional) is told of each fold as it ends."""
    say = progress or (lambda _: None)
    preds, metrics, skipped, fits, records = [], [], [], [], []
    for n, fold in enumerate(folds, 1):
        try:
            cfg, trials = (config, 0) if tuner is None else tuner(data, fold)
            fit = fit_fold(
                data,
                fold,
                cfg,
                features=features,
                target=target,
                weight=weight,
                calibration=calibration,
                winsorise=winsorise,
            )
        except ModelError as exc:
            skipped.append(f"fold {fold.index}: {exc}")
            say(f"fold {n}/{len(folds)} skipped: {exc}")
            continue
        test = data[fold.test]
        raw, prob = fit.predict(test)
        keep = [c for c in ("symbol", "ts", target, "ret") if c in test.columns]
        preds.append(
            test.select(keep)
            .with_columns(
                fold=pl.lit(fold.index, pl.Int32),
                prob_raw=pl.Series(raw),
                prob=pl.Series(prob),
                base_rate=pl.lit(fit.base_rate),
            )
            .rename({target: "y"} if target != "y" else {})
        )
        y_test = test[target].to_numpy()
        if np.unique(y_test).size > 1:
            metrics.append(
                {
                    "fold": float(fold.index),
                    **fold_metrics(
                        y_test, prob, test["ret"].to_numpy() if "ret" in test.columns else None
                    ),
                }
            )
        fits.append(fit)
        records.append(
            FoldRecord(
                fold.index,
                fold.test_start,
                fold.test_end,
                fit.trained_through,
                fit.base_rate,
                fit.model.best_iteration,
                dict(cfg.params),
                trials,
            )
        )
        tuned = f", {trials} tuning trials" if trials else ""
        scored = f", test AUC {metrics[-1]['auc']:.3f}" if metrics and "auc" in metrics[-1] else ""
        say(
            f"fold {n}/{len(folds)} trained on {fold.train.size} rows{tuned}; "
            f"{test.height} test rows{scored}"
        )
    if not preds:
        raise ModelError(f"every fold was skipped: {skipped}")
    return WalkForwardResult(pl.concat(preds), metrics, skipped, fits, records)
