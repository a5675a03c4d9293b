"""The trading path's figures (`make bench BENCH=risk`):

- ``risk.decide_p99_ms_50_symbols``: one call of the whole decision path (strategy, default
  portfolio method, trading state, pre-trade checks, orders) for a bar of 50 symbols, p99 and
  p50 over the bars of real data (the S&P 500 daily set, or the shared 15-minute set's symbols
  when it is absent), with seeded predictions on every bar;
- ``risk.hrp_ms_500_symbols``: HRP weights of 500 symbols from 252 daily returns
  (:mod:`bench.portfolio`);
- ``risk.overshoot_shares`` and ``risk.cap_breaches``: the model strategy on the full shared
  15-minute set with a 5% participation cap through the event engine: shares a position went
  beyond the target its order worked towards, and symbol-bars whose fills exceeded the cap.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import polars as pl

from bench.features import regular_bars
from pipelines.backtest.broker import BrokerConfig, CostModel
from pipelines.backtest.model_backtest import (
    run_model_strategy,
    signal_volatility,
    sizing_with_label_exits,
)
from pipelines.backtest.strategy import ModelStrategy, SizingConfig
from pipelines.execution.batch import BarBatch
from pipelines.execution.path import Account, PathConfig, PathState, Signals, decide
from pipelines.labels.triple_barrier import BarrierConfig


def _seeded_signals(bars: pl.DataFrame, seed: int, share: float) -> pl.DataFrame:
    vol = signal_volatility(bars, BarrierConfig())
    rng = np.random.default_rng(seed)
    pick = rng.random(vol.height) < share
    return vol.filter(pl.Series(pick)).with_columns(
        prob=pl.Series(rng.uniform(0.3, 0.7, int(pick.sum()))), base_rate=pl.lit(0.5)
    )


def decide_latency(bars: pl.DataFrame, n_symbols: int = 50) -> dict[str, object]:
    """p50/p99 of :func:`decide` on bars of ``n_symbols`` symbols, with the account a broker
    would report (positions following the orders, no working orders left)."""
    # The symbols with the longest histories, so that most bar times hold all of them.
    counts = bars.group_by("symbol").len().sort("len", "symbol", descending=[True, False])
    symbols = sorted(counts["symbol"].head(n_symbols).to_list())
    bars = bars.filter(pl.col("symbol").is_in(symbols)).sort("ts", "symbol")
    vol = signal_volatility(bars, BarrierConfig())
    rng = np.random.default_rng(11)
    frame = bars.join(vol, on=["symbol", "ts"], how="left").with_columns(
        prob=pl.Series(rng.uniform(0.3, 0.7, bars.height)),
        _id=pl.col("symbol").replace_strict({s: i for i, s in enumerate(symbols)}).cast(pl.Int64),
    )
    # Only bar times where every symbol has a bar: a batch of exactly n_symbols.
    full = frame.filter(pl.len().over("ts") == len(symbols))
    strategy = ModelStrategy(SizingConfig(max_position=0.02, max_gross=1.0))
    config = PathConfig(bar_minutes=1440, risk=PathConfig().risk)
    state = PathState.create(symbols, strategy, config)
    positions: dict[str, int] = {}
    times: list[float] = []
    orders = 0
    cols = {
        c: full[c].cast(pl.Float64).to_numpy()
        for c in ("open", "high", "low", "close", "volume", "volatility", "prob")
    }
    ids = full["_id"].to_numpy()
    stamps = full["ts"].to_list()
    n = len(symbols)
    p0 = np.full(n, 0.5)
    for k in range(0, full.height, n):
        a, b = k, k + n
        ts = stamps[a]
        batch = BarBatch(
            ts,
            symbols,
            ids[a:b],
            cols["open"][a:b],
            cols["high"][a:b],
            cols["low"][a:b],
            cols["close"][a:b],
            cols["volume"][a:b],
            np.zeros(n),
        )
        signals = Signals(cols["prob"][a:b], p0, cols["volatility"][a:b])
        account = Account(ts + timedelta(hours=6, minutes=30), 1e7, 1e7, positions, {})
        t0 = time.perf_counter()
        decision = decide(state, batch, signals, account, strategy, config)
        times.append(time.perf_counter() - t0)
        state = decision.state
        for order in decision.orders:
            positions[order.symbol] = positions.get(order.symbol, 0) + order.signed_quantity
        orders += len(decision.orders)
    ms = np.array(times[20:]) * 1000  # the first calls load numba's cached kernels
    return {
        "risk.decide_p99_ms_50_symbols": round(float(np.percentile(ms, 99)), 3),
        "risk.decide_p50_ms_50_symbols": round(float(np.percentile(ms, 50)), 3),
        "risk.decide_bars": len(ms),
        "risk.decide_symbols": n,
        "risk.decide_orders": orders,
    }


def overshoot(bars: pl.DataFrame) -> dict[str, object]:
    """The model strategy on ``bars`` with a 5% participation cap: overshoot and cap breaches
    counted from the ledger, independently of the code that prevents them."""
    barriers = BarrierConfig()
    signals = _seeded_signals(bars, seed=5, share=0.33)
    sizing = sizing_with_label_exits(SizingConfig(max_position=0.05, max_gross=1.0), barriers)
    costs = CostModel(slippage_bps=1.0, commission_per_share=Decimal("0.005"))
    t0 = time.perf_counter()
    result = run_model_strategy(
        bars,
        signals,
        sizing,
        cash=Decimal(10_000_000),
        config=BrokerConfig(costs, participation=0.05, max_leverage=2.0),
        # Exposure and loss limits off: the figures are of the order path under the cap, not
        # of refusals (the refusals that remain are counted below).
        path=PathConfig.without_limits(),
    )
    seconds = time.perf_counter() - t0
    volume = {(s, t): v for s, t, v in bars.select("symbol", "ts", "volume").iter_rows()}
    filled: dict[tuple[str, object], int] = {}
    for f in result.ledger.fills:
        filled[(f.symbol, f.ts)] = filled.get((f.symbol, f.ts), 0) + abs(f.quantity)
    breaches = sum(1 for key, q in filled.items() if q > int(0.05 * volume[key]))
    # Each order works towards the target in its intent ("target:N", "flatten": 0): from its
    # first fill on, the position must stay between where it stood then and that target.
    goal = {o.client_order_id: _goal(o.intent) for o in result.orders}
    held: dict[str, int] = {}
    start: dict[str, int] = {}
    over = 0
    for f in result.ledger.fills:
        before = held.get(f.symbol, 0)
        start.setdefault(f.client_order_id, before)
        after = held[f.symbol] = before + f.quantity
        lo, hi = sorted((start[f.client_order_id], goal[f.client_order_id]))
        over += max(0, after - hi) + max(0, lo - after)
    return {
        "risk.overshoot_shares": over,
        "risk.cap_breaches": breaches,
        "risk.cap_orders": len(result.orders),
        "risk.cap_fills": len(result.ledger.fills),
        "risk.cap_partial_fills": sum(
            1 for e in result.ledger.events if e.reason.startswith("partial fill")
        ),
        "risk.cap_bars": bars.height,
        "risk.cap_event_bars_per_s": round(bars.height / seconds),
        "risk.cap_refused_by_rule": _by_rule(result),
    }


def _goal(intent: str) -> int:
    return 0 if intent == "flatten" else int(intent.removeprefix("target:"))


def _by_rule(result: object) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in result.risk_events:  # type: ignore[attr-defined]
        if e.kind == "refused":
            out[e.rule] = out.get(e.rule, 0) + 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", type=Path, required=True)
    args = parser.parse_args()
    from bench.portfolio import hrp_timing

    out: dict[str, object] = dict(hrp_timing())
    bars = regular_bars(args.shared)
    daily = args.shared / "sp500_daily_2013_2018.parquet"
    if daily.exists():
        frame = (
            pl.read_parquet(daily)
            .with_columns(
                pl.col("symbol").cast(pl.String),
                ts=pl.col("date").cast(pl.Datetime("us", "UTC"))
                + pl.duration(hours=14, minutes=30),
            )
            .drop("date")
        )
        out |= decide_latency(frame)
    else:
        out |= decide_latency(bars)
    out |= overshoot(bars)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
