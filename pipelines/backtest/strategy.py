"""The model strategy: side and size from the calibrated probability; exits by the label's
barriers or by holding period.

At each bar close, for each symbol with a prediction: the bet size is ``2 * Phi(z) - 1`` with
``z = (p - 0.5) / sqrt(p (1 - p))`` (López de Prado, AFML ch. 10), zero inside the dead band
``|p - 0.5| < threshold``, capped at ``max_bet``; the position's notional is that size times
``capital * target_vol / volatility`` (volatility targeting; ``volatility`` per bar, the one the
labels use), capped at ``max_position`` of capital, and all positions decided at that bar
together at ``max_gross`` (their gross measured in whole cents). ``capital`` is the current
equity unless :attr:`SizingConfig.capital` fixes it. A nonzero bet (re)enters and resets the
exits: the position is closed at the close of the first later bar whose high or low touches a
barrier (``profit_take`` / ``stop_loss`` volatility units from the entry bar's close, as in
:mod:`pipelines.labels.triple_barrier`) or after ``max_holding_bars`` bars, whichever comes
first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import polars as pl
from scipy.special import ndtr

from pipelines.backtest.broker import BarBatch


@dataclass(frozen=True)
class SizingConfig:
    """``threshold`` 0.02 trades only when p > 0.52 or p < 0.48; ``target_vol`` 0.002 aims at
    0.2% of capital per bar of volatility per position before caps; ``max_position`` 0.1 caps
    a position at 10% of capital, ``max_gross`` 1.0 those decided together at 100%.
    ``profit_take`` / ``stop_loss`` (volatility units, None: no such exit) and
    ``max_holding_bars`` are the exits. ``capital`` (USD, None: the current equity) sizes on
    a fixed amount, which the vectorized path needs (it cannot compound)."""

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

    def __post_init__(self) -> None:
        if self.max_holding_bars < 1:
            raise ValueError("max_holding_bars must be at least 1")
        for name in ("profit_take", "stop_loss", "capital"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive or None, got {value}")


def bet_size(p: float, threshold: float, max_bet: float) -> float:
    """Signed bet size in [-max_bet, max_bet] from the probability of an up move."""
    if not 0.0 < p < 1.0 or abs(p - 0.5) < threshold:
        return 0.0
    z = (p - 0.5) / math.sqrt(p * (1.0 - p))
    return max(-max_bet, min(max_bet, 2.0 * float(ndtr(z)) - 1.0))


@dataclass
class _Entry:
    side: int
    upper: float
    lower: float
    age: int = 0


@dataclass
class ModelStrategy:
    """Targets from ``signals`` (``symbol``, ``ts``, ``prob``, ``volatility``) and the equity
    the engine passes at each bar."""

    signals: pl.DataFrame
    sizing: SizingConfig = SizingConfig()
    name: str = "model"
    _lookup: dict[tuple[str, datetime], tuple[float, float]] = field(default_factory=dict)
    _entries: dict[str, _Entry] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for r in self.signals.iter_rows(named=True):
            self._lookup[(r["symbol"], r["ts"])] = (r["prob"], r["volatility"])

    def _barriers(self, side: int, close: float, vol: float) -> tuple[float, float]:
        s = self.sizing
        up = s.profit_take if side > 0 else s.stop_loss
        down = s.stop_loss if side > 0 else s.profit_take
        return (
            close * (1.0 + up * vol) if up is not None else math.inf,
            close * (1.0 - down * vol) if down is not None else -math.inf,
        )

    def targets(
        self, ts: datetime, bars: BarBatch, positions: Mapping[str, int], equity: float
    ) -> dict[str, int]:
        s = self.sizing
        capital = equity if s.capital is None else s.capital
        wanted: dict[str, float] = {}
        for symbol, bar in bars.items():
            signal = self._lookup.get((symbol, ts))
            size = 0.0
            if signal is not None and signal[1] and signal[1] > 0:
                size = bet_size(signal[0], s.threshold, s.max_bet)
                if size < 0 and not s.allow_short:
                    size = 0.0
            if size:
                vol = signal[1]  # type: ignore[index]
                notional = size * capital * s.target_vol / vol
                cap = s.max_position * capital
                wanted[symbol] = max(-cap, min(cap, notional)) / bar.close
                side = 1 if size > 0 else -1
                self._entries[symbol] = _Entry(side, *self._barriers(side, bar.close, vol))
            elif positions.get(symbol, 0) and symbol in self._entries:
                entry = self._entries[symbol]
                entry.age += 1
                touched = bar.high >= entry.upper or bar.low <= entry.lower
                if touched or entry.age >= s.max_holding_bars:
                    wanted[symbol] = 0.0
        gross = sum(math.floor(abs(q) * bars[sym].close * 100.0) for sym, q in wanted.items())
        scale = min(1.0, s.max_gross * capital * 100.0 / gross) if gross > 0 else 1.0
        return {sym: int(q * scale) for sym, q in wanted.items()}
