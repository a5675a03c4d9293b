"""Backtest speed on the regular-session bars of the shared 15-minute set (39 symbols): the
moving-average crossover (10/30, 100 shares, 1 bp slippage, max(0.005 USD x shares, 1 USD))
through our event-driven engine and our vectorized path, and through backtrader (event-driven)
and vectorbt (vectorized) in the benchmark environment, in the same run; and the model strategy
through both of our paths (same trades and cash?).

Our vectorized path and vectorbt are each timed as the best of ``REPEATS`` runs in one process,
after a warm-up run that compiles (or loads) their numba kernels, which no timing includes;
``backtest.ratio_vs_vectorbt`` is ours over vectorbt's (below 1: ours is faster)."""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import numpy as np
import polars as pl

from bench.features import best_of, regular_bars
from pipelines.backtest.broker import BrokerConfig, CostModel
from pipelines.backtest.engine import BacktestResult, MovingAverageCross, run_backtest
from pipelines.backtest.model_backtest import (
    run_model_strategy,
    signal_volatility,
    sizing_with_label_exits,
)
from pipelines.backtest.strategy import SizingConfig
from pipelines.backtest.vectorized import (
    VectorizedResult,
    ma_cross_vectorized,
    model_targets,
    simulate_targets,
)
from pipelines.execution.path import PathConfig
from pipelines.labels.triple_barrier import BarrierConfig

FAST, SLOW, SHARES, SLIP = 10, 30, 100, 1.0
COSTS = CostModel(
    slippage_bps=SLIP, commission_per_share=Decimal("0.005"), commission_min=Decimal("1")
)
PEERS = Path(__file__).parent / "peers"
REPEATS = 5


def unlimited(strategy: str) -> PathConfig:
    """The trading path with no limit and no volume check (the set has VIX, which trades no
    volume): the vectorized path's premise, that no order is refused or capped."""
    path = PathConfig.without_limits(strategy)
    return replace(path, risk=replace(path.risk, min_bar_volume=0.0))


def risk_on(strategy: str) -> PathConfig:
    """The trading path with every pre-trade check and limit of the default configuration on
    (none binds 100-share orders on a 1e8 USD account), but the volume check, as the peers
    trade VIX (no volume) too."""
    path = PathConfig(strategy=strategy)
    return replace(path, risk=replace(path.risk, min_bar_volume=0.0))


