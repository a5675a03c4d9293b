"""Run in the benchmark environment: the moving-average crossover in backtrader, all symbols in
one Cerebro (as our event engine runs them), fills at the next bar's open, our slippage (bps)
and commission (max(0.005 USD x shares, 1 USD)). Prints the run time and the fill count as JSON.

Usage: python backtrader_crossover.py BARS.parquet FAST SLOW SHARES SLIPPAGE_BPS
"""

import json
import time
import warnings

import pandas as pd

warnings.simplefilter("ignore")
import backtrader as bt  # noqa: E402
from crossover_args import crossover_args  # noqa: E402  (beside this script)


class PerShare(bt.CommInfoBase):
    params = (("stocklike", True), ("commtype", bt.CommInfoBase.COMM_FIXED))

    def _getcommission(self, size, price, pseudoexec):
        return round(max(0.005 * abs(size), 1.0), 2)


def main():
    path, fast, slow, shares, slip_bps = crossover_args()
    bars = pd.read_parquet(path)

    class Cross(bt.Strategy):
        def __init__(self):
            self.fills = 0
            self.means = [
                (bt.ind.SMA(d.close, period=fast), bt.ind.SMA(d.close, period=slow))
                for d in self.datas
            ]

        def notify_order(self, order):
            if order.status == order.Completed:
                self.fills += 1

        def next(self):
            for d, (f, s) in zip(self.datas, self.means, strict=True):
                if len(s) == 0 or len(d) < slow:
                    continue
                want = shares if f[0] > s[0] else 0
                have = self.getposition(d).size
                if want != have:
                    self.order_target_size(data=d, target=want)

    cerebro = bt.Cerebro(stdstats=False)
    for symbol, g in bars.groupby("symbol", sort=True):
        frame = g.set_index("ts")[["open", "high", "low", "close", "volume"]]
        cerebro.adddata(bt.feeds.PandasData(dataname=frame), name=symbol)
    cerebro.addstrategy(Cross)
    cerebro.broker.setcash(1e9)
    cerebro.broker.addcommissioninfo(PerShare())
    cerebro.broker.set_slippage_perc(slip_bps / 1e4, slip_open=True)
    t0 = time.perf_counter()
    strategy = cerebro.run(runonce=True, preload=True)[0]
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "bars": len(bars), "fills": strategy.fills}))


if __name__ == "__main__":
    main()
