"""Performance analytics of a per-period return series and of a list of trade returns.

Returns are simple per-period returns (0.01 = +1%); ``periods_per_year`` annualises them
(252 for daily, 252 * 26 for 15-minute regular-session bars). Undefined figures (a Sharpe ratio
of a flat series, a profit factor without losses) are NaN, never a made-up number.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from itertools import combinations

import numpy as np
import numpy.typing as npt

from pipelines.backtest.statistics import probabilistic_sharpe_ratio

F64 = npt.NDArray[np.float64]
NAN = float("nan")


def _ratio(a: float, b: float) -> float:
    return a / b if b != 0 and math.isfinite(b) else NAN


def drawdowns(returns: F64) -> tuple[F64, float, int]:
    """The underwater curve (equity / running peak - 1), the maximum drawdown (a negative
    fraction) and its duration in periods (longest stretch below a previous peak)."""
    equity = np.cumprod(1.0 + returns)
    peak = np.maximum.accumulate(np.concatenate([[1.0], equity]))[1:]
    underwater = equity / peak - 1.0
    longest = current = 0
    for below in underwater < 0:
        current = current + 1 if below else 0
        longest = max(longest, current)
    return underwater, float(underwater.min(initial=0.0)), longest


@dataclass(frozen=True)
class ReturnStats:
    """Headline statistics of a return series (annualised where named so)."""

    total_return: float
    annual_return: float
    annual_volatility: float
    sharpe: float
    sortino: float
    calmar: float
    max_drawdown: float
    max_drawdown_periods: int
    psr: float
    alpha: float
    beta: float

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def return_stats(
    returns: F64, periods_per_year: float, benchmark: F64 | None = None
) -> ReturnStats:
    """Statistics of ``returns``; alpha (annualised) and beta against ``benchmark`` when given.

    Example: daily returns of a year, ``return_stats(r, 252)``.
    """
    r = np.asarray(returns, dtype=np.float64)
    if r.size == 0:
        raise ValueError("no returns")
    n = r.size
    total = float(np.prod(1.0 + r) - 1.0)
    years = n / periods_per_year
    annual = (1.0 + total) ** (1.0 / years) - 1.0 if total > -1.0 else -1.0
    sd = float(np.std(r, ddof=1)) if n > 1 else NAN
    vol = sd * math.sqrt(periods_per_year)
    sharpe_p = _ratio(float(np.mean(r)), sd)
    downside = float(np.sqrt(np.mean(np.minimum(r, 0.0) ** 2)))
    _, mdd, mdd_periods = drawdowns(r)
    psr = NAN
    if math.isfinite(sharpe_p) and n > 2:
        m = r - r.mean()
        skewness = float(np.mean(m**3) / np.mean(m**2) ** 1.5)
        kurt = float(np.mean(m**4) / np.mean(m**2) ** 2)
        psr = probabilistic_sharpe_ratio(sharpe_p, n, skewness=skewness, kurt=kurt)
    alpha = beta = NAN
    if benchmark is not None:
        b = np.asarray(benchmark, dtype=np.float64)
        if b.shape != r.shape:
            raise ValueError("benchmark and returns differ in length")
        var_b = float(np.var(b, ddof=1))
        if var_b > 0:
            beta = float(np.cov(r, b, ddof=1)[0, 1] / var_b)
            alpha = float((np.mean(r) - beta * np.mean(b)) * periods_per_year)
    return ReturnStats(
        total_return=total,
        annual_return=float(annual),
        annual_volatility=vol,
        sharpe=sharpe_p * math.sqrt(periods_per_year),
        sortino=_ratio(float(np.mean(r)), downside) * math.sqrt(periods_per_year),
        calmar=_ratio(float(annual), -mdd),
        max_drawdown=mdd,
        max_drawdown_periods=mdd_periods,
        psr=psr,
        alpha=alpha,
        beta=beta,
    )


@dataclass(frozen=True)
class TradeStats:
    """Statistics of closed trades, in returns (each trade's pnl over its cost, every trade
    counting the same) and in dollars (every dollar counting the same); the two can disagree,
    e.g. many small losing trades and a few large winning ones."""

    trades: int
    win_rate: float
    profit_factor: float
    expectancy: float
    average_win: float
    average_loss: float
    longest_win_streak: int
    longest_loss_streak: int
    pnl_usd: float = NAN
    profit_factor_usd: float = NAN
    expectancy_usd: float = NAN
    average_win_usd: float = NAN
    average_loss_usd: float = NAN


def trade_stats(trade_returns: F64, trade_pnl: F64 | None = None) -> TradeStats:
    """Statistics of closed trades from their returns and, when given, their pnl (USD)."""
    t = np.asarray(trade_returns, dtype=np.float64)
    wins, losses = t[t > 0], t[t < 0]
    streaks = {True: 0, False: 0}
    run, last = 0, None
    for w in t > 0:
        run = run + 1 if w == last else 1
        last = w
        streaks[bool(w)] = max(streaks[bool(w)], run)
    dollars: dict[str, float] = {}
    if trade_pnl is not None:
        d = np.asarray(trade_pnl, dtype=np.float64)
        won, lost = d[d > 0], d[d < 0]
        dollars = {
            "pnl_usd": float(d.sum()),
            "profit_factor_usd": _ratio(float(won.sum()), float(-lost.sum())),
            "expectancy_usd": float(d.mean()) if d.size else NAN,
            "average_win_usd": float(won.mean()) if won.size else NAN,
            "average_loss_usd": float(lost.mean()) if lost.size else NAN,
        }
    return TradeStats(
        trades=int(t.size),
        win_rate=_ratio(float(wins.size), float(t.size)),
        profit_factor=_ratio(float(wins.sum()), float(-losses.sum())),
        expectancy=float(t.mean()) if t.size else NAN,
        average_win=float(wins.mean()) if wins.size else NAN,
        average_loss=float(losses.mean()) if losses.size else NAN,
        longest_win_streak=streaks[True],
        longest_loss_streak=streaks[False],
        **dollars,
    )


def probability_of_backtest_overfitting(performance: F64, n_groups: int = 16) -> float:
    """PBO by combinatorially symmetric cross-validation (Bailey et al. 2015): ``performance``
    holds per-period returns, one column per configuration tried. For every split of the
    ``n_groups`` row blocks into halves, the configuration with the best in-sample Sharpe is
    ranked out of sample; PBO is the share of splits where it lands below the median (half a
    split where it is the median itself)."""
    m = np.asarray(performance, dtype=np.float64)
    if m.ndim != 2 or m.shape[1] < 2:
        raise ValueError("need a matrix with one column per configuration (at least two)")
    if n_groups % 2 or n_groups < 2 or m.shape[0] < n_groups:
        raise ValueError("n_groups must be even and at most the number of rows")
    blocks = np.array_split(np.arange(m.shape[0]), n_groups)

    def sharpe(rows: npt.NDArray[np.int64]) -> F64:
        x = m[rows]
        sd = x.std(axis=0, ddof=1)
        out: F64 = np.divide(x.mean(axis=0), sd, out=np.zeros(m.shape[1]), where=sd > 0)
        return out

    below, total = 0.0, 0
    n = m.shape[1]
    for chosen in combinations(range(n_groups), n_groups // 2):
        ins = np.concatenate([blocks[i] for i in chosen])
        oos = np.concatenate([blocks[i] for i in range(n_groups) if i not in chosen])
        best = int(np.argmax(sharpe(ins)))
        oos_sr = sharpe(oos)
        # Relative rank w = r / (n + 1), with r the mid-rank among ties (configurations that
        # never traded tie at 0); its logit is below 0 when 2r < n + 1. The exact median
        # (logit 0) is neither above nor below it: it counts one half.
        ties = int((oos_sr == oos_sr[best]).sum()) - 1
        r2 = 2 * int((oos_sr < oos_sr[best]).sum()) + 2 + ties  # twice the mid-rank
        below += 1.0 if r2 < n + 1 else 0.5 if r2 == n + 1 else 0.0
        total += 1
    return below / total
