"""Honest statistics of a return series: Sharpe, its probabilistic and deflated versions.

References: Bailey and López de Prado, "The Sharpe Ratio Efficient Frontier" (2012) for the
Probabilistic Sharpe Ratio, and "The Deflated Sharpe Ratio" (2014) for the expected maximum
Sharpe ratio of N trials and the Deflated Sharpe Ratio. Sharpe ratios here are per period
(per day for daily returns) unless a function says otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

# scipy.stats is imported where it is used: it is a second of every process's start-up (the
# code server, each run worker) that most never need.

EULER_GAMMA = 0.5772156649015329


def sharpe_ratio(returns: npt.NDArray[np.float64]) -> float:
    """Mean over standard deviation (ddof=1) of per-period returns; raises on a flat series."""
    sd = float(np.std(returns, ddof=1))
    if not sd > 0:
        raise ValueError("the Sharpe ratio of a constant return series is undefined")
    return float(np.mean(returns)) / sd


def probabilistic_sharpe_ratio(
    sr: float, n: int, *, skewness: float, kurt: float, benchmark: float = 0.0
) -> float:
    """P(true Sharpe > ``benchmark``) given an observed per-period Sharpe ``sr`` over ``n``
    returns with the given skewness and (non-excess) kurtosis.

    Example: ``probabilistic_sharpe_ratio(0.1, 250, skewness=0, kurt=3)`` is about 0.94.
    """
    if n < 2:
        raise ValueError("the PSR needs at least two returns")
    denom = 1.0 - skewness * sr + (kurt - 1.0) / 4.0 * sr * sr
    if not denom > 0:
        raise ValueError(
            f"skewness {skewness} and kurtosis {kurt} give no valid variance at SR {sr}"
        )
    from scipy.stats import norm

    return float(norm.cdf((sr - benchmark) * math.sqrt(n - 1) / math.sqrt(denom)))


def expected_max_sharpe(n_trials: int, sr_variance: float) -> float:
    """The Sharpe ratio the best of ``n_trials`` independent skill-less trials is expected to
    reach, given the variance of the trials' Sharpe ratios (same period as the result)."""
    if n_trials < 2:
        return 0.0
    from scipy.stats import norm

    a = norm.ppf(1.0 - 1.0 / n_trials)
    b = norm.ppf(1.0 - 1.0 / (n_trials * math.e))
    return float(math.sqrt(sr_variance) * ((1.0 - EULER_GAMMA) * a + EULER_GAMMA * b))


@dataclass(frozen=True)
class DeflatedSharpe:
    """The deflated Sharpe ratio and what went into it (per-period figures)."""

    sharpe: float
    sr0: float
    dsr: float
    n_trials: int


def deflated_sharpe_ratio(
    sr: float, n: int, *, skewness: float, kurt: float, n_trials: int, sr_variance: float
) -> DeflatedSharpe:
    """The PSR against the expected maximum Sharpe of ``n_trials`` trials: the probability that
    the selected strategy's true Sharpe is positive after accounting for the selection."""
    sr0 = expected_max_sharpe(n_trials, sr_variance)
    dsr = probabilistic_sharpe_ratio(sr, n, skewness=skewness, kurt=kurt, benchmark=sr0)
    return DeflatedSharpe(sr, sr0, dsr, n_trials)


def deflated_sharpe_of_returns(
    returns: npt.NDArray[np.float64], *, n_trials: int, sr_variance: float
) -> DeflatedSharpe:
    """:func:`deflated_sharpe_ratio` of a per-period return series (sample skewness and
    non-excess kurtosis)."""
    from scipy.stats import kurtosis, skew

    return deflated_sharpe_ratio(
        sharpe_ratio(returns),
        len(returns),
        skewness=float(skew(returns)),
        kurt=float(kurtosis(returns, fisher=False)),
        n_trials=n_trials,
        sr_variance=sr_variance,
    )
