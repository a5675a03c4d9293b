"""Run in the benchmark environment: the moving-average crossover in backtesting.py, per
symbol, with our fill convention (next bar's open), our slippage (its ``spread``) and our
commission (max(0.005 USD x shares, 1 USD), to the cent). Prints the closed trades as JSON.

Usage: python backtesting_crossover.py BARS.parquet FAST SLOW SHARES SLIPPAGE_BPS
"""

import json
import warnings

import numpy as np
import pandas as pd
from backtesting import Backtest, Strategy
from crossover_args import crossover_args


def fast_above_slow(fast, slow):
    """1.0 where fast_sum * slow > slow_sum * fast over prefix sums (the arithmetic of our
    engine and vectorized path, so decisions agree bit for bit), else 0.0; NaN in the warm-up."""

    def f(close):
        total = np.cumsum(np.asarray(close, dtype=float))
        lagged = np.concatenate([[0.0], total])  # lagged[i] = sum of the first i closes
        out = np.full(total.shape, np.nan)
        i = np.arange(slow - 1, len(total))
        fast_sum = total[i] - lagged[i + 1 - fast]
        slow_sum = total[i] - lagged[i + 1 - slow]
        out[i] = (fast_sum * slow > slow_sum * fast).astype(float)
        return out

    return f


def main():
    path, fast, slow, shares, slip_bps = crossover_args()
    bars = pd.read_parquet(path)

    class Cross(Strategy):
        def init(self):
            self.up = self.I(fast_above_slow(fast, slow), self.data.Close)

        def next(self):
            want = shares if self.up[-1] > 0 else 0
            have = self.position.size
            if want > have:
                self.buy(size=want - have)
            elif want < have:
                self.position.close()

    def commission(size, price):
        return round(max(0.005 * abs(size), 1.0), 2)

    trades = []
    for symbol, g in bars.groupby("symbol", sort=True):
        data = g.set_index("ts")[["open", "high", "low", "close", "volume"]]
        data.columns = ["Open", "High", "Low", "Close", "Volume"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bt = Backtest(data, Cross, cash=1e9, spread=slip_bps / 1e4, commission=commission)
            stats = bt.run()
        for t in stats["_trades"].itertuples():
            trades.append(
                {
                    "symbol": symbol,
                    "entry": str(t.EntryTime),
                    "exit": str(t.ExitTime),
                    "size": int(t.Size),
                    "pnl": float(t.PnL),
                }
            )
    print(json.dumps({"trades": trades}))


if __name__ == "__main__":
    main()
