"""Backtest speed on the regular-session bars of the shared 15-minute set: the moving-average
crossover through the event-driven engine and through the vectorized path (same trades).
Peers (backtrader, vectorbt) are not in the benchmark environment yet."""

from __future__ import annotations

import argparse
import json
import time
from decimal import Decimal
from pathlib import Path

from bench.features import regular_bars
from pipelines.backtest.broker import BrokerConfig, CostModel
from pipelines.backtest.engine import MovingAverageCross, run_backtest
from pipelines.backtest.vectorized import ma_cross_vectorized

COSTS = CostModel(
    slippage_bps=1.0, commission_per_share=Decimal("0.005"), commission_min=Decimal("1")
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", type=Path, required=True)
    args = parser.parse_args()
    bars = regular_bars(args.shared)
    t0 = time.perf_counter()
    event = run_backtest(
        bars,
        MovingAverageCross(10, 30, 100),
        cash=Decimal("100000000"),
        config=BrokerConfig(COSTS, max_leverage=10.0),
    )
    event_s = time.perf_counter() - t0
    ma_cross_vectorized(bars, fast=10, slow=30, shares=100, costs=COSTS, cash=1e8)  # warm-up
    t0 = time.perf_counter()
    fast = ma_cross_vectorized(bars, fast=10, slow=30, shares=100, costs=COSTS, cash=1e8)
    vec_s = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "backtest.bars": bars.height,
                "backtest.event_bars_per_s": round(bars.height / event_s),
                "backtest.vectorized_bars_per_s": round(bars.height / vec_s),
                "backtest.event_trades": len(event.ledger.fills),
                "backtest.vectorized_equals_event": fast.fills.height == len(event.ledger.fills)
                and abs(float(event.ledger.cash) - fast.cash) < 0.01,
            }
        )
    )


if __name__ == "__main__":
    main()
