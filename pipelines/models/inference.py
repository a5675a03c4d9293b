"""Inference for the live path: newest features -> transform -> model -> calibrated probability.

The transform and calibration are the ones fitted in training (loaded with the champion); here
they are only applied. The model's ordered feature list is checked against the frame.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import polars as pl

from pipelines.features.transform import FeatureTransform
from pipelines.models.estimators import FittedModel, ModelError
from pipelines.models.walk_forward import Calibrator


def predict_bar(
    model: FittedModel,
    frame: pl.DataFrame,
    *,
    transform: FeatureTransform | None = None,
    calibrator: Calibrator | None = None,
) -> npt.NDArray[np.float64]:
    """Calibrated probability of the positive class for each row of ``frame`` (one bar of each
    symbol, typically ``FeatureStream.update(bars).frame()`` of :mod:`pipelines.features`)."""
    x = model.matrix(frame)
    if transform is not None:
        if transform.columns != model.features:
            raise ModelError("the transform was fitted on other features than the model's")
        x = transform.apply_array(x)
    p = model.predict_matrix(x)
    return calibrator.apply(p) if calibrator is not None else p
