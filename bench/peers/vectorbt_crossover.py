"""Run in the benchmark environment: the moving-average crossover in vectorbt on the wide
(time x symbol) close matrix, fills at the next bar's open, fixed shares, our slippage (bps) and
a per-share commission. The wide matrices are built before the clock starts (vectorbt's
favourable case); a run on the first 500 times compiles vectorbt's numba kernels first. Prints
the best of REPEATS runs (default 5) in this one process and the fill count as JSON.

Usage: python vectorbt_crossover.py BARS.parquet FAST SLOW SHARES SLIPPAGE_BPS [REPEATS]
"""

import json
import sys
import time
import warnings

import numpy as np
import pandas as pd

warnings.simplefilter("ignore")
import vectorbt as vbt  # noqa: E402
from crossover_args import crossover_args  # noqa: E402  (beside this script)


def run(close, open_, fast, slow, shares, slip_bps):
    fast_ma = vbt.MA.run(close, fast, short_name="fast").ma.to_numpy()
    slow_ma = vbt.MA.run(close, slow, short_name="slow").ma.to_numpy()
    above = fast_ma > slow_ma
    valid = ~np.isnan(slow_ma)
    entries = pd.DataFrame(valid & above, index=close.index, columns=close.columns)
    exits = pd.DataFrame(valid & ~above, index=close.index, columns=close.columns)
    # Decided at the close, filled at the next bar's open.
    return vbt.Portfolio.from_signals(
        close,
        entries.shift(1, fill_value=False),
        exits.shift(1, fill_value=False),
        price=open_,
        size=shares,
        size_type="amount",
        fixed_fees=0.0,
        fees=0.0,
        slippage=slip_bps / 1e4,
        init_cash=1e9,
        cash_sharing=True,
        accumulate=False,
    )


def main():
    repeats = int(sys.argv.pop(6)) if len(sys.argv) == 7 else 5
    path, fast, slow, shares, slip_bps = crossover_args()
    bars = pd.read_parquet(path)
    close = bars.pivot(index="ts", columns="symbol", values="close")
    open_ = bars.pivot(index="ts", columns="symbol", values="open")
    run(close.iloc[:500], open_.iloc[:500], fast, slow, shares, slip_bps)  # numba compile
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        pf = run(close, open_, fast, slow, shares, slip_bps)
        fills = int(pf.orders.count().sum())
        best = min(best, time.perf_counter() - t0)
    print(json.dumps({"seconds": best, "repeats": repeats, "bars": len(bars), "fills": fills}))


if __name__ == "__main__":
    main()
