"""Run in the benchmark environment: the common indicator subset with TA-Lib, per symbol.

Usage: python talib_features.py BARS.parquet REPEATS  -> prints {"talib_s": best seconds}
"""

import json
import sys
import time

import numpy as np
import polars as pl
import talib


def compute(groups: list[dict[str, np.ndarray]]) -> int:
    n = 0
    for g in groups:
        h, lo, c, v = g["high"], g["low"], g["close"], g["volume"]
        out = [
            talib.SMA(c, 20),
            talib.EMA(c, 20),
            talib.WMA(c, 20),
            talib.RSI(c, 14),
            *talib.MACD(c, 12, 26, 9),
            talib.ATR(h, lo, c, 14),
            talib.NATR(h, lo, c, 14),
            *talib.BBANDS(c, 20, 2, 2),
            *talib.STOCH(h, lo, c, 14, 3, 0, 3, 0),
            talib.WILLR(h, lo, c, 14),
            talib.CCI(h, lo, c, 20),
            talib.ADX(h, lo, c, 14),
            talib.PLUS_DI(h, lo, c, 14),
            talib.MINUS_DI(h, lo, c, 14),
            *talib.AROON(h, lo, 25),
            talib.OBV(c, v),
            talib.MFI(h, lo, c, v, 14),
            talib.ROC(c, 10),
        ]
        n += len(out)
    return n


def main() -> None:
    path, repeats = sys.argv[1], int(sys.argv[2])
    bars = pl.read_parquet(path).sort("symbol", "ts")
    groups = [
        {k: g[k].to_numpy().astype(np.float64) for k in ("open", "high", "low", "close", "volume")}
        for _, g in bars.group_by("symbol", maintain_order=True)
    ]
    compute(groups)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        compute(groups)
        best = min(best, time.perf_counter() - t0)
    print(json.dumps({"talib_s": best, "talib_version": talib.__version__}))


if __name__ == "__main__":
    main()