def _peer(python: Path, script: str, bars: Path, *extra: str) -> dict[str, float]:
    proc = subprocess.run(
        [
            str(python),
            str(PEERS / script),
            str(bars),
            str(FAST),
            str(SLOW),
            str(SHARES),
            str(SLIP),
            *extra,
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def same_fills(event: BacktestResult, fast: VectorizedResult) -> bool:
    """Nothing refused, the same fills (symbol, time, shares) and the same cash to the cent."""
    ours = pl.DataFrame(
        [(f.symbol, f.ts, f.quantity) for f in event.ledger.fills],
        schema=["symbol", "ts", "quantity"],
        orient="row",
    ).sort("ts", "symbol")
    return (
        not event.ledger.events
        and ours.equals(fast.fills.select("symbol", "ts", "quantity"))
        and abs(float(event.ledger.cash) - fast.cash) < 0.01
    )


def model_paths_agree(bars: pl.DataFrame) -> dict[str, object]:
    """The model strategy on seeded probabilities (a third of the bars, against a base rate of
    0.5): event == vectorized?"""
    barriers = BarrierConfig()
    vol = signal_volatility(bars, barriers)
    rng = np.random.default_rng(5)
    pick = rng.random(vol.height) < 0.33
    signals = vol.filter(pl.Series(pick)).with_columns(
        prob=pl.Series(rng.uniform(0.3, 0.7, int(pick.sum()))), base_rate=pl.lit(0.5)
    )
    # 39 symbols at up to 1% each against a 20% gross cap: the cap binds, sharing the room the
    # bets held leave among the new ones, on both paths.
    sizing = sizing_with_label_exits(
        SizingConfig(capital=1e7, max_position=0.01, max_gross=0.2), barriers
    )
    costs = CostModel(
        slippage_bps=1.0,
        commission_per_share=Decimal("0.005"),
        commission_min=Decimal("1"),
        borrow_bps=30.0,
    )
    t0 = time.perf_counter()
    event = run_model_strategy(
        bars,
        signals,
        sizing,
        cash=Decimal(10_000_000),
        config=BrokerConfig(costs, max_leverage=4.0),
        path=unlimited("model"),
    )
    event_s = time.perf_counter() - t0

    def vectorized() -> VectorizedResult:
        return simulate_targets(bars, model_targets(bars, signals, sizing), costs=costs, cash=1e7)

    fast = vectorized()
    vec_s = best_of(vectorized, 2)
    return {
        "backtest.model_fills": len(event.ledger.fills),
        "backtest.model_event_bars_per_s": round(bars.height / event_s),
        "backtest.model_vectorized_bars_per_s": round(bars.height / vec_s),
        "backtest.model_vectorized_equals_event": same_fills(event, fast),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", type=Path, required=True)
    parser.add_argument("--bench-python", type=Path, required=True)
    parser.add_argument("--tmp", type=Path, required=True)
    args = parser.parse_args()
    bars = regular_bars(args.shared)
    bars.select("symbol", "ts", "open", "high", "low", "close", "volume").with_columns(
        pl.col("ts").dt.replace_time_zone(None)
    ).write_parquet(args.tmp)
    try:
        backtrader = _peer(args.bench_python, "backtrader_crossover.py", args.tmp)
        vectorbt = _peer(args.bench_python, "vectorbt_crossover.py", args.tmp, str(REPEATS))
    finally:
        args.tmp.unlink()
    # Warm-up on a slice: loads (or compiles) the crossover's numba kernel, as the vectorbt
    # peer compiles its own before its clock starts.
    run_backtest(
        bars.head(5000),
        MovingAverageCross(FAST, SLOW, SHARES),
        cash=Decimal("100000000"),
        config=BrokerConfig(COSTS, max_leverage=10.0),
        path=unlimited("ma_cross"),
    )
    t0 = time.perf_counter()
    event = run_backtest(
        bars,
        MovingAverageCross(FAST, SLOW, SHARES),
        cash=Decimal("100000000"),
        config=BrokerConfig(COSTS, max_leverage=10.0),
        path=risk_on("ma_cross"),
    )
    event_s = time.perf_counter() - t0

    def vectorized() -> VectorizedResult:
        return ma_cross_vectorized(bars, fast=FAST, slow=SLOW, shares=SHARES, costs=COSTS, cash=1e8)

    fast = vectorized()
    vec_s = best_of(vectorized, REPEATS)  # after its own warm-up run: numba compile excluded
    event_rate = bars.height / event_s
    bt_rate = backtrader["bars"] / backtrader["seconds"]
    print(
        json.dumps(
            {
                "backtest.bars": bars.height,
                "backtest.event_bars_per_s": round(event_rate),
                "backtest.vectorized_bars_per_s": round(bars.height / vec_s),
                "backtest.event_trades": len(event.ledger.fills),
                "backtest.event_risk_checks": "on (default configuration, volume check off)",
                "backtest.event_risk_refused": sum(
                    1 for e in event.risk_events if e.kind == "refused"
                ),
                "backtest.vectorized_equals_event": same_fills(event, fast),
                "backtest.backtrader_bars_per_s": round(bt_rate),
                "backtest.backtrader_fills": backtrader["fills"],
                "backtest.speedup_vs_backtrader": round(event_rate / bt_rate, 2),
                "backtest.vectorbt_s": round(vectorbt["seconds"], 4),
                "backtest.vectorized_s": round(vec_s, 4),
                "backtest.vectorized_vs_vectorbt_repeats": REPEATS,
                "backtest.vectorbt_fills": vectorbt["fills"],
                "backtest.ratio_vs_vectorbt": round(vec_s / vectorbt["seconds"], 2),
                **model_paths_agree(bars),
            }
        )
    )


if __name__ == "__main__":
    main()
