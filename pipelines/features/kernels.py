"""Path-dependent indicators as numba kernels over symbol-sorted arrays.

Each kernel takes the arrays of all symbols at once (sorted by symbol, then time) and ``starts``,
the index where each symbol begins, and restarts its state at every symbol. No per-row Python.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


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
        prev = 0.0
        for j in range(a, a + n):
            prev += close[j]
        prev /= n
        out[a + n - 1] = prev
        for i in range(a + n, b):
            change = abs(close[i] - close[i - n])
            vol = 0.0
            for j in range(i - n + 1, i + 1):
                vol += abs(close[j] - close[j - 1])
            er = change / vol if vol != 0.0 else 0.0
            sc = (er * (fast_sc - slow_sc) + slow_sc) ** 2
            prev = prev + sc * (close[i] - prev)
            out[i] = prev
    return out


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
        up = high[a + 1] - high[a]
        dn = low[a] - low[a + 1]
        falling = dn > up and dn > 0
        af = af0
        ep = low[a] if falling else high[a]
        s = close[a]
        for i in range(a + 1, b):
            s = s + af * (ep - s)
            if falling:
                reverse = high[i] > s
                if low[i] < ep:
                    ep = low[i]
                    af = min(af + af0, af_max)
                s = max(high[i - 1], s)
            else:
                reverse = low[i] < s
                if high[i] > ep:
                    ep = high[i]
                    af = min(af + af0, af_max)
                s = min(low[i - 1], s)
            if reverse:
                s = ep
                af = af0
                falling = not falling
                ep = low[i] if falling else high[i]
            sar[i] = s
            direction[i] = -1.0 if falling else 1.0
    return sar, direction


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
        lb = np.empty(b - a)
        ub = np.empty(b - a)
        for i in range(a, b):
            mid = (high[i] + low[i]) / 2.0
            lb[i - a] = mid - mult * atr[i]
            ub[i - a] = mid + mult * atr[i]
        d = 1.0
        for i in range(a + 1, b):
            k = i - a
            if close[i] > ub[k - 1]:
                d = 1.0
            elif close[i] < lb[k - 1]:
                d = -1.0
            else:
                if d > 0 and lb[k] < lb[k - 1]:
                    lb[k] = lb[k - 1]
                if d < 0 and ub[k] > ub[k - 1]:
                    ub[k] = ub[k - 1]
            line[i] = lb[k] if d > 0 else ub[k]
            direction[i] = d
    return line, direction


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
                if (x[i] >= x[best]) if highest else (x[i] <= x[best]):
                    best = i
            else:
                best = i
                for j in range(i, i - n - 1, -1):
                    if (x[j] > x[best]) if highest else (x[j] < x[best]):
                        best = j
            out[i] = i - best
    return out


@njit(cache=True, nogil=True)
def mean_abs_deviation(x: F64, starts: I64, n: int) -> F64:
    """Rolling mean absolute deviation around the window mean (CCI's denominator)."""
    out = np.full(x.shape[0], np.nan)
    ends = np.append(starts[1:], x.shape[0])
    for g in range(starts.shape[0]):
        a, b = starts[g], ends[g]
        for i in range(a + n - 1, b):
            m = 0.0
            for j in range(i - n + 1, i + 1):
                m += x[j]
            m /= n
            d = 0.0
            for j in range(i - n + 1, i + 1):
                d += abs(x[j] - m)
            out[i] = d / n
    return out


@njit(cache=True, nogil=True)
def hurst_rs(x: F64, starts: I64, n: int) -> F64:
    """Rolling Hurst exponent of returns ``x`` by rescaled range over sub-windows of n/8, n/4,
    n/2 and n: the slope of log(R/S) on log(size). 0.5 (no memory) where a sub-window is flat
    and R/S is undefined."""
    out = np.full(x.shape[0], np.nan)
    ends = np.append(starts[1:], x.shape[0])
    sizes = np.array([n // 8, n // 4, n // 2, n])
    for g in range(starts.shape[0]):
        a, b = starts[g], ends[g]
        for i in range(a + n - 1, b):
            lx = np.zeros(4)
            ly = np.zeros(4)
            ok = True
            for k in range(4):
                size = sizes[k]
                chunks = n // size
                acc = 0.0
                for c in range(chunks):
                    lo = i - n + 1 + c * size
                    mean = 0.0
                    for j in range(lo, lo + size):
                        mean += x[j]
                    mean /= size
                    cum = 0.0
                    mx = -1e300
                    mn = 1e300
                    var = 0.0
                    for j in range(lo, lo + size):
                        cum += x[j] - mean
                        mx = max(mx, cum)
                        mn = min(mn, cum)
                        var += (x[j] - mean) ** 2
                    sd = np.sqrt(var / size)
                    if sd == 0.0 or mx - mn == 0.0:
                        ok = False
                        break
                    acc += (mx - mn) / sd
                if not ok:
                    break
                lx[k] = np.log(size)
                ly[k] = np.log(acc / chunks)
            if ok:
                mx_ = lx.mean()
                my_ = ly.mean()
                out[i] = ((lx - mx_) * (ly - my_)).sum() / ((lx - mx_) ** 2).sum()
            else:
                out[i] = 0.5
    return out


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
                prev = close[i - 1]
                tr = max(high[i], prev) - min(low[i], prev)
                up = high[i] - high[i - 1]
                down = low[i - 1] - low[i]
                plus = up if (up > down and up > 0) else 0.0
                minus = down if (down > up and down > 0) else 0.0
                tr_s = tr_s + alpha * (tr - tr_s)
                plus_s = plus_s + alpha * (plus - plus_s)
                minus_s = minus_s + alpha * (minus - minus_s)
            atr[i] = tr_s
            dip[i] = 100.0 * plus_s / tr_s if tr_s != 0 else 0.0
            dim[i] = 100.0 * minus_s / tr_s if tr_s != 0 else 0.0
    return atr, dip, dim


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
            out[i] = 50.0 if hh == ll else 100.0 * (close[i] - ll) / (hh - ll)
    return out
