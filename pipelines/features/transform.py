"""Learning-only transforms: fitted on training data, persisted beside the model, applied live.

A :class:`FeatureTransform` winsorises each feature to quantile bounds and standardises it with
a mean and standard deviation, all fitted once by training (:meth:`FeatureTransform.fit`). The
live path loads it (:meth:`FeatureTransform.from_json`) and only applies it; nothing here is
refitted at inference. It is stored as JSON with a checksum (never pickled), and applying it to
a frame whose feature columns differ from the fitted list in name or order is an error, never a
silent reorder.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import polars as pl

FORMAT = "quantdag.feature_transform/1"


class TransformError(ValueError):
    """The transform cannot be applied or loaded; the message says why."""


@dataclass(frozen=True)
class FeatureTransform:
    """Per feature: winsorisation bounds and standardisation parameters, in ``columns`` order.

    Example: ``t = FeatureTransform.fit(train, cols, lower_q=0.01, upper_q=0.99)`` clips each
    feature to its 1st and 99th training percentiles, then maps it to z-scores.
    Missing values stay missing (the model decides how to treat them).
    """

    columns: tuple[str, ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    lower_q: float
    upper_q: float

    @classmethod
    def fit(
        cls,
        train: pl.DataFrame,
        columns: list[str],
        *,
        lower_q: float = 0.01,
        upper_q: float = 0.99,
    ) -> FeatureTransform:
        if not 0.0 <= lower_q < upper_q <= 1.0:
            raise TransformError("need 0 <= lower_q < upper_q <= 1")
        missing = [c for c in columns if c not in train.columns]
        if missing:
            raise TransformError(f"training frame lacks feature columns {missing}")
        stats = train.select(
            *[pl.col(c).quantile(lower_q, "linear").alias(f"lo|{c}") for c in columns],
            *[pl.col(c).quantile(upper_q, "linear").alias(f"hi|{c}") for c in columns],
        ).row(0, named=True)
        lower = tuple(_finite(stats[f"lo|{c}"]) for c in columns)
        upper = tuple(_finite(stats[f"hi|{c}"]) for c in columns)
        clipped = train.select(
            pl.col(c).clip(lo, hi) for c, lo, hi in zip(columns, lower, upper, strict=True)
        )
        moments = clipped.select(
            *[pl.col(c).mean().alias(f"m|{c}") for c in columns],
            *[pl.col(c).std().alias(f"s|{c}") for c in columns],
        ).row(0, named=True)
        mean = tuple(_finite(moments[f"m|{c}"]) for c in columns)
        std = tuple(_finite(moments[f"s|{c}"]) or 1.0 for c in columns)
        return cls(tuple(columns), lower, upper, mean, std, lower_q, upper_q)

    def apply(self, frame: pl.DataFrame) -> pl.DataFrame:
        """``frame`` with the fitted feature columns winsorised and standardised; other columns
        are kept as they are. Every fitted column must be present, in the fitted order."""
        fitted = set(self.columns)
        present = tuple(c for c in frame.columns if c in fitted)
        if present != self.columns:
            missing = [c for c in self.columns if c not in frame.columns]
            raise TransformError(
                "feature columns differ from the fitted list"
                + (f"; missing {missing}" if missing else "; same names in another order")
            )
        return frame.with_columns(
            ((pl.col(c).clip(lo, hi) - m) / s).alias(c)
            for c, lo, hi, m, s in zip(
                self.columns, self.lower, self.upper, self.mean, self.std, strict=True
            )
        )

    def apply_array(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """The same transform on a matrix whose columns are the fitted ones, in order (the
        live path's fast route; NaN stays NaN)."""
        if x.shape[1] != len(self.columns):
            raise TransformError(f"{x.shape[1]} columns given, {len(self.columns)} fitted")
        clipped = np.clip(x, np.asarray(self.lower), np.asarray(self.upper))
        out: npt.NDArray[np.float64] = (clipped - np.asarray(self.mean)) / np.asarray(self.std)
        return out

    def to_json(self) -> str:
        body = {
            "format": FORMAT,
            "columns": list(self.columns),
            "lower": list(self.lower),
            "upper": list(self.upper),
            "mean": list(self.mean),
            "std": list(self.std),
            "lower_q": self.lower_q,
            "upper_q": self.upper_q,
        }
        text = json.dumps(body, sort_keys=True)
        return json.dumps(
            {"sha256": hashlib.sha256(text.encode()).hexdigest(), "body": body}, sort_keys=True
        )

    @classmethod
    def from_json(cls, text: str) -> FeatureTransform:
        try:
            doc = json.loads(text)
            body, digest = doc["body"], doc["sha256"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise TransformError(f"not a saved feature transform: {exc}") from None
        if hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest() != digest:
            raise TransformError("the transform's checksum does not match: refusing to load it")
        if body.get("format") != FORMAT:
            raise TransformError(f"unknown transform format {body.get('format')!r}")
        return cls(
            tuple(body["columns"]),
            tuple(body["lower"]),
            tuple(body["upper"]),
            tuple(body["mean"]),
            tuple(body["std"]),
            body["lower_q"],
            body["upper_q"],
        )


def _finite(value: object) -> float:
    x = float(value) if value is not None else 0.0  # type: ignore[arg-type]
    return x if math.isfinite(x) else 0.0
