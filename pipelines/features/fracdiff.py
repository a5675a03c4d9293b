"""Fixed-width fractionally differentiated log prices (López de Prado, AFML ch. 5).

``d`` between 0 (the price itself, non-stationary) and 1 (returns, memoryless) trades memory for
stationarity. :func:`min_stationary_d` picks, on training data, the smallest ``d`` whose series
passes the augmented Dickey-Fuller test; like any fitted parameter it is saved with the model,
not recomputed live. The transform is a fixed weighted window, so it reads only the last
``width`` bars and the live value equals the batch value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import polars as pl
from statsmodels.tsa.stattools import adfuller

from pipelines.features.library import S


def ffd_weights(
    d: float, threshold: float = 1e-4, max_width: int = 2000
) -> npt.NDArray[np.float64]:
    """Weights w_0 = 1, w_k = -w_{k-1} (d - k + 1) / k, kept while |w_k| >= ``threshold``
    (and at most ``max_width``); w[0] applies to the newest price."""
    w = [1.0]
    for k in range(1, max_width):
        nxt = -w[-1] * (d - k + 1) / k
        if abs(nxt) < threshold:
            break
        w.append(nxt)
    return np.array(w)


def frac_diff(d: float, threshold: float = 1e-4, column: str = "close") -> pl.Expr:
    """The fixed-width fractionally differentiated log of ``column``, per symbol; null until a
    symbol has ``len(ffd_weights(d, threshold))`` bars."""
    w = ffd_weights(d, threshold)
    oldest_first = [float(x) for x in w[::-1]]
    return pl.col(column).log().rolling_sum(len(w), weights=oldest_first).over(S)


@dataclass(frozen=True)
class FracDiffChoice:
    """The chosen ``d`` and, per tried ``d``, the ADF p-value (median over symbols)."""

    d: float
    p_values: dict[float, float]
    width: int


def min_stationary_d(
    bars: pl.DataFrame,
    *,
    grid: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
    p_value: float = 0.05,
    threshold: float = 1e-4,
) -> FracDiffChoice:
    """The smallest ``d`` in ``grid`` whose fractionally differentiated log close passes the
    ADF test (median p-value over symbols below ``p_value``), fitted on ``bars`` (training)."""
    p_values: dict[float, float] = {}
    for d in grid:
        series = bars.sort(S, "ts").select(S, frac_diff(d, threshold).alias("x")).drop_nulls()
        ps = [
            float(
                adfuller(
                    g["x"].to_numpy(), maxlag=1, regression="c", autolag=None, result_object=True
                ).pvalue
            )
            for _, g in series.group_by(S)
            if g.height > 30
        ]
        if not ps:
            raise ValueError(
                f"d={d}: no symbol has more than {len(ffd_weights(d, threshold)) + 30} bars; "
                "lower the threshold or give more history"
            )
        p_values[d] = float(np.median(ps))
        if p_values[d] < p_value:
            return FracDiffChoice(d, p_values, len(ffd_weights(d, threshold)))
    raise ValueError(f"no d in {list(grid)} passes the ADF test at p < {p_value}: {p_values}")
