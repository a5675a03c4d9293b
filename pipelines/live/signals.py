"""Bars of one time -> the model's signals: features (the stream), prediction, p0, volatility.

The same transforms as the backtest's: the features are :class:`~pipelines.features.stream.
FeatureStream`'s (equal to the batch matrix), the probability is the champion's calibrated one
(:func:`pipelines.models.inference.predict_bar`), ``p0`` is the base rate the model knew (or
0.5, as :func:`pipelines.backtest.strategy.signal_columns` says), and the volatility is the
labels' barrier volatility of each symbol's bars up to this one
(:func:`pipelines.backtest.model_backtest.signal_volatility` on the bars seen so far).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from pipelines.backtest.model_backtest import signal_volatility
from pipelines.backtest.strategy import SizingConfig
from pipelines.execution.path import Signals
from pipelines.features.stream import FeatureStream
from pipelines.labels.triple_barrier import BarrierConfig
from pipelines.models.inference import predict_bar
from pipelines.models.walk_forward import FoldFit

F64 = npt.NDArray[np.float64]
_BAR_COLUMNS = ("symbol", "ts", "open", "high", "low", "close", "volume")


@dataclass(frozen=True)
class BarSignals:
    """The signals of one bar time, row-aligned with its bars (sorted by symbol), the SHA-256
    of the feature rows the model read, and the predictions as a JSON-ready mapping."""

    signals: Signals
    features_sha256: str
    predictions: dict[str, Any]


class ModelSignals:
    """The champion ``fit`` on the stream's features of ``symbols``; ``history`` (earlier bars
    of the strategy's timeframe, the batch build's) warms the features and the volatility."""

    def __init__(
        self,
        fit: FoldFit,
        stream: FeatureStream,
        *,
        sizing: SizingConfig,
        barriers: BarrierConfig,
        keep_bars: int = 2_000,
    ) -> None:
        self.fit = fit
        self.stream = stream
        self.sizing = sizing
        self.barriers = barriers
        self.keep_bars = keep_bars
        self._bars = pl.DataFrame(schema={c: _dtype(c) for c in _BAR_COLUMNS})
        # The labels' ATR volatility is also a feature the stream computes (the same
        # definition, equal values): read it there rather than recompute it from the bars.
        name = f"volatility_atr_{barriers.volatility_window}"
        self._vol_feature = (
            name if barriers.volatility == "atr" and name in stream.registry.names else None
        )

    def warm(self, history: pl.DataFrame) -> None:
        """Feed earlier bars (any number of times) to the features and the volatility."""
        if history.height:
            self.stream.warm(history)
            if self._vol_feature is None:
                self._bars = pl.concat([self._bars, _bars(history)]).sort("symbol", "ts")

    def on_bars(self, bars: pl.DataFrame) -> BarSignals:
        """The signals of ``bars`` (one time, one row per symbol, sorted by symbol)."""
        rows = self.stream.update(bars)
        frame = rows.frame()
        if tuple(frame["symbol"]) != tuple(bars["symbol"]):
            raise ValueError("the bars of one time must be sorted by symbol")
        prob = predict_bar(
            self.fit.model,
            frame,
            transform=self.fit.transform,
            calibrator=self.fit.calibrator,
        )
        if self._vol_feature is not None:
            vol = rows.matrix([self._vol_feature])[:, 0].copy()
        else:
            self._bars = pl.concat([self._bars, _bars(bars)])
            vol = self._volatility(bars)
        p0 = np.full(len(prob), 0.5 if self.sizing.reference == "half" else self.fit.base_rate)
        digest = hashlib.sha256(np.ascontiguousarray(rows.values).tobytes())
        digest.update(np.ascontiguousarray(rows.valid).tobytes())
        predictions = {
            s: {"prob": float(p), "p0": float(b), "volatility": float(v)}
            for s, p, b, v in zip(rows.symbols, prob, p0, vol, strict=True)
        }
        return BarSignals(
            Signals(prob.astype(np.float64), p0, vol), digest.hexdigest(), predictions
        )

    def _volatility(self, bars: pl.DataFrame) -> F64:
        symbols = bars["symbol"].to_list()
        ts = bars["ts"][0]
        # Keep a bounded tail per symbol: the barrier volatility's recursion (ATR) is seeded
        # by the first bar kept, so the tail is long enough for its weight to be negligible.
        if self._bars.height > 2 * self.keep_bars * len(self.stream.symbols):
            self._bars = self._bars.group_by("symbol", maintain_order=True).tail(self.keep_bars)
        recent = self._bars.filter(pl.col("symbol").is_in(symbols))
        vol = signal_volatility(recent, self.barriers).filter(pl.col("ts") == ts)
        by_symbol = dict(zip(vol["symbol"].to_list(), vol["volatility"].to_list(), strict=True))
        return np.array(
            [np.nan if by_symbol.get(s) is None else by_symbol[s] for s in symbols],
            dtype=np.float64,
        )


def _dtype(column: str) -> pl.DataType:
    if column == "symbol":
        return pl.String()
    if column == "ts":
        return pl.Datetime("us", "UTC")
    return pl.Float64()


def _bars(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select([pl.col(c).cast(_dtype(c)) for c in _BAR_COLUMNS])
