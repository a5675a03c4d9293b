"""The external cross-check: our event engine against backtesting.py (in the benchmark
environment) on the moving-average crossover over the regular-session bars of the shared
15-minute set, same fill convention and costs. Same closed trades, same PnL to the cent?"""

from __future__ import annotations

import argparse
import json
import subprocess
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import polars as pl

from bench.features import regular_bars
from pipelines.backtest.broker import BrokerConfig, CostModel
from pipelines.backtest.engine import MovingAverageCross, run_backtest
from pipelines.execution.path import PathConfig

# backtesting.py charges its spread once per round trip (at entry) where we slip every fill, so
# the check runs without slippage; both charge max(0.005 USD x shares, 1 USD) per fill.
FAST, SLOW, SHARES, SLIP = 10, 30, 100, 0.0


def our_closed_trades(bars: pl.DataFrame) -> pl.DataFrame:
    costs = CostModel(
        slippage_bps=SLIP, commission_per_share=Decimal("0.005"), commission_min=Decimal("1")
    )
    # backtesting.py first calls next() one bar after its indicators are all defined.
    strategy = MovingAverageCross(FAST, SLOW, SHARES, warmup=SLOW + 1)
    # The reference has no risk layer: it trades every bar it is given, VIX's (no volume)
    # too, so the comparison of the engines' mechanics runs without limits or the volume check.
    unlimited = PathConfig.without_limits(strategy.name)
    path = replace(unlimited, risk=replace(unlimited.risk, min_bar_volume=0.0))
    result = run_backtest(
        bars,
        strategy,
        cash=Decimal("1e9"),
        config=BrokerConfig(costs, max_leverage=10.0),
        path=path,
    )
    rows, open_ = [], {}
    for f in result.ledger.fills:
        if f.quantity > 0:
            open_[f.symbol] = f
        else:
            e = open_.pop(f.symbol)
            pnl = (f.price - e.price) * e.quantity - e.commission - f.commission
            rows.append({"symbol": f.symbol, "entry": e.ts, "exit": f.ts, "pnl": float(pnl)})
    return pl.DataFrame(rows).sort("symbol", "entry")


def cross_check(bars: pl.DataFrame, bench_python: Path, tmp: Path) -> dict[str, object]:
    """Closed trades of the crossover on ``bars`` in our engine and in backtesting.py (run by
    ``bench_python``), matched by symbol, entry and exit; PnL compared to the cent."""
    ours = our_closed_trades(bars)
    bars.select("symbol", "ts", "open", "high", "low", "close", "volume").with_columns(
        pl.col("ts").dt.replace_time_zone(None)
    ).write_parquet(tmp)
    try:
        proc = subprocess.run(
            [
                str(bench_python),
                str(Path(__file__).parent / "peers" / "backtesting_crossover.py"),
                str(tmp),
                str(FAST),
                str(SLOW),
                str(SHARES),
                str(SLIP),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
    finally:
        tmp.unlink()
    theirs = (
        pl.DataFrame(json.loads(proc.stdout)["trades"])
        .with_columns(
            pl.col("entry").str.to_datetime().dt.replace_time_zone("UTC"),
            pl.col("exit").str.to_datetime().dt.replace_time_zone("UTC"),
        )
        .sort("symbol", "entry")
    )
    joined = ours.join(
        theirs, on=["symbol", "entry", "exit"], how="full", suffix="_bt", coalesce=True
    )
    unmatched = joined.filter(pl.col("pnl").is_null() | pl.col("pnl_bt").is_null()).height
    pnl_diff = (
        joined.filter(pl.col("pnl").is_not_null() & pl.col("pnl_bt").is_not_null())
        .select((pl.col("pnl") - pl.col("pnl_bt")).abs().max())
        .item()
    )
    total_diff = abs(float(ours["pnl"].sum()) - float(theirs["pnl"].sum()))
    return {
        "backtest.reference": "backtesting.py 0.6.6",
        "backtest.reference_trades": theirs.height,
        "backtest.our_closed_trades": ours.height,
        "backtest.differing_trades": unmatched,
        "backtest.max_trade_pnl_diff_usd": round(float(pnl_diff or 0.0), 6),
        "backtest.total_pnl_diff_usd": round(total_diff, 6),
        "backtest.matches_reference": unmatched == 0 and total_diff < 0.01,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", type=Path, required=True)
    parser.add_argument("--bench-python", type=Path, required=True)
    parser.add_argument("--tmp", type=Path, required=True)
    args = parser.parse_args()
    print(json.dumps(cross_check(regular_bars(args.shared), args.bench_python, args.tmp)))


if __name__ == "__main__":
    main()
