"""Numba kernels of the vectorized path: single passes over bar rows sorted by symbol and time.

A symbol's rows are ``starts[s]:starts[s + 1]``; ``stamps`` are the bars' times as integers
(their physical unit); ``tidx`` numbers the distinct times of all bars in order.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]


@njit(cache=True)
def first_unsorted(starts: I64, stamps: I64) -> int:
    """The first row whose time is not after its symbol's previous row's, or -1."""
    for s in range(len(starts) - 1):
        for j in range(starts[s] + 1, starts[s + 1]):
            if stamps[j] <= stamps[j - 1]:
                return j
    return -1


@njit(cache=True)
def time_index(starts: I64, stamps: I64, times: I64, tidx: I64, first: I64) -> None:
    """``tidx[j]``: the position of ``stamps[j]`` in ``times`` (the sorted distinct times, each
    present); ``first[t]``: a row at time ``t``. One walk along ``times`` per symbol."""
    for s in range(len(starts) - 1):
        lo, hi = starts[s], starts[s + 1]
        if lo == hi:
            continue
        t = np.searchsorted(times, stamps[lo])
        for j in range(lo, hi):
            while times[t] < stamps[j]:
                t += 1
            tidx[j] = t
            first[t] = j


@njit(cache=True)
def ma_cross_targets(
    starts: I64, close: F64, fast: int, slow: int, shares: int, target: I64, has: B
) -> None:
    """The moving-average crossover's target per row: ``shares`` while
    ``fast_sum * slow > slow_sum * fast`` (window sums as differences of the running prefix
    sum, as the engine's :func:`~pipelines.backtest.kernels.ma_cross_step`), 0 where not, none
    before the symbol's ``slow``-th close."""
    total = np.empty(len(close))
    for s in range(len(starts) - 1):
        lo, hi = starts[s], starts[s + 1]
        running = 0.0
        for j in range(lo, hi):
            running = running + close[j]
            total[j] = running
            n = j - lo + 1
            if n < slow:
                has[j] = False
                target[j] = 0
                continue
            fast_sum = running - (total[j - fast] if n > fast else 0.0)
            slow_sum = running - (total[j - slow] if n > slow else 0.0)
            has[j] = True
            target[j] = shares if fast_sum * slow > slow_sum * fast else 0


@njit(cache=True)
def place_targets(
    starts: I64,
    stamps: I64,
    codes: I64,
    at: I64,
    values: I64,
    given: B,
    target: I64,
    has: B,
) -> int:
    """Put each target row (symbol ``codes[i]``, -1 for a symbol without bars; time ``at[i]``)
    on its bar row: ``target`` and ``has`` (a null target is not ``given``). A target without
    a bar is ignored. Returns the first target row on a bar already targeted, or -1."""
    seen = np.zeros(len(stamps), dtype=np.bool_)
    for i in range(len(codes)):
        c = codes[i]
        if c < 0:
            continue
        lo, hi = starts[c], starts[c + 1]
        j = lo + np.searchsorted(stamps[lo:hi], at[i])
        if j == hi or stamps[j] != at[i]:
            continue
        if seen[j]:
            return i
        seen[j] = True
        if given[i]:
            target[j] = values[i]
            has[j] = True
    return -1


@njit(cache=True)
def simulate(
    starts: I64,
    tidx: I64,
    open_: F64,
    close: F64,
    target: I64,
    has: B,
    frac: float,
    micro_per_share: int,
    micro_min: int,
    fills: I64,
    quantity: I64,
    price: F64,
    commission: F64,
    shorts: I64,
    short_held: I64,
    flow: F64,
    d_value: F64,
    split_flips: bool,
) -> tuple[int, int, float]:
    """Positions, fills and per-time flows of targets decided at a bar's close and filled at
    the open of the symbol's next bar (``split_flips``: a target on the other side of zero
    closes the position at that open and opens the other side at the next, as the trading
    path sends it).

    Per fill ``k`` (in row order): its row ``fills[k]``, ``quantity``, ``price`` (the open,
    ``frac`` against the trade) and ``commission`` (USD: ``max(|q| * micro_per_share,
    micro_min)`` micro-dollars rounded half-even to the cent). ``shorts``: the rows a short
    position is held into (they owe borrow), ``short_held`` its shares. Per time: ``flow``
    the cash of the fills (-quantity * price - commission) and ``d_value`` the change in the
    value of the positions at the closes. Returns the fill count, the short-row count and the
    cash the fills paid (sum of quantity * price + commission)."""
    n_fills = 0
    n_shorts = 0
    paid = 0.0
    for s in range(len(starts) - 1):
        held = 0  # the last target decided, from this row's close
        pos = 0  # the position over this row, after its open's fill
        value = 0.0
        for j in range(starts[s], starts[s + 1]):
            before = pos
            pos = 0 if split_flips and held * before < 0 else held
            if before < 0:
                shorts[n_shorts] = j
                short_held[n_shorts] = -before
                n_shorts += 1
            q = pos - before
            t = tidx[j]
            if q != 0:
                sign = 1.0 if q > 0 else -1.0
                p = open_[j] * (1.0 + sign * frac)
                micro = max(abs(q) * micro_per_share, micro_min)
                cents, rest = micro // 10_000, micro % 10_000
                if rest > 5_000 or (rest == 5_000 and cents % 2 == 1):
                    cents += 1
                c = cents / 100.0
                fills[n_fills] = j
                quantity[n_fills] = q
                price[n_fills] = p
                commission[n_fills] = c
                n_fills += 1
                cost = q * p
                paid += cost + c
                flow[t] -= cost + c
            now = pos * close[j]
            d_value[t] += now - value
            value = now
            if has[j]:
                held = target[j]
    return n_fills, n_shorts, paid
