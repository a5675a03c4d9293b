"""The vectorized fast path for research sweeps: strategies as columns, fills in polars.

:func:`simulate_targets` reproduces the event engine's conventions exactly: a target decided at
a bar's close fills at the open of the symbol's next bar, slippage (fixed bps + half spread)
against the trade, a per-share commission with a minimum rounded to the cent (half even, in
integer micro-dollars so it matches the Decimal ledger), and the borrow fee on shorts. It
assumes no order is refused or capped (enough buying power, no participation cap, no impact
model); the equality tests with the event engine hold it to that. The moving-average crossover
and the model strategy compute their targets as columns and share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import cast

import numpy as np
import polars as pl

from pipelines.backtest.broker import CENT, MICROS_PER_BORROW_YEAR, CostModel, money
from pipelines.backtest.kernels import model_run
from pipelines.backtest.strategy import SizingConfig, kernel_params, signal_columns

S = pl.col("symbol")


@dataclass(frozen=True)
class VectorizedResult:
    fills: pl.DataFrame  # symbol, ts, quantity, price, commission
    cash: float  # USD after every fill and charge
    equity: pl.DataFrame  # ts, equity
    borrow: float  # USD paid for borrowing shares


def _commission(costs: CostModel) -> pl.Expr:
    micro_per_share = int(costs.commission_per_share * 1_000_000)
    micro_min = int(costs.commission_min * 1_000_000)
    if Decimal(micro_per_share) != costs.commission_per_share * 1_000_000:
        raise ValueError("commission_per_share must be a whole number of micro-dollars")
    micro = pl.max_horizontal(pl.col("quantity").abs() * micro_per_share, pl.lit(micro_min))
    cents, rest = micro // 10_000, micro % 10_000
    up = (rest > 5_000) | ((rest == 5_000) & (cents % 2 == 1))  # half to even, as the ledger
    # numpy divides; polars would multiply by 0.01 and miss the nearest double (3.3 -> 3.3000..03)
    return (cents + up.cast(pl.Int64)).map_batches(
        lambda c: pl.Series(c.to_numpy() / 100.0), return_dtype=pl.Float64
    )


def _borrow(df: pl.DataFrame, costs: CostModel) -> pl.Series:
    """The borrow booked at each row (USD): the broker's arithmetic exactly, in Decimal: the
    exact fee of the short held into the bar, over the time since the symbol's previous bar at
    its previous close, accumulated per symbol, and whole cents of the running total booked."""
    out = np.zeros(df.height)
    if not costs.borrow_bps:
        return pl.Series(out)
    rate = money(costs.borrow_bps / 1e4)
    before = df["pos"] - df["quantity"]  # held into this bar, since the previous one
    rows = np.flatnonzero((before < 0).to_numpy())
    if rows.size == 0:
        return pl.Series(out)
    us = df["ts"].dt.epoch("us").to_numpy()
    close, symbol, held = df["close"].to_numpy(), df["symbol"].to_list(), before.to_numpy()
    accrued: dict[str, Decimal] = {}
    booked: dict[str, Decimal] = {}
    for i in rows.tolist():
        # rows are sorted by symbol and time, and a short is held into a bar only after one
        s = symbol[i]
        fee = Decimal(int(-held[i])) * money(float(close[i - 1])) * rate
        accrued[s] = accrued.get(s, Decimal(0)) + fee * Decimal(int(us[i] - us[i - 1])) / (
            MICROS_PER_BORROW_YEAR
        )
        cents = accrued[s].quantize(CENT, rounding=ROUND_HALF_EVEN) - booked.get(s, Decimal(0))
        booked[s] = booked.get(s, Decimal(0)) + cents
        out[i] = float(cents)
    return pl.Series(out)


def simulate_targets(
    bars: pl.DataFrame, targets: pl.DataFrame, *, costs: CostModel, cash: float
) -> VectorizedResult:
    """Fills, cash and equity of ``targets`` (``symbol``, ``ts``, ``target`` shares decided at
    that bar's close; null keeps the position) on ``bars``."""
    if costs.impact_k or costs.commission_bps:
        raise ValueError(
            "the vectorized path models fixed slippage, half spread, per-share commissions "
            "and borrow; run the event engine for impact or bps commissions"
        )
    df = (
        bars.select("symbol", "ts", "open", "close")
        .join(targets.select("symbol", "ts", "target"), on=["symbol", "ts"], how="left")
        .sort("symbol", "ts")
        .with_columns(held=pl.col("target").forward_fill().fill_null(0).over(S))
        .with_columns(pos=pl.col("held").shift(1).fill_null(0).over(S))  # after this bar's fills
        .with_columns(quantity=pl.col("pos") - pl.col("pos").shift(1).fill_null(0).over(S))
    )
    frac = (costs.slippage_bps + costs.half_spread_bps) / 1e4
    fills = df.filter(pl.col("quantity") != 0).select(
        "symbol",
        "ts",
        "quantity",
        price=pl.col("open") * (1.0 + pl.col("quantity").sign() * frac),
        commission=_commission(costs),
    )
    df = df.with_columns(
        borrow=_borrow(df, costs), value=pl.col("pos") * pl.col("close")
    ).with_columns(d_value=pl.col("value") - pl.col("value").shift(1).fill_null(0.0).over(S))
    flows = (
        df.join(
            fills.select(
                "symbol", "ts", "commission", flow=-(pl.col("quantity") * pl.col("price"))
            ),
            on=["symbol", "ts"],
            how="left",
        )
        .group_by("ts")
        .agg(
            flow=(
                pl.col("flow").fill_null(0.0)
                - pl.col("commission").fill_null(0.0)
                - pl.col("borrow")
            ).sum(),
            d_value=pl.col("d_value").sum(),
        )
        .sort("ts")
    )
    equity = flows.select(
        "ts", equity=cash + pl.col("flow").cum_sum() + pl.col("d_value").cum_sum()
    )
    borrow = float(df["borrow"].sum())
    final_cash = (
        cash
        - float((fills["quantity"] * fills["price"]).sum())
        - float(fills["commission"].sum())
        - borrow
    )
    return VectorizedResult(fills.sort("ts", "symbol"), final_cash, equity, borrow)


def ma_cross_targets(bars: pl.DataFrame, *, fast: int, slow: int, shares: int) -> pl.DataFrame:
    """:class:`~pipelines.backtest.engine.MovingAverageCross` as a column: ``shares`` while
    ``fast_sum * slow > slow_sum * fast`` (window sums from prefix sums, the engine's
    arithmetic), from the ``slow``-th bar of each symbol."""
    total = pl.col("close").cum_sum().over(S)
    fast_sum = total - total.shift(fast).over(S).fill_null(0.0)
    slow_sum = total - total.shift(slow).over(S).fill_null(0.0)
    return bars.sort("symbol", "ts").select(
        "symbol",
        "ts",
        target=pl.when(pl.int_range(pl.len()).over(S) >= slow - 1).then(
            pl.when(fast_sum * slow > slow_sum * fast).then(shares).otherwise(0)
        ),
    )


def ma_cross_vectorized(
    bars: pl.DataFrame, *, fast: int, slow: int, shares: int, costs: CostModel, cash: float
) -> VectorizedResult:
    """The moving-average crossover through :func:`simulate_targets`."""
    targets = ma_cross_targets(bars, fast=fast, slow=slow, shares=shares)
    return simulate_targets(bars, targets, costs=costs, cash=cash)


def model_targets(
    bars: pl.DataFrame,
    signals: pl.DataFrame,
    sizing: SizingConfig,
    closing: frozenset[datetime] = frozenset(),
) -> pl.DataFrame:
    """:class:`~pipelines.backtest.strategy.ModelStrategy`'s decisions over every bar at once
    (its numba step run in one loop; ``sizing.capital`` must be set: sizing on the running
    equity is path-dependent; ``closing`` as the strategy's)."""
    if sizing.capital is None:
        raise ValueError(
            "the vectorized model strategy sizes on fixed capital: set SizingConfig.capital "
            "(USD), or run the event engine to size on the running equity"
        )
    if sizing.flat_at_close and not closing:
        raise ValueError("flat_at_close needs the closing bars' times (closing_bars)")
    df = (
        bars.select("symbol", "ts", "high", "low", "close")
        .join(
            signal_columns(signals, sizing).select("symbol", "ts", "prob", "volatility", "p0"),
            on=["symbol", "ts"],
            how="left",
        )
        .sort("ts", "symbol")
        .with_columns(_id=pl.col("symbol").rank("dense").cast(pl.Int64) - 1)
    )
    runs = df.select(pl.col("ts").rle()).unnest("ts")
    bounds = np.concatenate([[0], np.cumsum(runs["len"].to_numpy())]).astype(np.int64)
    shut = np.array([ts in closing for ts in runs["value"].to_list()], dtype=np.bool_)
    if not sizing.flat_at_close:
        shut[:] = False
    target = np.zeros(df.height)
    has = np.zeros(df.height, dtype=np.bool_)
    model_run(
        bounds,
        df["_id"].to_numpy(),
        df["prob"].fill_null(float("nan")).to_numpy(),
        df["p0"].fill_null(0.5).to_numpy(),
        df["volatility"].fill_null(float("nan")).to_numpy(),
        df["high"].cast(pl.Float64).to_numpy(),
        df["low"].cast(pl.Float64).to_numpy(),
        df["close"].cast(pl.Float64).to_numpy(),
        shut,
        int(cast(int, df["_id"].max() or 0)) + 1,
        kernel_params(sizing),
        sizing.capital,
        target,
        has,
    )
    return df.select(
        "symbol",
        "ts",
        target=pl.when(pl.Series(has)).then(pl.Series(target).cast(pl.Int64)),
    )
