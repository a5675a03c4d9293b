"""Path-dependent indicators as numba kernels over symbol-sorted arrays.

Each kernel takes the arrays of all symbols at once (sorted by symbol, then time) and ``starts``,
the index where each symbol begins, and restarts its state at every symbol. No per-row Python.

The arithmetic of each step lives in a small inlined function (``*_step``, ``*_window``) that
the streaming engine (:mod:`pipelines.features.program`) calls too, so the batch matrix and the
live path compute these indicators with the same float operations in the same order.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@njit(cache=True, nogil=True, inline="always")
def window_mean(x: F64, lo: int, n: int) -> float:
    """The mean of ``x[lo : lo + n]``, summed in order (KAMA's seed, CCI's and Hurst's means)."""
    m = 0.0
    for j in range(lo, lo + n):
        m += x[j]
    m /= n
    return m


@njit(cache=True, nogil=True, inline="always")
def kama_step(
    prev: float, close: F64, i: int, n: int, fast_sc: float, slow_sc: float, wrap: int
) -> float:
    """KAMA at ``close[i]`` from ``prev``; ``close`` holds at least the ``n + 1`` closes ending
    at ``i`` (indices taken modulo ``wrap`` when it is positive: a ring buffer)."""
    now = close[i % wrap] if wrap > 0 else close[i]
    old = close[(i - n) % wrap] if wrap > 0 else close[i - n]
    change = abs(now - old)
    vol = 0.0
    for j in range(i - n + 1, i + 1):
        if wrap > 0:
            vol += abs(close[j % wrap] - close[(j - 1) % wrap])
        else:
            vol += abs(close[j] - close[j - 1])
    er = change / vol if vol != 0.0 else 0.0
    sc = (er * (fast_sc - slow_sc) + slow_sc) ** 2
    return float(prev + sc * (now - prev))


@njit(cache=True, nogil=True)
def kama(close: F64, starts: I64, n: int, fast: int, slow: int) -> F64:
    """Kaufman's adaptive moving average, seeded (as pandas-ta does) with the mean of a symbol's
    first ``n`` closes at bar ``n - 1``; NaN before."""
    out = np.full(close.shape[0], np.nan)
    fast_sc = 2.0 / (fast + 1.0)
    slow_sc = 2.0 / (slow + 1.0)
    ends = np.append(starts[1:], close.shape[0])
    for g in range(starts.shape[0]):
        a, b = starts[g], ends[g]
        if b - a < n:
            continue
        prev = window_mean(close, a, n)
        out[a + n - 1] = prev
        for i in range(a + n, b):
            prev = kama_step(prev, close, i, n, fast_sc, slow_sc, 0)
            out[i] = prev
    return out


@njit(cache=True, nogil=True, inline="always")
def psar_start(
    high0: float, low0: float, high1: float, low1: float, close0: float, af0: float
) -> tuple[float, float, float, bool]:
    """The parabolic SAR's state before its first step: (sar, af, extreme point, falling)."""
    up = high1 - high0
    dn = low0 - low1
    falling = dn > up and dn > 0
    ep = low0 if falling else high0
    return close0, af0, ep, falling


@njit(cache=True, nogil=True, inline="always")
def psar_step(
    s: float,
    af: float,
    ep: float,
    falling: bool,
    high: float,
    low: float,
    prev_high: float,
    prev_low: float,
    af0: float,
    af_max: float,
) -> tuple[float, float, float, bool]:
    """One parabolic SAR step on a bar, from the previous state and the previous bar."""
    s = s + af * (ep - s)
    if falling:
        reverse = high > s
        if low < ep:
            ep = low
            af = min(af + af0, af_max)
        s = max(prev_high, s)
    else:
        reverse = low < s
        if high > ep:
            ep = high
            af = min(af + af0, af_max)
        s = min(prev_low, s)
    if reverse:
        s = ep
        af = af0
        falling = not falling
        ep = low if falling else high
    return s, af, ep, falling


@njit(cache=True, nogil=True)
def psar(
    high: F64,
    low: F64,
    close: F64,
    starts: I64,
    af0: float,
    af_max: float,
) -> tuple[F64, F64]:
    """Parabolic SAR as pandas-ta computes it (our reference): (sar, direction +1 long / -1
    short). It starts from the first close, takes the first direction from the first two bars'
    directional movement, clamps the SAR to the previous bar's low (high) only, and on a reversal
    jumps to the extreme point including the reversing bar."""
    n_rows = high.shape[0]
    sar = np.full(n_rows, np.nan)
    direction = np.full(n_rows, np.nan)
    ends = np.append(starts[1:], n_rows)
    for g in range(starts.shape[0]):
        a, b = starts[g], ends[g]
        if b - a < 2:
            continue
        s, af, ep, falling = psar_start(high[a], low[a], high[a + 1], low[a + 1], close[a], af0)
        for i in range(a + 1, b):
            s, af, ep, falling = psar_step(
                s, af, ep, falling, high[i], low[i], high[i - 1], low[i - 1], af0, af_max
            )
            sar[i] = s
            direction[i] = -1.0 if falling else 1.0
    return sar, direction


@njit(cache=True, nogil=True, inline="always")
def supertrend_bands(high: float, low: float, atr: float, mult: float) -> tuple[float, float]:
    """SuperTrend's lower and upper band of one bar, before ratcheting."""
    mid = (high + low) / 2.0
    return mid - mult * atr, mid + mult * atr


@njit(cache=True, nogil=True, inline="always")
def supertrend_step(
    d: float, close: float, lb: float, ub: float, prev_lb: float, prev_ub: float
) -> tuple[float, float, float]:
    """One SuperTrend step: (direction, lower band, upper band) after the bar's ratchet."""
    if close > prev_ub:
        d = 1.0
    elif close < prev_lb:
        d = -1.0
    else:
        if d > 0 and lb < prev_lb:
            lb = prev_lb
        if d < 0 and ub > prev_ub:
            ub = prev_ub
    return d, lb, ub


@njit(cache=True, nogil=True)
def supertrend(
    high: F64,
    low: F64,
    close: F64,
    atr: F64,
    starts: I64,
    mult: float,
) -> tuple[F64, F64]:
    """SuperTrend line and direction (+1 up, -1 down) as pandas-ta computes it: the direction
    flips when the close crosses the previous bar's opposite band; while it holds, the band on
    its side only ratchets towards the price."""
    n_rows = close.shape[0]
    line = np.full(n_rows, np.nan)
    direction = np.full(n_rows, np.nan)
    ends = np.append(starts[1:], n_rows)
    for g in range(starts.shape[0]):
        a, b = starts[g], ends[g]
        if b - a < 1:
            continue
        prev_lb, prev_ub = supertrend_bands(high[a], low[a], atr[a], mult)
        d = 1.0
        for i in range(a + 1, b):
            lb, ub = supertrend_bands(high[i], low[i], atr[i], mult)
            d, lb, ub = supertrend_step(d, close[i], lb, ub, prev_lb, prev_ub)
            line[i] = lb if d > 0 else ub
            direction[i] = d
            prev_lb, prev_ub = lb, ub
    return line, direction


@njit(cache=True, nogil=True, inline="always")
def extreme_is_newer(x: float, best: float, highest: bool) -> bool:
    return (x >= best) if highest else (x <= best)


@njit(cache=True, nogil=True, inline="always")
def extreme_is_better(x: float, best: float, highest: bool) -> bool:
    return (x > best) if highest else (x < best)


@njit(cache=True, nogil=True)
def bars_since_extreme(x: F64, starts: I64, n: int, highest: bool) -> F64:
    """Bars since the highest (lowest) value within the last ``n + 1`` bars (Aroon's input);
    the most recent extreme wins ties, as in TA-Lib and pandas-ta. The previous extreme is kept
    while it stays in the window, so the window is rescanned only when it drops out."""
    out = np.full(x.shape[0], np.nan)
    ends = np.append(starts[1:], x.shape[0])
    for g in range(starts.shape[0]):
        a, b = starts[g], ends[g]
        best = -1
        for i in range(a + n, b):
            if best >= i - n:
                if extreme_is_newer(x[i], x[best], highest):
                    best = i
            else:
                best = i
                for j in range(i, i - n - 1, -1):
                    if extreme_is_better(x[j], x[best], highest):
                        best = j
            out[i] = i - best
    return out


@njit(cache=True, nogil=True, inline="always")
def mean_abs_deviation_window(x: F64, lo: int, n: int) -> float:
    """Mean absolute deviation of ``x[lo : lo + n]`` around its mean."""
    m = window_mean(x, lo, n)
    d = 0.0
    for j in range(lo, lo + n):
        d += abs(x[j] - m)
    return d / n


@njit(cache=True, nogil=True)
def mean_abs_deviation(x: F64, starts: I64, n: int) -> F64:
    """Rolling mean absolute deviation around the window mean (CCI's denominator)."""
    out = np.full(x.shape[0], np.nan)
    ends = np.append(starts[1:], x.shape[0])
    for g in range(starts.shape[0]):
        a, b = starts[g], ends[g]
        for i in range(a + n - 1, b):
            out[i] = mean_abs_deviation_window(x, i - n + 1, n)
    return out


@njit(cache=True, nogil=True, inline="always")
def hurst_window(x: F64, lo: int, n: int) -> float:
    """Hurst exponent by rescaled range of ``x[lo : lo + n]`` (see :func:`hurst_rs`)."""
    sizes = np.array([n // 8, n // 4, n // 2, n])
    lx = np.zeros(4)
    ly = np.zeros(4)
    for k in range(4):
        size = sizes[k]
        chunks = n // size
        acc = 0.0
        for c in range(chunks):
            start = lo + c * size
            mean = window_mean(x, start, size)
            cum = 0.0
            mx = -1e300
            mn = 1e300
            var = 0.0
            for j in range(start, start + size):
                cum += x[j] - mean
                mx = max(mx, cum)
                mn = min(mn, cum)
                var += (x[j] - mean) ** 2
            sd = np.sqrt(var / size)
            if sd == 0.0 or mx - mn == 0.0:
                return 0.5
            acc += (mx - mn) / sd
        lx[k] = np.log(size)
        ly[k] = np.log(acc / chunks)
    mx_ = lx.mean()
    my_ = ly.mean()
    return float(((lx - mx_) * (ly - my_)).sum() / ((lx - mx_) ** 2).sum())


@njit(cache=True, nogil=True)
def hurst_rs(x: F64, starts: I64, n: int) -> F64:
    """Rolling Hurst exponent of returns ``x`` by rescaled range over sub-windows of n/8, n/4,
    n/2 and n: the slope of log(R/S) on log(size). 0.5 (no memory) where a sub-window is flat
    and R/S is undefined."""
    out = np.full(x.shape[0], np.nan)
    ends = np.append(starts[1:], x.shape[0])
    for g in range(starts.shape[0]):
        a, b = starts[g], ends[g]
        for i in range(a + n - 1, b):
            out[i] = hurst_window(x, i - n + 1, n)
    return out


@njit(cache=True, nogil=True, inline="always")
def wilder_step(
    tr_s: float,
    plus_s: float,
    minus_s: float,
    high: float,
    low: float,
    prev_high: float,
    prev_low: float,
    prev_close: float,
    alpha: float,
) -> tuple[float, float, float]:
    """One step of Wilder's smoothing of the true range and the directional movements."""
    tr = max(high, prev_close) - min(low, prev_close)
    up = high - prev_high
    down = prev_low - low
    plus = up if (up > down and up > 0) else 0.0
    minus = down if (down > up and down > 0) else 0.0
    tr_s = tr_s + alpha * (tr - tr_s)
    plus_s = plus_s + alpha * (plus - plus_s)
    minus_s = minus_s + alpha * (minus - minus_s)
    return tr_s, plus_s, minus_s


@njit(cache=True, nogil=True, inline="always")
def directional_index(smoothed_dm: float, tr_s: float) -> float:
    return 100.0 * smoothed_dm / tr_s if tr_s != 0 else 0.0


@njit(cache=True, nogil=True)
def wilder_directional(
    high: F64, low: F64, close: F64, starts: I64, n: int
) -> tuple[F64, F64, F64]:
    """ATR(n) and +DI(n) / -DI(n) in one pass (Wilder's smoothing, alpha = 1/n, seeded at a
    symbol's first bar), with the same float operations as the polars definitions
    (``atr``, ``dm_plus``, ``dm_minus`` in :mod:`pipelines.features.library`): the results
    are equal to the last bit."""
    size = close.shape[0]
    atr, dip, dim = np.empty(size), np.empty(size), np.empty(size)
    alpha = 1.0 / n
    ends = np.append(starts[1:], size)
    for g in range(starts.shape[0]):
        a, b = starts[g], ends[g]
        tr_s = high[a] - low[a]
        plus_s = 0.0
        minus_s = 0.0
        for i in range(a, b):
            if i > a:
                tr_s, plus_s, minus_s = wilder_step(
                    tr_s,
                    plus_s,
                    minus_s,
                    high[i],
                    low[i],
                    high[i - 1],
                    low[i - 1],
                    close[i - 1],
                    alpha,
                )
            atr[i] = tr_s
            dip[i] = directional_index(plus_s, tr_s)
            dim[i] = directional_index(minus_s, tr_s)
    return atr, dip, dim


@njit(cache=True, nogil=True, inline="always")
def stochastic_value(close: float, hh: float, ll: float) -> float:
    return 50.0 if hh == ll else 100.0 * (close - ll) / (hh - ll)


@njit(cache=True, nogil=True)
def stochastic_k(high: F64, low: F64, close: F64, starts: I64, n: int) -> F64:
    """Fast %K(n): 100 (close - lowest low) / (highest high - lowest low) over n bars, 50 on a
    flat range, NaN in the first n - 1 bars of a symbol."""
    out = np.full(close.shape[0], np.nan)
    ends = np.append(starts[1:], close.shape[0])
    for g in range(starts.shape[0]):
        a, b = starts[g], ends[g]
        for i in range(a + n - 1, b):
            hh = high[i]
            ll = low[i]
            for j in range(i - n + 1, i):
                hh = max(hh, high[j])
                ll = min(ll, low[j])
            out[i] = stochastic_value(close[i], hh, ll)
    return out
