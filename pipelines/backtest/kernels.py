"""Numba kernels for strategies that decide on a whole bar time at once."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@njit(cache=True)
def ma_cross_step(
    ids: I64,
    close: F64,
    count: I64,
    sums: F64,
    fast: int,
    slow: int,
    shares: int,
    warmup: int,
    target: I64,
) -> None:
    """One bar time of the moving-average crossover: per symbol id, push ``close`` onto the
    ring of the last ``slow + 1`` prefix sums and set ``target`` to ``shares`` where
    ``fast_sum * slow > slow_sum * fast``, 0 where not, -1 before ``warmup`` closes."""
    ring = slow + 1
    for j in range(len(ids)):
        i = ids[j]
        n = count[i] + 1
        count[i] = n
        total = sums[i, (n - 1) % ring] + close[j]
        sums[i, n % ring] = total
        fast_sum = total - sums[i, (n - fast) % ring]
        slow_sum = total - sums[i, (n - slow) % ring]
        if n < warmup:
            target[j] = -1
        elif fast_sum * slow > slow_sum * fast:
            target[j] = shares
        else:
            target[j] = 0
