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

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import polars as pl

from pipelines.backtest.kernels import (
    BET,
    SHARES,
    SIDE,
    STATE_WIDTH,
    bet_size_value,
    model_step,
)
from pipelines.execution.batch import BarBatch
from pipelines.execution.path import Signals

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


@dataclass(frozen=True)
class ModelStrategy:
    """The model strategy as a step of the trading path (:mod:`pipelines.execution.path`):
    its memory holds, per symbol, the open bet's side, barriers, age, shares, size and the last
    close (the columns of :mod:`pipelines.backtest.kernels`); the predictions come with each
    bar. The decisions are :func:`pipelines.backtest.kernels.model_step`'s, which the
    vectorized path runs too."""

    sizing: SizingConfig = SizingConfig()
    name: str = "model"

    def __post_init__(self) -> None:
        object.__setattr__(self, "_params", kernel_params(self.sizing))

    def memory(self, n_symbols: int) -> npt.NDArray[np.float64]:
        return np.zeros((n_symbols, STATE_WIDTH))

    def step(
        self,
        memory: npt.NDArray[np.float64],
        bars: BarBatch,
        signals: Signals,
        capital: float,
        closing: bool,
        target: npt.NDArray[np.float64],
        has: npt.NDArray[np.bool_],
    ) -> None:
        s = self.sizing
        model_step(
            bars.ids,
            signals.prob,
            signals.p0,
            signals.volatility,
            bars.high,
            bars.low,
            bars.close,
            s.flat_at_close and closing,
            memory,
            self._params,  # type: ignore[attr-defined]
            capital if s.capital is None else s.capital,
            target,
            has,
        )

    def forget(self, memory: npt.NDArray[np.float64], ids: npt.NDArray[np.int64]) -> None:
        memory[ids, SIDE] = 0.0
        memory[ids, SHARES] = 0.0

    def bets(
        self, memory: npt.NDArray[np.float64]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        ids = np.flatnonzero(memory[:, SIDE] != 0.0).astype(np.int64)
        return ids, memory[ids, SIDE].copy(), memory[ids, BET].copy()

    def resize(
        self,
        memory: npt.NDArray[np.float64],
        ids: npt.NDArray[np.int64],
        shares: npt.NDArray[np.float64],
    ) -> None:
        memory[ids, SHARES] = shares
        memory[ids[shares == 0.0], SIDE] = 0.0  # a bet sized to nothing is not left open
