"""Portfolio construction: how the open bets share the gross, by skfolio's estimators
(:mod:`pipelines.portfolio.estimators`); the rebalance band that keeps small resizes from
trading.

The risk-based methods are skfolio's (BSD, scikit-learn API): ``InverseVolatility``,
``RiskBudgeting`` (equal risk contribution), ``HierarchicalRiskParity``,
``HierarchicalEqualRiskContribution`` and ``MeanRisk`` (maximum utility), each fitted on the
window's past returns with an ``EmpiricalPrior`` whose covariance is ``LedoitWolf`` or
``EmpiricalCovariance`` as configured. Nothing here reads a clock.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from pipelines.portfolio.config import PortfolioConfig

F64 = npt.NDArray[np.float64]

NAMES = {
    "inverse_volatility": "inverse volatility",
    "equal_risk_contribution": "equal risk contribution",
    "hrp": "HRP",
    "herc": "HERC",
    "mean_variance": "mean-variance",
}


def portfolio_weights(
    config: PortfolioConfig, returns: F64, sides: F64, bets: F64
) -> tuple[F64, str]:
    """Signed weights (sum of |w| = 1) over k open bets: ``sides`` +1/-1, ``bets`` the
    strategy's |bet size| in (0, 1] (used by ``bet_size``, which returns ``bets * sides``
    normalised). The method allocates the budget by risk using ``returns`` ``[T, k]`` (past
    simple returns per bar, e.g. :meth:`ReturnsWindow.returns`); the sign is the bet's side.

    Long/short: each method allocates long-only on the bets' direction-adjusted returns (each
    column times its side, so a short bet's risk is that of the short position), then each
    weight takes its bet's sign. ``equal_weight`` gives ``sides / k``. k == 1 gets ±1 without
    an estimator, k == 0 an empty array. ``mean_variance`` may weigh a bet 0 (a corner of
    its optimum; at a low ``risk_aversion`` often all on one bet); the others weigh every
    bet > 0.

    Returns ``(weights, note)``; ``note`` is ``''`` unless the method fell back to equal
    weight, and then says why: fewer than ``min_history`` common returns (``'equal weight:
    12 common returns < min_history 20'``), a bet whose price did not move in the window
    (zero risk, which no risk method can weigh), or the optimiser failing (its error).

    Example: two long bets and one short, HRP on 100 past returns::

        w, note = portfolio_weights(PortfolioConfig(method="hrp"), r, np.array([1., 1., -1.]),
                                    np.array([.5, .2, .3]))
        # w: two positive weights and a negative one, |w| summing to 1; note == ''
    """
    sides = np.asarray(sides, dtype=np.float64)
    bets = np.asarray(bets, dtype=np.float64)
    returns = np.asarray(returns, dtype=np.float64)
    k = sides.size
    if sides.ndim != 1 or bets.shape != sides.shape:
        raise ValueError(f"sides and bets are one value per bet: got {sides.shape}, {bets.shape}")
    if not np.isin(sides, (-1.0, 1.0)).all():
        raise ValueError(f"sides must be +1 (long) or -1 (short): got {np.unique(sides)}")
    if not (np.isfinite(bets) & (bets > 0) & (bets <= 1)).all():
        raise ValueError(f"bets are |bet sizes| in (0, 1]: got {bets[~((bets > 0) & (bets <= 1))]}")
    if returns.ndim != 2 or returns.shape[1] != k:
        raise ValueError(
            f"returns must be [T, k] with one column per bet (k = {k}): got {returns.shape}"
        )
    if not np.isfinite(returns).all():
        raise ValueError(
            "returns hold NaN or inf: pass only rows where every bet has a return "
            "(ReturnsWindow.returns drops the others)"
        )
    if k == 0:
        return np.empty(0, dtype=np.float64), ""
    if config.method == "bet_size":
        return bets * sides / bets.sum(), ""
    if config.method == "equal_weight":
        return sides / k, ""
    if k == 1:
        return sides.copy(), ""
    t = returns.shape[0]
    if t < config.min_history:
        return sides / k, f"equal weight: {t} common returns < min_history {config.min_history}"
    flat = np.flatnonzero(np.ptp(returns, axis=0) == 0)
    if flat.size:
        return sides / k, (
            f"equal weight: bets {flat.tolist()} did not move in the {t} common returns "
            f"(zero risk, {NAMES[config.method]} cannot weigh them)"
        )
    import sklearn

    from pipelines.portfolio.estimators import build_estimator

    estimator = build_estimator(config)
    # The inputs were checked finite above; sklearn's per-call re-checks are a large part of
    # the hierarchical methods' time.
    with sklearn.config_context(assume_finite=True):
        estimator.fit(returns * sides)
    note = ""
    if estimator.fallback_ is not None:
        errors = "; ".join(
            outcome for _, outcome in (estimator.fallback_chain_ or []) if outcome != "success"
        )
        note = f"equal weight: {NAMES[config.method]} failed: {errors}"
    w = np.clip(np.asarray(estimator.weights_, dtype=np.float64), 0.0, None)
    total = w.sum()
    if not (np.isfinite(w).all() and total > 0):
        raise ValueError(f"{NAMES[config.method]} returned weights {w} (not a valid allocation)")
    return w / total * sides + 0.0, note  # + 0.0: no -0.0 for a short bet weighed 0


def rebalance(
    targets: Mapping[str, int],
    current: Mapping[str, int],
    prices: Mapping[str, float],
    config: PortfolioConfig,
) -> dict[str, int]:
    """``targets`` (signed shares) with the resizes not worth making replaced by the current
    position (``current``, signed shares; absent: 0): a resize of a held position whose
    ``|target - current| / |current|`` is at most ``config.rebalance_band``, or whose value
    ``|target - current| * price`` (``prices``, USD per share) is below
    ``config.min_trade_value``. Entries (current 0), exits (target 0) and flips (the sign
    changes) always pass.

    Example: band 0.25, $1,000 minimum, current 1,000 shares at $50: a target of 1,200 stays
    at 1,000 (20% inside the band); 1,300 passes (30%, $15,000); 0 passes (an exit).
    """
    out: dict[str, int] = {}
    for symbol, target in targets.items():
        held = current.get(symbol, 0)
        if held == 0 or target == 0 or (held > 0) != (target > 0) or target == held:
            out[symbol] = target
            continue
        change = abs(target - held)
        if symbol not in prices:
            raise ValueError(
                f"rebalance needs the price of {symbol} to value its resize "
                f"({held} -> {target} shares): pass it in prices"
            )
        inside_band = change <= config.rebalance_band * abs(held)
        too_small = change * prices[symbol] < config.min_trade_value
        out[symbol] = held if inside_band or too_small else target
    return out
