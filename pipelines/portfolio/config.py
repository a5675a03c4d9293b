"""How the open bets share the risk budget: the portfolio method and its rebalancing rules."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

Method = Literal[
    "bet_size",
    "equal_weight",
    "inverse_volatility",
    "equal_risk_contribution",
    "hrp",
    "herc",
    "mean_variance",
]
Covariance = Literal["ledoit_wolf", "empirical"]

METHODS: tuple[str, ...] = get_args(Method)
COVARIANCES: tuple[str, ...] = get_args(Covariance)


@dataclass(frozen=True)
class PortfolioConfig:
    """How the open bets share the risk budget.

    ``method``: ``bet_size`` keeps the strategy's own sizes (today's behaviour);
    ``equal_weight`` gives every bet the same gross; ``inverse_volatility`` weighs each bet by
    1 / its sample volatility; ``equal_risk_contribution`` makes every bet contribute the same
    variance; ``hrp`` / ``herc`` are hierarchical risk parity (López de Prado) and hierarchical
    equal risk contribution (Raffinot); ``mean_variance`` maximises ``mu'w - risk_aversion *
    w'Σw``. All but the first two estimate from the last ``lookback`` bars of past returns
    (simple returns per bar, of the bars' timeframe).

    ``min_history`` (bars): with fewer past returns common to every open bet the method falls
    back to equal weight and says so. ``covariance``: ``ledoit_wolf`` shrinks the covariance
    of ``mean_variance``, ``equal_risk_contribution``, ``hrp`` and ``herc`` towards a scaled
    identity (Ledoit-Wolf), ``empirical`` uses the sample covariance; ``inverse_volatility``
    always uses the sample volatilities. ``risk_aversion`` (``mean_variance`` only) is in the
    units of per-bar returns: mu and Σ are per bar, and per-bar variances are small (about
    4e-6 for 15-minute bars of a typical stock), so at 1.0 the past mean returns dominate;
    raise it to weigh risk more (very large values approach minimum variance).

    ``rebalance_band`` (fraction): a held position is resized only when
    ``|target - current| / |current|`` exceeds it; ``min_trade_value`` (USD): a resize worth
    less than this is skipped. Entries, full exits and flips always trade.

    Example: HRP over the last 252 bars, Ledoit-Wolf shrinkage, positions resized only when
    they drift by more than 25% and by at least $1,000::

        PortfolioConfig(method="hrp", lookback=252, rebalance_band=0.25, min_trade_value=1_000)
    """

    method: Method = "bet_size"
    lookback: int = 252
    min_history: int = 20
    covariance: Covariance = "ledoit_wolf"
    risk_aversion: float = 1.0
    rebalance_band: float = 0.25
    min_trade_value: float = 1_000.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(
                f"portfolio method {self.method!r} is unknown: write one of {', '.join(METHODS)}"
            )
        if self.covariance not in COVARIANCES:
            raise ValueError(
                f"covariance {self.covariance!r} is unknown: write one of {', '.join(COVARIANCES)}"
            )
        for name in ("lookback", "min_history"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ValueError(
                    f"{name} is a number of bars of past returns: write an integer >= 2 "
                    f"(got {value!r})"
                )
        if self.min_history > self.lookback:
            raise ValueError(
                f"min_history {self.min_history} exceeds lookback {self.lookback}, so the "
                "window could never hold enough returns: write min_history <= lookback"
            )
        if not (math.isfinite(self.risk_aversion) and self.risk_aversion > 0):
            raise ValueError(
                f"risk_aversion must be a finite number > 0, e.g. 1.0 (got {self.risk_aversion!r})"
            )
        if not (math.isfinite(self.rebalance_band) and self.rebalance_band >= 0):
            raise ValueError(
                "rebalance_band is a fraction of the current position, e.g. 0.25 for 25% "
                f"(0 resizes on any change): write a finite number >= 0 "
                f"(got {self.rebalance_band!r})"
            )
        if not (math.isfinite(self.min_trade_value) and self.min_trade_value >= 0):
            raise ValueError(
                "min_trade_value is in USD, e.g. 1000.0 (0 allows any resize): write a finite "
                f"number >= 0 (got {self.min_trade_value!r})"
            )
