"""The bars of one bar time as the decision path sees them: a mapping symbol -> :class:`Bar` and
the same data as numpy columns. The backtest engine builds them from stored bars, the live
session from the stream; neither the strategy nor the risk layer knows which."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import NamedTuple

import numpy as np
import numpy.typing as npt


class Bar(NamedTuple):
    """One bar of one symbol (prices in USD, ``ts`` its end, UTC)."""

    symbol: str
    ts: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float
    volatility: float = 0.0  # per-bar return volatility, for the impact model


class BarBatch(Mapping[str, Bar]):
    """The bars that closed at one time ``ts``, at most one per symbol: a read-only mapping
    symbol -> :class:`Bar`, and the same data as numpy columns (``ids`` index the broker's
    sorted symbols) for strategies that work on arrays."""

    __slots__ = (
        "_index",
        "close",
        "high",
        "ids",
        "low",
        "open",
        "symbols",
        "ts",
        "volatility",
        "volume",
    )

    def __init__(
        self,
        ts: datetime,
        symbols: Sequence[str],
        ids: npt.NDArray[np.int64],
        open: npt.NDArray[np.float64],
        high: npt.NDArray[np.float64],
        low: npt.NDArray[np.float64],
        close: npt.NDArray[np.float64],
        volume: npt.NDArray[np.float64],
        volatility: npt.NDArray[np.float64],
    ) -> None:
        self.ts, self.symbols, self.ids = ts, symbols, ids
        self.open, self.high, self.low, self.close = open, high, low, close
        self.volume, self.volatility = volume, volatility
        self._index: dict[str, int] | None = None

    @classmethod
    def of(cls, bars: Sequence[Bar], ids: Mapping[str, int]) -> BarBatch:
        """A batch of ``bars`` (same ``ts``, distinct symbols)."""
        if len({b.ts for b in bars}) != 1 or len({b.symbol for b in bars}) != len(bars):
            raise ValueError("a batch holds bars of one time, one per symbol")
        cols = [np.array([b[k] for b in bars], dtype=np.float64) for k in range(2, 8)]
        sym = [b.symbol for b in bars]
        return cls(bars[0].ts, sym, np.array([ids[x] for x in sym], dtype=np.int64), *cols)

    def _bar(self, i: int) -> Bar:
        return Bar(
            self.symbols[i],
            self.ts,
            float(self.open[i]),
            float(self.high[i]),
            float(self.low[i]),
            float(self.close[i]),
            float(self.volume[i]),
            float(self.volatility[i]),
        )

    def index(self, symbol: str) -> int | None:
        """Position of ``symbol``'s bar in the columns, None if it has none at ``ts``."""
        if self._index is None:
            self._index = {x: i for i, x in enumerate(self.symbols)}
        return self._index.get(symbol)

    def __getitem__(self, symbol: str) -> Bar:
        i = self.index(symbol)
        if i is None:
            raise KeyError(symbol)
        return self._bar(i)

    def __iter__(self) -> Iterator[str]:
        return iter(self.symbols)

    def __len__(self) -> int:
        return len(self.symbols)

    def items(self) -> Iterator[tuple[str, Bar]]:  # type: ignore[override]
        return ((s, self._bar(i)) for i, s in enumerate(self.symbols))
