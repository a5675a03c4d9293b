"""The vectorized fast path for research sweeps: the moving-average crossover in polars.

It reproduces the event engine's conventions exactly: the decision at a bar's close, the fill at
the open of the symbol's next bar, slippage in bps against the trade, a per-share commission
with a minimum (rounded to the cent). It assumes no order is refused (enough cash and buying
power); the equality test with the event engine holds it to that.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import polars as pl

from pipelines.backtest.broker import CostModel


@dataclass(frozen=True)
class VectorizedResult:
    fills: pl.DataFrame  # symbol, ts, quantity, price, commission
    cash: float
    equity: pl.DataFrame  # ts, equity


def ma_cross_vectorized(
    bars: pl.DataFrame, *, fast: int, slow: int, shares: int, costs: CostModel, cash: float
) -> VectorizedResult:
    if costs.impact_k or costs.half_spread_bps or costs.commission_bps:
        raise ValueError("the vectorized path models fixed slippage and per-share commissions")
    s = pl.col("symbol")
    c = pl.col("close")
    # Means as the engine computes them: the window's sum divided by its length.
    fast_mean = c.rolling_sum(fast, weights=[1.0] * fast).over(s) / fast
    slow_mean = c.rolling_sum(slow, weights=[1.0] * slow).over(s) / slow
    df = bars.sort("symbol", "ts").with_columns(
        target=pl.when(pl.int_range(pl.len()).over(s) >= slow - 1).then(
            pl.when(fast_mean > slow_mean).then(shares).otherwise(0)
        )
    )
    df = (
        df.with_columns(
            held=pl.col("target").forward_fill().fill_null(0).over(s),
        )
        .with_columns(
            prev_held=pl.col("held").shift(1).over(s).fill_null(0),
        )
        .with_columns(
            # The order decided at bar t fills at the next bar's open.
            qty=(pl.col("prev_held") - pl.col("prev_held").shift(1).over(s).fill_null(0)),
        )
    )
    slip = costs.slippage_bps / 1e4
    per_share = float(costs.commission_per_share)
    minimum = float(costs.commission_min)
    fills = df.filter(pl.col("qty") != 0).select(
        "symbol",
        "ts",
        quantity=pl.col("qty"),
        price=pl.col("open") * (1.0 + pl.col("qty").sign() * slip),
        commission=pl.max_horizontal(pl.col("qty").abs() * per_share, pl.lit(minimum)).round(2),
    )
    flows = fills.select(-(pl.col("quantity") * pl.col("price")) - pl.col("commission"))
    final_cash = cash + float(flows.to_series().sum())
    by_ts = (
        df.with_columns(value=pl.col("prev_held") * c)
        .group_by("ts")
        .agg(pl.col("value").sum())
        .sort("ts")
    )
    spent = (
        fills.with_columns(flow=-(pl.col("quantity") * pl.col("price")) - pl.col("commission"))
        .group_by("ts")
        .agg(pl.col("flow").sum())
    )
    equity = (
        by_ts.join(spent, on="ts", how="left")
        .with_columns(equity=cash + pl.col("flow").fill_null(0.0).cum_sum() + pl.col("value"))
        .select("ts", "equity")
    )
    return VectorizedResult(fills.sort("ts", "symbol"), final_cash, equity)


def decimal_cash(fills: pl.DataFrame, cash: Decimal) -> Decimal:
    """The same cash as booked exactly (for comparisons with the event engine)."""
    total = cash
    for r in fills.iter_rows(named=True):
        total -= Decimal(repr(r["quantity"])) * Decimal(repr(r["price"])) + Decimal(
            repr(r["commission"])
        )
    return total
