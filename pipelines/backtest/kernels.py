"""Numba kernels for strategies that decide on a whole bar time at once."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from numba import njit

from pipelines.labels.kernels import barrier_prices

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@njit(cache=True)
def ma_cross_step(
    ids: I64,
    close: F64,
    memory: F64,
    fast: int,
    slow: int,
    shares: int,
    warmup: int,
    target: I64,
) -> None:
    """One bar time of the moving-average crossover: per symbol id, count the close (column 0
    of ``memory``), push it onto the ring of the last ``slow + 1`` prefix sums (columns 1..)
    and set ``target`` to ``shares`` where ``fast_sum * slow > slow_sum * fast``, 0 where not,
    -1 before ``warmup`` closes."""
    ring = slow + 1
    for j in range(len(ids)):
        i = ids[j]
        n = int(memory[i, 0]) + 1
        memory[i, 0] = n
        total = memory[i, 1 + (n - 1) % ring] + close[j]
        memory[i, 1 + n % ring] = total
        fast_sum = total - memory[i, 1 + (n - fast) % ring]
        slow_sum = total - memory[i, 1 + (n - slow) % ring]
        if n < warmup:
            target[j] = -1
        elif fast_sum * slow > slow_sum * fast:
            target[j] = shares
        else:
            target[j] = 0


@njit(cache=True)
def bet_size_value(p: float, p0: float, threshold: float, max_bet: float) -> float:
    """AFML's bet size ``2 * Phi(z) - 1``, ``z = (p - p0) / sqrt(p (1 - p))``, zero inside the
    dead band ``|p - p0| < threshold`` or for a probability outside (0, 1), capped at
    ``max_bet``."""
    if not (0.0 < p < 1.0) or not (0.0 < p0 < 1.0) or abs(p - p0) < threshold:
        return 0.0
    z = (p - p0) / math.sqrt(p * (1.0 - p))
    size = math.erf(z / math.sqrt(2.0))  # 2 * Phi(z) - 1
    return max(-max_bet, min(max_bet, size))


# Columns of the per-symbol state of :func:`model_step`: side (0 flat, +1 long, -1 short), the
# bet's upper and lower barrier, the bars since its entry, its shares, the symbol's last close
# (to value the bets held when the gross cap sizes new ones) and the bet's size |2 Phi(z) - 1|
# (what a portfolio method weighs the bets by).
SIDE, UPPER, LOWER, AGE, SHARES, LAST, BET = 0, 1, 2, 3, 4, 5, 6
STATE_WIDTH = 7


@njit(cache=True)
def model_step(
    ids: I64,
    prob: F64,
    p0: F64,
    vol: F64,
    high: F64,
    low: F64,
    close: F64,
    closing: bool,
    state: F64,
    params: F64,
    capital: float,
    target: F64,
    has: npt.NDArray[np.bool_],
) -> None:
    """One bar time of the model strategy (see :mod:`pipelines.backtest.strategy`): per symbol
    id in ``ids``, close a bet whose barrier was touched, whose vertical barrier came or whose
    session is closing; open one when flat and the probability ``prob`` (NaN: no prediction) is
    far enough from ``p0``. ``target`` (shares, float before the gross cap's scaling and the
    cast) and ``has`` (a decision was made) are written per row. ``params``: threshold,
    max_bet, target_vol, max_position, max_gross, max_holding_bars, allow_short (0/1),
    profit_take and stop_loss (NaN: none)."""
    threshold, max_bet, target_vol = params[0], params[1], params[2]
    max_position, max_gross, max_holding = params[3], params[4], params[5]
    allow_short, profit_take, stop_loss = params[6] > 0.0, params[7], params[8]
    new_gross = 0.0
    entered = np.zeros(len(ids), dtype=np.bool_)
    for j in range(len(ids)):
        i = ids[j]
        has[j] = False
        target[j] = 0.0
        state[i, LAST] = close[j]
        if state[i, SIDE] != 0.0:
            state[i, AGE] += 1.0
            touched = high[j] >= state[i, UPPER] or low[j] <= state[i, LOWER]
            if touched or state[i, AGE] >= max_holding or closing:
                state[i, SIDE] = 0.0
                state[i, SHARES] = 0.0
                has[j] = True
        if state[i, SIDE] != 0.0 or closing or not vol[j] > 0.0 or math.isnan(prob[j]):
            continue
        size = bet_size_value(prob[j], p0[j], threshold, max_bet)
        if size < 0.0 and not allow_short:
            size = 0.0
        if size == 0.0:
            continue
        cap = max_position * capital
        notional = max(-cap, min(cap, size * capital * target_vol / vol[j]))
        target[j] = notional / close[j]
        has[j] = True
        entered[j] = True
        side = 1.0 if size > 0.0 else -1.0
        state[i, SIDE] = side
        state[i, UPPER], state[i, LOWER] = barrier_prices(
            close[j], vol[j], side, profit_take, stop_loss
        )
        state[i, AGE] = 0.0
        state[i, BET] = abs(size)
        new_gross += math.floor(abs(target[j]) * close[j] * 100.0)
    # The gross cap counts the bets still held (at their last close) as well as the new ones,
    # which share what room is left pro rata; in cents. A bet opened on this bar holds no
    # shares yet, so the sum is of the earlier ones only.
    held = 0.0
    for i in range(state.shape[0]):
        if state[i, SIDE] != 0.0:
            held += math.floor(abs(state[i, SHARES]) * state[i, LAST] * 100.0)
    room = max(0.0, max_gross * capital * 100.0 - held)
    scale = min(1.0, room / new_gross) if new_gross > 0.0 else 1.0
    for j in range(len(ids)):
        target[j] = float(int(target[j] * scale))
        if entered[j]:
            i = ids[j]
            state[i, SHARES] = target[j]
            if target[j] == 0.0:  # sized to nothing: no bet is open, a later signal may enter
                state[i, SIDE] = 0.0


@njit(cache=True)
def model_run(
    bounds: I64,
    ids: I64,
    prob: F64,
    p0: F64,
    vol: F64,
    high: F64,
    low: F64,
    close: F64,
    closing: npt.NDArray[np.bool_],
    n_symbols: int,
    params: F64,
    capital: float,
    target: F64,
    has: npt.NDArray[np.bool_],
) -> None:
    """:func:`model_step` over every bar time: rows sorted by time, ``bounds`` the start of
    each time's rows (and the end), ``closing`` one flag per time; fixed ``capital``."""
    state = np.zeros((n_symbols, STATE_WIDTH))
    for k in range(len(bounds) - 1):
        a, b = bounds[k], bounds[k + 1]
        model_step(
            ids[a:b],
            prob[a:b],
            p0[a:b],
            vol[a:b],
            high[a:b],
            low[a:b],
            close[a:b],
            closing[k],
            state,
            params,
            capital,
            target[a:b],
            has[a:b],
        )
