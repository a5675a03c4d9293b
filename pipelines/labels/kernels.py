"""The triple-barrier scan as a numba kernel over symbol-sorted bars (no per-row Python)."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from numba import njit

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

PROFIT_TAKE, STOP_LOSS, VERTICAL = 1, -1, 0


@njit(cache=True)
def barrier_prices(
    entry: float, vol: float, side: float, profit_take: float, stop_loss: float
) -> tuple[float, float]:
    """The upper and lower barrier prices of a bet entered at ``entry`` on ``side`` (+1 long,
    -1 short): the profit-take ``profit_take`` volatility units (``vol``, a return per bar) in
    the bet's favour, the stop-loss ``stop_loss`` against it; NaN distances are no barrier
    (+inf / -inf). The one place the barrier geometry is written: the labels and the strategy's
    exits both call it. Example: ``barrier_prices(100.0, 0.01, 1.0, 2.0, 1.0)`` is (102, 99)."""
    up = profit_take if side > 0.0 else stop_loss
    down = stop_loss if side > 0.0 else profit_take
    upper = entry * (1.0 + up * vol) if not math.isnan(up) else math.inf
    lower = entry * (1.0 - down * vol) if not math.isnan(down) else -math.inf
    return upper, lower


@njit(cache=True)
def barrier_price_arrays(
    entry: F64, vol: F64, side: F64, profit_take: float, stop_loss: float
) -> tuple[F64, F64]:
    """:func:`barrier_prices` over arrays of events."""
    n = entry.shape[0]
    upper = np.empty(n)
    lower = np.empty(n)
    for k in range(n):
        upper[k], lower[k] = barrier_prices(entry[k], vol[k], side[k], profit_take, stop_loss)
    return upper, lower


@njit(cache=True)
def scan_barriers(
    open_: F64,
    high: F64,
    low: F64,
    close: F64,
    events: I64,
    sides: F64,
    upper: F64,
    lower: F64,
    vertical: I64,
) -> tuple[I64, I64, F64]:
    """For each event (bar index ``events[k]``, entry at its close, side +1/-1) find the first
    bar after entry that touches the profit-take or stop-loss price, up to the vertical barrier
    bar ``vertical[k]`` (inclusive). ``upper``/``lower`` are the barrier prices above/below the
    entry. Returns (exit bar index, barrier hit: 1 profit-take, -1 stop-loss, 0 vertical,
    exit price). A bar touching both counts as a stop-loss (the unfavourable order is assumed);
    a bar opening beyond a barrier exits at its open."""
    n = events.shape[0]
    exit_at = np.empty(n, dtype=np.int64)
    hit = np.empty(n, dtype=np.int64)
    price = np.empty(n)
    for k in range(n):
        t0 = events[k]
        side = sides[k]
        up = upper[k]
        dn = lower[k]
        exit_at[k] = vertical[k]
        hit[k] = 0
        price[k] = close[vertical[k]]
        for t in range(t0 + 1, vertical[k] + 1):
            touch_up = high[t] >= up
            touch_dn = low[t] <= dn
            if not (touch_up or touch_dn):
                continue
            # Long: upper is the profit-take. Short: lower is the profit-take.
            stop_touched = touch_dn if side > 0 else touch_up
            if stop_touched:
                hit[k] = -1
                level = dn if side > 0 else up
                gapped = open_[t] < dn if side > 0 else open_[t] > up
            else:
                hit[k] = 1
                level = up if side > 0 else dn
                gapped = open_[t] > up if side > 0 else open_[t] < dn
            price[k] = open_[t] if gapped else level
            exit_at[k] = t
            break
    return exit_at, hit, price
