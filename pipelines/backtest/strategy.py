"""The model strategy: side and size from the calibrated probability against the base rate;
one bet at a time per symbol, held as its label is: to a barrier, the vertical barrier or the
session's close.

At each bar close, for each symbol that is flat and has a prediction, the bet size is
``2 * Phi(z) - 1`` with ``z = (p - p0) / sqrt(p (1 - p))`` (López de Prado, AFML ch. 10, with
the no-skill forecast ``p0`` in place of 0.5: the ``base_rate`` the model knew when it was
fitted, so that a model that merely learnt "up is more frequent" does not bet on the market),
zero inside the dead band ``|p - p0| < threshold``, capped at ``max_bet``; the position's
notional is that size times ``capital * target_vol / volatility`` (volatility targeting;
``volatility`` per bar, the one the labels use), capped at ``max_position`` of capital, and the
positions opened at that bar together at ``max_gross`` (their gross measured in whole cents).
``capital`` is the current equity unless :attr:`SizingConfig.capital` fixes it.

The bet is then held, whatever later predictions say, until the close of the first later bar
whose high or low touches a barrier (``profit_take`` / ``stop_loss`` volatility units from the
entry bar's close, as in :mod:`pipelines.labels.triple_barrier`) or ``max_holding_bars`` bars
after its entry: the trade is the event the model was trained to predict, and a new bet needs a
new event (the symbol may enter again at the bar it exits). Re-sizing on every bar's prediction
would instead trade one bar of each label and pay the costs of every resize. With
``flat_at_close`` (labels cut at the session close), a bar whose next bar is the session's last
one is a closing bar: the strategy opens nothing there and closes every bet there, so the exit
fills at the last bar's open and nothing is held overnight, as no label the model learnt from
spans a close. The decisions are one numba step (:func:`pipelines.backtest.kernels.model_step`)
that the event engine calls bar by bar and the vectorized path runs over all bars.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import numpy as np
import numpy.typing as npt
import polars as pl

from pipelines.backtest.broker import BarBatch
from pipelines.backtest.kernels import STATE_WIDTH, bet_size_value, model_step

Reference = Literal["base_rate", "half"]


@dataclass(frozen=True)
class SizingConfig:
    """``threshold`` 0.02 trades only when p > p0 + 0.02 or p < p0 - 0.02; ``reference``
    ``"base_rate"`` takes p0 from each prediction's ``base_rate`` (``"half"``: 0.5);
    ``target_vol`` 0.002 aims at 0.2% of capital per bar of volatility per position before
    caps; ``max_position`` 0.1 caps a position at 10% of capital, ``max_gross`` 1.0 those
    decided together at 100%. ``profit_take`` / ``stop_loss`` (volatility units, None: no such
    exit), ``max_holding_bars`` and ``flat_at_close`` are the exits. ``capital`` (USD, None: the
    current equity) sizes on a fixed amount, which the vectorized path needs (it cannot
    compound)."""

    threshold: float = 0.02
    max_bet: float = 1.0
    target_vol: float = 0.002
    max_position: float = 0.10
    max_gross: float = 1.0
    max_holding_bars: int = 16
    allow_short: bool = True
    profit_take: float | None = None
    stop_loss: float | None = None
    capital: float | None = None
    reference: Reference = "base_rate"
    flat_at_close: bool = False

    def __post_init__(self) -> None:
        if self.max_holding_bars < 1:
            raise ValueError("max_holding_bars must be at least 1")
        for name in ("profit_take", "stop_loss", "capital"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive or None, got {value}")
        if self.reference not in ("base_rate", "half"):
            raise ValueError(f'reference must be "base_rate" or "half", got {self.reference!r}')


def bet_size(p: float, threshold: float, max_bet: float, p0: float = 0.5) -> float:
    """Signed bet size in [-max_bet, max_bet] from the probability ``p`` of an up move against
    the no-skill probability ``p0``. Example: ``bet_size(0.60, 0.02, 1.0, p0=0.55)`` is about
    +0.08, and ``bet_size(0.55, 0.02, 1.0, p0=0.55)`` is 0."""
    return float(bet_size_value(p, p0, threshold, max_bet))


def kernel_params(sizing: SizingConfig) -> npt.NDArray[np.float64]:
    """``sizing`` as the parameter vector of :func:`pipelines.backtest.kernels.model_step`."""
    nan = float("nan")
    return np.array(
        [
            sizing.threshold,
            sizing.max_bet,
            sizing.target_vol,
            sizing.max_position,
            sizing.max_gross,
            float(sizing.max_holding_bars),
            1.0 if sizing.allow_short else 0.0,
            nan if sizing.profit_take is None else sizing.profit_take,
            nan if sizing.stop_loss is None else sizing.stop_loss,
        ]
    )


def signal_columns(signals: pl.DataFrame, sizing: SizingConfig) -> pl.DataFrame:
    """``signals`` with the ``p0`` column the bet is measured against (checked)."""
    if sizing.reference == "half":
        return signals.with_columns(p0=pl.lit(0.5))
    if "base_rate" not in signals.columns:
        raise ValueError(
            "the predictions carry no base_rate column: bets are measured against the base "
            'rate the model knew; add it, or size against 0.5 with reference="half"'
        )
    return signals.with_columns(p0=pl.col("base_rate"))


@dataclass
class ModelStrategy:
    """Targets from ``signals`` (``symbol``, ``ts``, ``prob``, ``volatility`` and, for the
    default reference, ``base_rate``) and the equity the engine passes at each bar;
    ``closing`` holds the closing bars' times (see the module docstring), used when
    ``sizing.flat_at_close`` is set. The decisions are :func:`pipelines.backtest.kernels.
    model_step`'s, which the vectorized path runs too."""

    signals: pl.DataFrame
    sizing: SizingConfig = SizingConfig()
    name: str = "model"
    closing: frozenset[datetime] = frozenset()
    _lookup: dict[tuple[str, datetime], tuple[float, float, float]] = field(default_factory=dict)
    _state: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, STATE_WIDTH)))

    def __post_init__(self) -> None:
        if self.sizing.flat_at_close and not self.closing:
            raise ValueError("flat_at_close needs the closing bars' times (closing_bars)")
        frame = signal_columns(self.signals, self.sizing)
        for r in frame.iter_rows(named=True):
            vol = r["volatility"]
            self._lookup[(r["symbol"], r["ts"])] = (
                r["prob"],
                float("nan") if vol is None else vol,
                r["p0"],
            )
        self._params = kernel_params(self.sizing)

    def targets(
        self, ts: datetime, bars: BarBatch, positions: Mapping[str, int], equity: float
    ) -> dict[str, int]:
        s = self.sizing
        ids = bars.ids
        if len(ids) and ids.max(initial=0) >= len(self._state):
            grow = int(ids.max()) + 1 - len(self._state)
            self._state = np.vstack([self._state, np.zeros((grow, STATE_WIDTH))])
        n = len(ids)
        prob, p0, vol = np.full(n, np.nan), np.full(n, 0.5), np.full(n, np.nan)
        for j, symbol in enumerate(bars.symbols):
            signal = self._lookup.get((symbol, ts))
            if signal is not None:
                prob[j], vol[j], p0[j] = signal
        target = np.zeros(n)
        has = np.zeros(n, dtype=np.bool_)
        model_step(
            ids,
            prob,
            p0,
            vol,
            bars.high,
            bars.low,
            bars.close,
            s.flat_at_close and ts in self.closing,
            self._state,
            self._params,
            equity if s.capital is None else s.capital,
            target,
            has,
        )
        return {bars.symbols[j]: int(target[j]) for j in np.flatnonzero(has)}
