"""HRP weights of 500 symbols from 252 daily returns (target < 200 ms): the real S&P 500 daily
set of ../shared/data (its last 252 returns, the first 500 symbols, alphabetically, with a close
on each of the last 253 days), or seeded synthetic returns where it is absent (the figure says
which). Timed through :func:`pipelines.portfolio.weights.portfolio_weights` with the default
settings (Ledoit-Wolf covariance), best of several runs after a warm-up; stock skfolio's
``HierarchicalRiskParity`` (its defaults, the same prior) on the same returns for comparison;
HERC the same way. ``python -m bench.portfolio`` prints the JSON object."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import polars as pl

from pipelines.portfolio.config import PortfolioConfig
from pipelines.portfolio.weights import portfolio_weights

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("QUANTDAG_SHARED_DATA", ROOT.parent / "shared" / "data"))
FILE = "sp500_daily_2013_2018.parquet"
SYMBOLS, RETURNS, REPEATS = 500, 252, 7


def daily_returns(shared: Path) -> tuple[npt.NDArray[np.float64], str]:
    """``[252, 500]`` simple daily returns and where they come from."""
    path = shared / FILE
    if not path.exists():
        rng = np.random.default_rng(12)
        market = rng.normal(0.0003, 0.009, (RETURNS, 1))
        sectors = rng.normal(0.0, 0.006, (RETURNS, 11))[:, rng.integers(0, 11, SYMBOLS)]
        beta = rng.uniform(0.5, 1.5, SYMBOLS)
        idio = rng.normal(0.0, 1.0, (RETURNS, SYMBOLS)) * rng.uniform(0.008, 0.025, SYMBOLS)
        return market * beta + sectors + idio, f"synthetic (seeded; {FILE} absent in {shared})"
    frame = pl.read_parquet(path, columns=["symbol", "date", "close"]).with_columns(
        pl.col("symbol").cast(pl.String)
    )
    dates = frame["date"].unique().sort().tail(RETURNS + 1)
    wide = (
        frame.filter(pl.col("date").is_in(dates.implode()))
        .pivot(on="symbol", index="date", values="close")
        .sort("date")
    )
    full = sorted(
        c for c in wide.columns[1:] if wide[c].null_count() == 0 and not wide[c].is_nan().any()
    )[:SYMBOLS]
    if len(full) < SYMBOLS:
        raise SystemExit(f"bench.portfolio: only {len(full)} symbols have {RETURNS + 1} closes")
    closes = wide.select(full).to_numpy()
    first, last = wide["date"][1], wide["date"][-1]
    return closes[1:] / closes[:-1] - 1.0, f"real: {FILE}, {first} to {last}"


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # imports and first-call costs
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return round(best * 1e3, 2)


def hrp_timing(shared: Path = SHARED) -> dict[str, object]:
    """``risk.hrp_ms_500_symbols`` (best of 7) and the figures beside it."""
    from skfolio.moments import LedoitWolf
    from skfolio.optimization import HierarchicalRiskParity
    from skfolio.prior import EmpiricalPrior

    returns, source = daily_returns(shared)
    sides = np.where(np.random.default_rng(5).random(SYMBOLS) < 0.7, 1.0, -1.0)
    bets = np.ones(SYMBOLS)
    hrp = PortfolioConfig(method="hrp")
    herc = PortfolioConfig(method="herc")

    def stock() -> object:
        prior = EmpiricalPrior(covariance_estimator=LedoitWolf())
        return HierarchicalRiskParity(prior_estimator=prior).fit(returns * sides)

    weights, note = portfolio_weights(hrp, returns, sides, bets)
    if note or not np.isclose(np.abs(weights).sum(), 1.0):
        raise SystemExit(f"bench.portfolio: HRP did not weigh the 500 bets ({note!r})")
    return {
        "risk.hrp_ms_500_symbols": best_ms(
            lambda: portfolio_weights(hrp, returns, sides, bets), REPEATS
        ),
        "risk.hrp_ms_500_symbols_stock_skfolio": best_ms(stock, 3),
        "risk.herc_ms_500_symbols": best_ms(
            lambda: portfolio_weights(herc, returns, sides, bets), 3
        ),
        "risk.hrp_returns": source,
        "risk.hrp_shape": f"{returns.shape[0]} returns x {returns.shape[1]} symbols",
        "risk.hrp_repeats": REPEATS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", type=Path, default=SHARED)
    args = parser.parse_args()
    print(json.dumps(hrp_timing(args.shared)))


if __name__ == "__main__":
    main()
