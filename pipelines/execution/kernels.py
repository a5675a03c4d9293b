"""The numeric bookkeeping of one decision, as one numba pass (the hot path of a backtest)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

ENTERED, SMALL, MISMATCH = 1, 2, 4


@njit(cache=True)
def settle(
    ids: I64,
    target: F64,
    has: npt.NDArray[np.bool_],
    intended: I64,
    held: I64,
    close: F64,
    min_value: float,
    flags: npt.NDArray[np.int8],
) -> tuple[int, int, int, int]:
    """Per row j of a bar (symbol id ``ids[j]``): where the strategy decided (``has``), the
    new intended size is ``target`` truncated to whole shares, unless it opens a bet (from 0)
    worth less than ``min_value`` USD at ``close`` (flagged SMALL, intended left unchanged);
    a new bet is flagged ENTERED; a row whose intended size differs from ``held`` (position
    plus working orders) is flagged MISMATCH. Returns the counts of decided, entered, small
    and mismatched rows."""
    n_has = n_entered = n_small = n_mismatch = 0
    for j in range(len(ids)):
        i = ids[j]
        f = 0
        if has[j]:
            n_has += 1
            size = np.int64(target[j])
            if intended[i] == 0 and size != 0:
                if min_value > 0.0 and abs(size * close[j]) < min_value:
                    f |= SMALL
                    n_small += 1
                else:
                    f |= ENTERED
                    n_entered += 1
                    intended[i] = size
            else:
                intended[i] = size
        if intended[i] != held[j]:
            f |= MISMATCH
            n_mismatch += 1
        flags[j] = f
    return n_has, n_entered, n_small, n_mismatch
