"""A stacking ensemble trained on out-of-fold predictions only.

The base models (LightGBM and CatBoost) are trained walk-forward; their out-of-sample
probabilities for test window k are stacked by a logistic regression on the logits, fitted on
the out-of-sample predictions of the windows before k only. So neither the base models nor the
stacker ever saw the rows they score; the first window has no stacked prediction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from pipelines.models.estimators import ModelConfig, ModelError
from pipelines.models.splits import Fold
from pipelines.models.walk_forward import WalkForwardResult, fold_metrics, run_walk_forward


def _logit(p: pl.Expr) -> pl.Expr:
    q = p.clip(1e-6, 1 - 1e-6)
    return (q / (1.0 - q)).log()


@dataclass(frozen=True)
class StackResult:
    """``predictions``: ``symbol``, ``ts``, ``fold``, ``y``, one column per base model and
    ``prob`` (stacked); ``weights``: the stacker's coefficients per fold."""

    predictions: pl.DataFrame
    weights: dict[int, list[float]]
    bases: dict[str, WalkForwardResult]

    def metrics(self) -> dict[str, float]:
        p = self.predictions
        return fold_metrics(p["y"].to_numpy(), p["prob"].to_numpy())


def stack_out_of_fold(
    data: pl.DataFrame,
    folds: list[Fold],
    bases: dict[str, ModelConfig],
    *,
    features: list[str],
) -> StackResult:
    """Walk-forward base models, then the stacker per window on earlier windows' predictions."""
    from sklearn.linear_model import LogisticRegression

    results = {
        name: run_walk_forward(data, folds, cfg, features=features) for name, cfg in bases.items()
    }
    merged: pl.DataFrame | None = None
    for name, res in results.items():
        part = res.predictions.select("symbol", "ts", "fold", "y", pl.col("prob").alias(name))
        merged = (
            part if merged is None else merged.join(part.drop("y"), on=["symbol", "ts", "fold"])
        )
    if merged is None:
        raise ModelError("no base model given")
    names = list(bases)
    merged = merged.with_columns(_logit(pl.col(n)).alias(f"_z_{n}") for n in names)
    out, weights = [], {}
    windows = sorted(merged["fold"].unique().to_list())
    for k in windows[1:]:
        past = merged.filter(pl.col("fold") < k)
        now = merged.filter(pl.col("fold") == k)
        if past["y"].n_unique() < 2:
            continue
        z_cols = [f"_z_{n}" for n in names]
        lr = LogisticRegression(C=1.0, max_iter=1000).fit(
            past.select(z_cols).to_numpy(), past["y"].to_numpy()
        )
        prob = lr.predict_proba(now.select(z_cols).to_numpy())[:, 1]
        weights[k] = [*lr.coef_[0].tolist(), float(lr.intercept_[0])]
        out.append(now.drop(z_cols).with_columns(prob=pl.Series(prob)))
    if not out:
        raise ModelError("too few windows to stack: need two with both classes")
    predictions = pl.concat(out)
    assert np.isfinite(predictions["prob"].to_numpy()).all()
    return StackResult(predictions, weights, results)
