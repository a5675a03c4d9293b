"""numba steps of the streaming engine's own stages: the session columns, the higher-timeframe
buckets and the cross-section. Each mirrors a polars stage of :mod:`pipelines.features.build`
operation for operation (see :mod:`pipelines.features.stream`)."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from numba import njit

from pipelines.features.program import total_eq, total_gt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]
B = npt.NDArray[np.bool_]

THIRD = 1.0 / 3.0  # polars divides by a constant as a multiplication by its reciprocal

# Per-symbol session state columns.
DAY, FIRST_OPEN, CUM_V, CUM_PV, OR_HIGH, OR_LOW, OR_SEEN, LAST_CLOSE, PREV_CLOSE, HAS_PREV = range(
    10
)
SESSION_COLUMNS = 10

# Per-symbol bucket state columns.
OPEN, START, END, BO, BH, BL, BC = range(7)
BUCKET_COLUMNS = 7


@njit(cache=True, nogil=True, error_model="numpy")
def session_step(
    rows: I64,
    o: F64,
    h: F64,
    lo: F64,
    c: F64,
    v: F64,
    day: int,
    in_or: bool,
    after_or: bool,
    st: F64,
    out: F64,
    ok: U8,
) -> None:
    """The per-symbol session columns of one bar time: ``out[:, 0..2]`` (and validity ``ok``)
    receive the opening-range position, the overnight gap and the distance to the session
    VWAP for each row (see ``_session_columns`` in :mod:`pipelines.features.build`)."""
    for r in range(rows.shape[0]):
        s = rows[r]
        x = st[s]
        first = x[DAY] != day
        if first:
            if x[DAY] >= 0:
                x[PREV_CLOSE] = x[LAST_CLOSE]
                x[HAS_PREV] = 1.0
            x[DAY] = day
            x[FIRST_OPEN] = o[r]
            x[OR_SEEN] = 0.0
        tp = (h[r] + lo[r] + c[r]) * THIRD
        pv = tp * v[r]
        if first:
            x[CUM_V] = v[r]
            x[CUM_PV] = pv
        else:
            x[CUM_V] = x[CUM_V] + v[r]
            x[CUM_PV] = x[CUM_PV] + pv
        if in_or:
            if x[OR_SEEN] == 0.0:
                x[OR_HIGH] = h[r]
                x[OR_LOW] = lo[r]
                x[OR_SEEN] = 1.0
            else:
                x[OR_HIGH] = max(x[OR_HIGH], h[r])
                x[OR_LOW] = min(x[OR_LOW], lo[r])
        x[LAST_CLOSE] = c[r]
        if (in_or or after_or) and x[OR_SEEN] != 0.0:
            hi_, lo_ = x[OR_HIGH], x[OR_LOW]
            out[r, 0] = 0.5 if hi_ == lo_ else (c[r] - lo_) / (hi_ - lo_)
            ok[r, 0] = 1
        else:
            ok[r, 0] = 0
        if x[HAS_PREV] != 0.0 and x[PREV_CLOSE] != 0.0:
            out[r, 1] = x[FIRST_OPEN] / x[PREV_CLOSE] - 1.0
            ok[r, 1] = 1
        else:
            ok[r, 1] = 0
        vwap = x[CUM_PV] / x[CUM_V] if x[CUM_V] > 0 else tp
        if vwap != 0:
            out[r, 2] = c[r] / vwap - 1.0
            ok[r, 2] = 1
        else:
            ok[r, 2] = 0


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _close(x: F64, r: int, n: int, closed: I64, closed_ohlc: F64) -> int:
    closed[n] = r
    closed_ohlc[n, 0] = x[BO]
    closed_ohlc[n, 1] = x[BH]
    closed_ohlc[n, 2] = x[BL]
    closed_ohlc[n, 3] = x[BC]
    x[OPEN] = 0.0
    return n + 1


@njit(cache=True, nogil=True, error_model="numpy")
def bucket_step(
    rows: I64,
    o: F64,
    h: F64,
    lo: F64,
    c: F64,
    bar_end: int,
    start: int,
    end: int,
    inside: bool,
    st: F64,
    closed: I64,
    closed_ohlc: F64,
) -> int:
    """Add one bar time to each row's higher-timeframe bucket ``[start, end)`` (when the bar is
    ``inside`` one). Buckets that have closed by ``bar_end`` are written, in the order their
    bars must be evaluated, to ``closed`` (row positions) and ``closed_ohlc``; returns their
    number. A bucket closes when its end is reached, or when a later bucket starts."""
    n = 0
    for r in range(rows.shape[0]):
        x = st[rows[r]]
        if x[OPEN] != 0.0 and not (inside and x[START] == start) and x[END] <= bar_end:
            n = _close(x, r, n, closed, closed_ohlc)
    for r in range(rows.shape[0]):
        if not inside:
            break
        x = st[rows[r]]
        if x[OPEN] != 0.0 and x[START] == start:
            x[BH] = max(x[BH], h[r])
            x[BL] = min(x[BL], lo[r])
            x[BC] = c[r]
        else:
            x[OPEN] = 1.0
            x[START] = start
            x[END] = end
            x[BO] = o[r]
            x[BH] = h[r]
            x[BL] = lo[r]
            x[BC] = c[r]
        if end <= bar_end:
            n = _close(x, r, n, closed, closed_ohlc)
    return n


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _kahan(total: float, comp: float, x: float) -> tuple[float, float]:
    # polars sums a group's values with Kahan's compensation
    y = x - comp
    t = total + y
    return t, (t - total) - y


@njit(cache=True, nogil=True, error_model="numpy")
def cross_section(x: F64, ok: B, rank: F64, rank_ok: B, z: F64, z_ok: B) -> None:
    """Percentile rank (average ranks of ties, 0.5 for a cross-section of one) and z-score
    (0 where the cross-section's standard deviation is zero or undefined) of the valid ``x``,
    which must be in symbol order; as polars' ``rank``, ``mean`` (a Kahan sum) and ``std`` (a
    Welford recursion) over a timestamp."""
    n = 0
    total, comp = 0.0, 0.0
    w, m, dp = 0.0, 0.0, 0.0
    for i in range(x.shape[0]):
        if ok[i]:
            total, comp = _kahan(total, comp, x[i])
            n += 1
            new_weight = w + 1.0
            delta = x[i] - m
            new_mean = m + delta / new_weight
            dp += (x[i] - new_mean) * delta
            w, m = new_weight, new_mean
    mean = total / n if n > 0 else math.nan
    sd = math.nan
    if n > 1:
        var = dp / (w - 1.0)
        sd = math.sqrt(0.0 if var < 0.0 else var)
    for i in range(x.shape[0]):
        rank_ok[i] = z_ok[i] = ok[i]
        if not ok[i]:
            continue
        if n > 1:
            below, ties = 0, 0
            for j in range(x.shape[0]):
                if ok[j]:
                    if total_gt(x[i], x[j]):  # polars' total order on floats
                        below += 1
                    elif total_eq(x[j], x[i]):
                        ties += 1
            average = (2.0 * below + 1.0 + ties) / 2.0
            rank[i] = (average - 1.0) / (n - 1)
        else:
            rank[i] = 0.5
        z[i] = (x[i] - mean) / sd if (n > 1 and sd > 0) else 0.0


@njit(cache=True, nogil=True, error_model="numpy")
def demean(x: F64, ok: B, out: F64, out_ok: B) -> float:
    """``x`` minus the mean of its valid values (polars' ``x - x.mean().over(ts)``); returns
    that mean (NaN when none is valid)."""
    n = 0
    total, comp = 0.0, 0.0
    for i in range(x.shape[0]):
        if ok[i]:
            total, comp = _kahan(total, comp, x[i])
            n += 1
    mean = total / n if n > 0 else math.nan
    for i in range(x.shape[0]):
        out_ok[i] = ok[i] and n > 0
        if out_ok[i]:
            out[i] = x[i] - mean
    return mean
