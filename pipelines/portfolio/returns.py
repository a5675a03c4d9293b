"""The window of past closes a portfolio method estimates its covariance on, point in time."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


class ReturnsWindow:
    """The last ``lookback`` + 1 closes per symbol id, in bar-time order: a ring buffer the
    decision path pushes each bar's closes into; point in time by construction (it holds only
    closes already seen).

    Each :meth:`push` is one bar time. A symbol id without a bar at that time holds NaN there,
    so :meth:`returns` (simple returns ``close[t] / close[t-1] - 1`` between consecutive bar
    times) drops every row in which any asked-for symbol lacks either close: the rows left are
    the returns common to all of them. Ids are positions in the caller's symbol list (int64,
    >= 0); an id never pushed reads as NaN.

    :meth:`copy` is O(1): copies share one buffer that only grows forward, so the copy and the
    original can both be pushed afterwards without seeing each other's closes (the second to
    push moves to a buffer of its own). A push writes one row (O(number of symbols) numpy, no
    Python loop over symbols) and reallocates only every ``lookback`` + 1 pushes, when new ids
    appear, or after such a split.

    Example (lookback 2, two symbols)::

        w = ReturnsWindow(2, 2)
        w.push(np.array([0, 1]), np.array([100.0, 50.0]))
        w.push(np.array([0]), np.array([101.0]))        # symbol 1 has no bar at this time
        w.push(np.array([0, 1]), np.array([102.0, 51.0]))
        w.returns(np.array([0]))     # [[0.01], [0.0099...]]
        w.returns(np.array([0, 1]))  # empty: neither return of symbol 1 is known
    """

    def __init__(self, lookback: int, n_symbols: int = 0) -> None:
        if isinstance(lookback, bool) or not isinstance(lookback, int) or lookback < 1:
            raise ValueError(
                f"lookback is a number of returns: write an integer >= 1 ({lookback!r})"
            )
        if isinstance(n_symbols, bool) or not isinstance(n_symbols, int) or n_symbols < 0:
            raise ValueError(f"n_symbols must be an integer >= 0 (got {n_symbols!r})")
        self._lookback = lookback
        self._rows = lookback + 1
        self._n = n_symbols
        self._buf: F64 = np.empty((2 * self._rows, n_symbols), dtype=np.float64)
        self._tip = [0]  # rows of the shared buffer written by any window sharing it
        self._end = 0  # this window's closes are _buf[_end - _count : _end, :_n]
        self._count = 0

    @property
    def lookback(self) -> int:
        return self._lookback

    @property
    def n_symbols(self) -> int:
        """How many symbol ids the window knows (one more than the largest pushed or sized)."""
        return self._n

    @property
    def bars(self) -> int:
        """How many bar times of closes it holds (at most ``lookback`` + 1)."""
        return self._count

    def closes(self) -> F64:
        """The closes held, ``[bars, n_symbols]`` oldest first (a read-only view)."""
        view = self._buf[self._end - self._count : self._end, : self._n]
        view.flags.writeable = False
        return view

    def copy(self) -> ReturnsWindow:
        """An independent window with the same closes, in O(1)."""
        other = ReturnsWindow.__new__(ReturnsWindow)
        other.__dict__.update(self.__dict__)
        return other

    def push(self, ids: npt.ArrayLike, close: npt.ArrayLike) -> None:
        """Record one bar time: ``close[j]`` is the close of symbol id ``ids[j]`` (a subset of
        the symbols, each at most once; a new id beyond the known ones grows the window)."""
        idx = np.asarray(ids)
        px = np.asarray(close, dtype=np.float64)
        if idx.ndim != 1 or px.shape != idx.shape:
            raise ValueError(
                f"push takes one close per id, both 1-D: got ids {idx.shape}, close {px.shape}"
            )
        need = self._n
        if idx.size:
            if idx.dtype.kind not in "iu":
                raise ValueError(f"ids must be integer symbol ids (got dtype {idx.dtype})")
            if idx.min() < 0:
                raise ValueError(f"ids must be >= 0 (got {int(idx.min())})")
            bad = ~(px > 0) | ~np.isfinite(px)
            if bad.any():
                j = int(np.argmax(bad))
                raise ValueError(
                    f"close of symbol id {int(idx[j])} is {float(px[j])!r}: a close must be a "
                    "finite price > 0; leave a symbol without a valid bar out of the push instead"
                )
            need = max(need, int(idx.max()) + 1)
        if (
            self._tip[0] != self._end
            or self._end == self._buf.shape[0]
            or need > self._buf.shape[1]
        ):
            self._move(need)
        row = self._buf[self._end]
        row.fill(np.nan)
        row[idx] = px
        self._end += 1
        self._tip[0] = self._end
        self._count = min(self._count + 1, self._rows)
        self._n = need

    def _move(self, need: int) -> None:
        """Onto a buffer of its own: room for ``lookback`` + 1 further pushes and ``need`` ids."""
        cols = self._buf.shape[1]
        if need > cols:
            cols = max(need, 2 * cols)
        buf: F64 = np.empty((2 * self._rows, cols), dtype=np.float64)
        buf[: self._count, : self._n] = self._buf[self._end - self._count : self._end, : self._n]
        buf[: self._count, self._n :] = np.nan
        self._buf, self._tip, self._end = buf, [self._count], self._count

    def _columns(self, ids: npt.ArrayLike) -> F64:
        idx = np.asarray(ids)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise ValueError(f"ids must be a 1-D array of integer symbol ids (got {idx!r})")
        if idx.size and idx.min() < 0:
            raise ValueError(f"ids must be >= 0 (got {int(idx.min())})")
        held = self._buf[self._end - self._count : self._end]
        known = idx < self._n
        if known.all():
            return held[:, idx]
        out = np.full((self._count, idx.size), np.nan)
        out[:, known] = held[:, idx[known]]
        return out

    def returns(self, ids: npt.ArrayLike) -> F64:
        """``[T, k]`` simple returns of symbol ids ``ids`` between consecutive bar times of the
        window, oldest first, rows where any of them lacks a close dropped (T <= lookback)."""
        sub = self._columns(ids)
        if self._count < 2:
            return np.empty((0, sub.shape[1]), dtype=np.float64)
        r: F64 = sub[1:] / sub[:-1] - 1.0
        return r[~np.isnan(r).any(axis=1)]

    def last_closes(self, ids: npt.ArrayLike) -> F64:
        """The latest close held for each of ``ids`` (NaN where the window holds none): the
        close of the last bar time at which the symbol had a bar, which may be earlier than
        the last push."""
        sub = self._columns(ids)
        if self._count == 0:
            return np.full(sub.shape[1], np.nan)
        seen = ~np.isnan(sub)
        last = self._count - 1 - np.argmax(seen[::-1], axis=0)
        out: F64 = np.where(seen.any(axis=0), sub[last, np.arange(sub.shape[1])], np.nan)
        return out

    def to_dict(self) -> dict[str, object]:
        """A JSON-safe value (closes oldest first, ``None`` where a symbol had no bar) that
        :meth:`from_dict` reads back to an equal window."""
        return {
            "lookback": self._lookback,
            "n_symbols": self._n,
            "closes": [
                [None if math.isnan(v) else v for v in row] for row in self.closes().tolist()
            ],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReturnsWindow:
        """The window :meth:`to_dict` wrote."""
        missing = {"lookback", "n_symbols", "closes"} - set(d)
        if missing:
            raise ValueError(f"a returns window needs {sorted(missing)} (got keys {sorted(d)})")
        window = cls(d["lookback"], d["n_symbols"])
        rows = d["closes"]
        if not isinstance(rows, list) or len(rows) > window._rows:
            raise ValueError(
                f"closes must be a list of at most lookback + 1 = {window._rows} rows "
                f"(got {type(rows).__name__} of {len(rows) if isinstance(rows, list) else '?'})"
            )
        if any(not isinstance(r, list) or len(r) != window._n for r in rows):
            raise ValueError(f"every row of closes must list n_symbols = {window._n} values")
        values = np.array(
            [[np.nan if v is None else v for v in r] for r in rows], dtype=np.float64
        ).reshape(len(rows), window._n)
        if not (np.isnan(values) | (np.isfinite(values) & (values > 0))).all():
            raise ValueError("closes must be finite prices > 0 or null (no bar)")
        window._buf[: len(rows), : window._n] = values
        window._end = window._count = window._tip[0] = len(rows)
        return window

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ReturnsWindow):
            return NotImplemented
        return (
            self._lookback == other._lookback
            and self._n == other._n
            and np.array_equal(self.closes(), other.closes(), equal_nan=True)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ReturnsWindow(lookback={self._lookback}, n_symbols={self._n}, bars={self._count})"


def window_at(
    bars: pl.DataFrame, symbols: Sequence[str], ts: datetime, lookback: int
) -> ReturnsWindow:
    """The window the decision path holds after the bar time ``ts``: every bar time of
    ``bars`` (``symbol``, ``ts``, ``close``) at or before ``ts`` pushed in order, symbol ids
    being positions in ``symbols``. Bars after ``ts`` are never read."""
    ids_of = {s: i for i, s in enumerate(symbols)}
    past = bars.filter(pl.col("ts") <= ts).sort("ts")
    unknown = set(past["symbol"].unique().to_list()) - set(ids_of)
    if unknown:
        raise ValueError(f"bars of symbols not in `symbols`: {sorted(unknown)[:5]}")
    ids = past["symbol"].replace_strict(ids_of, return_dtype=pl.Int64).to_numpy()
    close = past["close"].to_numpy()
    stamps = past["ts"].to_physical().to_numpy()
    starts = np.flatnonzero(np.r_[True, stamps[1:] != stamps[:-1]])
    ends = np.r_[starts[1:], len(stamps)]
    window = ReturnsWindow(lookback, len(symbols))
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        window.push(ids[a:b], close[a:b])
    return window
