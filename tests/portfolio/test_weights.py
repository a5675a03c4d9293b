"""Each portfolio method on real daily returns of the bundled sample: valid signed weights,
the allocations the methods are known for, and skfolio's numbers where we configured it."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from skfolio.moments import LedoitWolf
from skfolio.optimization import HierarchicalEqualRiskContribution, HierarchicalRiskParity
from skfolio.prior import EmpiricalPrior
from skfolio.seriation import HierarchicalSeriation

from pipelines.portfolio.config import METHODS, PortfolioConfig
from pipelines.portfolio.estimators import _HERC, _HRP
from pipelines.portfolio.weights import portfolio_weights
from tests.portfolio.conftest import DAILY, dense_returns, sample_closes

pytestmark = [
    pytest.mark.unit,
    pytest.mark.filterwarnings("ignore:The covariance matrix is not positive definite"),
]
F64 = npt.NDArray[np.float64]
SIDES = np.array([1.0, -1.0, 1.0, 1.0, -1.0, 1.0])
BETS = np.array([0.5, 0.2, 0.9, 0.4, 0.1, 0.6])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("covariance", ["ledoit_wolf", "empirical"])
def test_every_method_gives_signed_weights_of_unit_gross(
    daily_returns: F64, method: str, covariance: str
) -> None:
    config = PortfolioConfig(method=method, covariance=covariance)  # type: ignore[arg-type]
    w, note = portfolio_weights(config, daily_returns, SIDES, BETS)
    assert note == ""
    assert w.shape == (6,) and np.isfinite(w).all()
    assert np.abs(w).sum() == pytest.approx(1.0, abs=1e-12)
    assert (w * SIDES >= 0).all(), "a weight takes its bet's side"
    if method != "mean_variance":  # the only one whose optimum may leave a bet out
        assert (w * SIDES > 0).all()


def test_bet_size_and_equal_weight_need_no_returns() -> None:
    none = np.empty((0, 6))
    w, _ = portfolio_weights(PortfolioConfig(), none, SIDES, BETS)
    np.testing.assert_allclose(w, BETS * SIDES / BETS.sum())
    w, _ = portfolio_weights(PortfolioConfig(method="equal_weight"), none, SIDES, BETS)
    np.testing.assert_allclose(w, SIDES / 6)


@pytest.mark.parametrize("method", ["hrp", "herc", "equal_risk_contribution", "mean_variance"])
def test_risk_is_allocated_on_direction_adjusted_returns(daily_returns: F64, method: str) -> None:
    """A short bet is weighed by the risk of the short position: the same as a long bet on
    the negated returns."""
    config = PortfolioConfig(method=method, risk_aversion=100.0)  # type: ignore[arg-type]
    w, _ = portfolio_weights(config, daily_returns, SIDES, BETS)
    longs, _ = portfolio_weights(config, daily_returns * SIDES, np.ones(6), BETS)
    np.testing.assert_allclose(w, longs * SIDES, atol=1e-6)


def test_inverse_volatility_weighs_the_quieter_symbol_more(daily_returns: F64) -> None:
    config = PortfolioConfig(method="inverse_volatility")
    xlp, tsla = DAILY.index("XLP"), DAILY.index("TSLA")
    w, _ = portfolio_weights(config, daily_returns[:, [xlp, tsla]], np.ones(2), np.ones(2))
    vol = daily_returns[:, [xlp, tsla]].std(axis=0)
    assert vol[0] < vol[1] / 3  # staples against TSLA
    assert w[0] > w[1]
    np.testing.assert_allclose(w * vol, (w * vol)[0])  # w proportional to 1 / volatility


def test_hrp_treats_two_perfectly_correlated_assets_as_one_cluster(daily_returns: F64) -> None:
    """SPY twice and GLD scaled to SPY's volatility: inverse volatility splits in thirds, HRP
    gives the pair's cluster and GLD half the budget each (the pair's variance is that of
    one asset), in whichever column order."""
    spy = daily_returns[:, DAILY.index("SPY")]
    gld = daily_returns[:, DAILY.index("GLD")]
    gld = gld * spy.std() / gld.std()
    ones = np.ones(3)
    config = PortfolioConfig(method="hrp", covariance="empirical")
    w, _ = portfolio_weights(config, np.column_stack([spy, spy, gld]), ones, ones)
    np.testing.assert_allclose(w, [0.25, 0.25, 0.5], atol=1e-6)
    w, _ = portfolio_weights(config, np.column_stack([gld, spy, spy]), ones, ones)
    np.testing.assert_allclose(w, [0.5, 0.25, 0.25], atol=1e-6)
    iv = PortfolioConfig(method="inverse_volatility")
    w, _ = portfolio_weights(iv, np.column_stack([spy, spy, gld]), ones, ones)
    np.testing.assert_allclose(w, [1 / 3] * 3, atol=1e-9)


def test_mean_variance_with_shrinkage_differs_from_empirical(daily_returns: F64) -> None:
    shrunk, _ = portfolio_weights(
        PortfolioConfig(method="mean_variance", risk_aversion=100.0), daily_returns, SIDES, BETS
    )
    sample, _ = portfolio_weights(
        PortfolioConfig(method="mean_variance", risk_aversion=100.0, covariance="empirical"),
        daily_returns,
        SIDES,
        BETS,
    )
    assert np.abs(shrunk - sample).sum() > 0.05
    # Risk aversion moves it from the best past mean towards less risk.
    greedy, _ = portfolio_weights(
        PortfolioConfig(method="mean_variance", risk_aversion=1e-3), daily_returns, SIDES, BETS
    )
    assert (np.abs(greedy) > 1e-6).sum() == 1  # the interior-point solver leaves ~1e-8 dust
    assert (np.abs(shrunk) > 1e-6).sum() > 2


@pytest.mark.parametrize(("ours", "stock"), [(_HRP, HierarchicalRiskParity), (_HERC, None)])
def test_the_fast_cluster_risk_is_skfolios_number(ours: type, stock: type | None) -> None:
    """The per-cluster variance computed on the cluster's block of the covariance gives the
    weights stock skfolio gives, on the 15-minute returns of 23 sample symbols."""
    symbols = ["AAPL", "AMT", "AMZN", "BAC", "BK", "DFS", "GLD", "JPM", "MSFT", "MU", "PPLT"]
    symbols += ["QQQ", "SBUX", "SLV", "SPY", "TRV", "TSLA", "TZA", "UGA", "V", "VOO", "VXXB"]
    symbols += ["XLP"]
    returns = dense_returns(sample_closes("eqker_15min", symbols), symbols)[-252:]
    assert returns.shape == (252, 23)
    if ours is _HRP:
        kwargs = {"seriation_estimator": HierarchicalSeriation(optimal_ordering=False)}
        base: type = HierarchicalRiskParity
    else:
        kwargs, base = {}, HierarchicalEqualRiskContribution
    assert "_risk" in vars(ours.__mro__[1]), "the override is skfolio's hook of that name"
    assert callable(getattr(base, "_risk", None)), "skfolio still computes cluster risk there"

    def prior() -> EmpiricalPrior:
        return EmpiricalPrior(covariance_estimator=LedoitWolf())

    mine = ours(prior_estimator=prior(), **kwargs).fit(returns).weights_
    theirs = base(prior_estimator=prior(), **kwargs).fit(returns).weights_
    np.testing.assert_allclose(mine, theirs, rtol=1e-10, atol=1e-15)


def test_one_bet_takes_the_whole_budget_and_none_gives_nothing(daily_returns: F64) -> None:
    config = PortfolioConfig(method="hrp")
    w, note = portfolio_weights(config, daily_returns[:, :1], np.array([-1.0]), np.array([0.3]))
    assert w.tolist() == [-1.0] and note == ""
    w, note = portfolio_weights(config, np.empty((5, 0)), np.empty(0), np.empty(0))
    assert w.shape == (0,) and note == ""


def test_too_little_history_falls_back_to_equal_weight_and_says_so(daily_returns: F64) -> None:
    config = PortfolioConfig(method="herc")
    w, note = portfolio_weights(config, daily_returns[:12], SIDES, BETS)
    np.testing.assert_allclose(w, SIDES / 6)
    assert note == "equal weight: 12 common returns < min_history 20"


def test_a_bet_that_never_moved_falls_back_to_equal_weight(daily_returns: F64) -> None:
    returns = daily_returns[:, :3].copy()
    returns[:, 1] = 0.0
    w, note = portfolio_weights(PortfolioConfig(method="hrp"), returns, np.ones(3), np.ones(3))
    np.testing.assert_allclose(w, 1 / 3)
    assert note == (
        "equal weight: bets [1] did not move in the 200 common returns "
        "(zero risk, HRP cannot weigh them)"
    )


@pytest.mark.parametrize("method", ["equal_risk_contribution", "herc", "mean_variance"])
def test_an_optimiser_failure_falls_back_to_equal_weight_with_its_error(
    daily_returns: F64, method: str
) -> None:
    """Returns of 1e-30 leave a covariance skfolio calls non-positive: its error is the note."""
    config = PortfolioConfig(method=method)  # type: ignore[arg-type]
    w, note = portfolio_weights(config, daily_returns * 1e-30, SIDES, BETS)
    np.testing.assert_allclose(w, SIDES / 6)
    assert note.startswith("equal weight: ") and " failed: " in note
    assert "non positive variance" in note


@pytest.mark.parametrize(
    ("returns", "sides", "bets", "message"),
    [
        (np.zeros((30, 2)), np.array([1.0, 0.0]), np.ones(2), "sides must be"),
        (np.zeros((30, 2)), np.ones(2), np.array([0.5, 0.0]), r"bets are \|bet sizes\|"),
        (np.zeros((30, 2)), np.ones(2), np.array([0.5, 1.5]), r"bets are \|bet sizes\|"),
        (np.zeros((30, 3)), np.ones(2), np.ones(2), r"returns must be \[T, k\]"),
        (np.full((30, 2), np.nan), np.ones(2), np.ones(2), "returns hold NaN"),
        (np.zeros((30, 2)), np.ones(2), np.ones(3), "one value per bet"),
    ],
)
def test_bad_inputs_are_refused(returns: F64, sides: F64, bets: F64, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        portfolio_weights(PortfolioConfig(method="hrp"), returns, sides, bets)
