"""skfolio's estimators for the risk-based portfolio methods, configured from a
:class:`PortfolioConfig` (a module of its own: skfolio and scikit-learn take seconds to import,
and the default ``bet_size`` method needs neither).

Two settings of the hierarchical methods are chosen for speed (HRP of 500 symbols must take
well under 200 ms, and stock skfolio 1.12 takes ~1 s there; ``bench/portfolio.py`` measures
both):

* HRP's seriation is the dendrogram's own leaf order (``optimal_ordering=False``): the
  quasi-diagonalisation of López de Prado's paper; scipy's optimal leaf ordering was a third
  of the time at 500 symbols (it reorders the leaves HRP bisects, so the weights differ from
  skfolio's default: by 0.09 in sum of |Δw| on 500 synthetic assets). The linkage is
  skfolio's default, Ward; the number of flat clusters, which HRP does not use, is fixed
  rather than searched for.
* With the variance risk measure, a cluster's risk ``w'Σw`` is computed on the cluster's own
  rows and columns of Σ (:class:`_CovarianceRisk`) instead of through a full skfolio
  ``Portfolio`` object per cluster (~0.4 ms each, ~3n of them): the same number, which
  ``tests/portfolio`` checks against stock skfolio.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from skfolio.cluster import HierarchicalClustering
from skfolio.measures import RiskMeasure
from skfolio.moments import EmpiricalCovariance, LedoitWolf
from skfolio.optimization import (
    EqualWeighted,
    HierarchicalEqualRiskContribution,
    HierarchicalRiskParity,
    InverseVolatility,
    MeanRisk,
    ObjectiveFunction,
    RiskBudgeting,
)
from skfolio.prior import EmpiricalPrior
from skfolio.seriation import HierarchicalSeriation

from pipelines.portfolio.config import PortfolioConfig

F64 = npt.NDArray[np.float64]


class _CovarianceRisk:
    """For the variance (and standard deviation) risk measure, a cluster's risk from the
    covariance restricted to the cluster's assets: exactly skfolio's ``w @ Σ @ w``, without
    building a ``Portfolio`` per cluster. Other risk measures go to skfolio unchanged."""

    risk_measure: RiskMeasure

    def _risk(self, weights: F64, return_distribution: Any) -> float:
        if self.risk_measure not in (RiskMeasure.VARIANCE, RiskMeasure.STANDARD_DEVIATION):
            return float(super()._risk(weights, return_distribution))  # type: ignore[misc]
        support = np.flatnonzero(weights)
        w = weights[support]
        cov = return_distribution.covariance[np.ix_(support, support)]
        variance = float(w @ cov @ w)
        return variance if self.risk_measure == RiskMeasure.VARIANCE else float(np.sqrt(variance))


class _HRP(_CovarianceRisk, HierarchicalRiskParity):  # type: ignore[misc]
    pass


class _HERC(_CovarianceRisk, HierarchicalEqualRiskContribution):  # type: ignore[misc]
    pass


def _prior(config: PortfolioConfig) -> Any:
    estimator = LedoitWolf() if config.covariance == "ledoit_wolf" else EmpiricalCovariance()
    return EmpiricalPrior(covariance_estimator=estimator)


def build_estimator(config: PortfolioConfig) -> Any:
    """The unfitted skfolio estimator of ``config.method`` (a risk-based one), falling back to
    equal weight (recorded in its ``fallback_chain_``) when its optimisation fails."""
    fallback = EqualWeighted()
    match config.method:
        case "inverse_volatility":
            return InverseVolatility(
                prior_estimator=EmpiricalPrior(covariance_estimator=EmpiricalCovariance()),
                fallback=fallback,
            )
        case "equal_risk_contribution":
            return RiskBudgeting(
                risk_measure=RiskMeasure.VARIANCE,
                prior_estimator=_prior(config),
                fallback=fallback,
            )
        case "hrp":
            return _HRP(
                risk_measure=RiskMeasure.VARIANCE,
                prior_estimator=_prior(config),
                seriation_estimator=HierarchicalSeriation(
                    optimal_ordering=False,
                    # HRP bisects the leaf order and never reads the flat clusters; left
                    # unset, skfolio picks their number by a gap statistic (~35 ms at 500).
                    hierarchical_clustering_estimator=HierarchicalClustering(max_clusters=2),
                ),
                fallback=fallback,
            )
        case "herc":
            return _HERC(
                risk_measure=RiskMeasure.VARIANCE,
                prior_estimator=_prior(config),
                fallback=fallback,
            )
        case "mean_variance":
            return MeanRisk(
                objective_function=ObjectiveFunction.MAXIMIZE_UTILITY,
                risk_measure=RiskMeasure.VARIANCE,
                risk_aversion=config.risk_aversion,
                prior_estimator=_prior(config),
                min_weights=0.0,
                max_weights=1.0,
                budget=1.0,
                fallback=fallback,
            )
    raise AssertionError(f"no estimator for method {config.method!r}")
