"""The model strategy: side and size from the calibrated probability, exits by holding period.

At each bar close, for each symbol with a prediction: the bet size is ``2 * Phi(z) - 1`` with
``z = (p - 0.5) / sqrt(p (1 - p))`` (López de Prado, AFML ch. 10), zero inside the dead band
``|p - 0.5| < threshold``, capped at ``max_bet``; the position's notional is that size times
``equity * target_vol / volatility`` (volatility targeting; ``volatility`` per bar, from the
features), capped at ``max_position`` of equity, and all positions together at ``max_gross``.
A position is closed after ``max_holding_bars`` bars unless the model renews it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import polars as pl
from scipy.stats import norm

from pipelines.backtest.broker import Bar


@dataclass(frozen=True)
class SizingConfig:
    """``threshold`` 0.02 trades only when p > 0.52 or p < 0.48; ``target_vol`` 0.002 aims at
    0.2% of equity per bar of volatility per position before caps; ``max_position`` 0.1 caps a
    position at 10% of equity, ``max_gross`` 1.0 all of them at 100%."""

    threshold: float = 0.02
    max_bet: float = 1.0
    target_vol: float = 0.002
    max_position: float = 0.10
    max_gross: float = 1.0
    max_holding_bars: int = 16
    allow_short: bool = True


def bet_size(p: float, threshold: float, max_bet: float) -> float:
    """Signed bet size in [-max_bet, max_bet] from the probability of an up move."""
    if not 0.0 < p < 1.0 or abs(p - 0.5) < threshold:
        return 0.0
    z = (p - 0.5) / math.sqrt(p * (1.0 - p))
    return max(-max_bet, min(max_bet, 2.0 * float(norm.cdf(z)) - 1.0))


@dataclass
class ModelStrategy:
    """Targets from ``signals`` (``symbol``, ``ts``, ``prob``, ``volatility``) and the equity
    the engine passes at each bar."""

    signals: pl.DataFrame
    sizing: SizingConfig = SizingConfig()
    name: str = "model"
    _lookup: dict[tuple[str, datetime], tuple[float, float]] = field(default_factory=dict)
    _age: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for r in self.signals.iter_rows(named=True):
            self._lookup[(r["symbol"], r["ts"])] = (r["prob"], r["volatility"])

    def targets(
        self, ts: datetime, bars: Mapping[str, Bar], positions: Mapping[str, int], equity: float
    ) -> dict[str, int]:
        s = self.sizing
        wanted: dict[str, float] = {}
        for symbol, bar in bars.items():
            held = positions.get(symbol, 0)
            signal = self._lookup.get((symbol, ts))
            size = 0.0
            if signal is not None and signal[1] and signal[1] > 0:
                size = bet_size(signal[0], s.threshold, s.max_bet)
                if size < 0 and not s.allow_short:
                    size = 0.0
            if size:
                notional = size * equity * s.target_vol / signal[1]  # type: ignore[index]
                cap = s.max_position * equity
                wanted[symbol] = max(-cap, min(cap, notional)) / bar.close
                self._age[symbol] = 0
            elif held:
                self._age[symbol] = self._age.get(symbol, 0) + 1
                if self._age[symbol] >= s.max_holding_bars:
                    wanted[symbol] = 0.0
        gross = sum(abs(q) * bars[sym].close for sym, q in wanted.items())
        scale = min(1.0, s.max_gross * equity / gross) if gross > 0 else 1.0
        return {sym: int(q * scale) for sym, q in wanted.items()}
