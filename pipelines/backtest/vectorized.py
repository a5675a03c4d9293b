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
from decimal import Decimal

import numpy as np
import polars as pl
from scipy.special import ndtr

from pipelines.backtest.broker import CostModel
from pipelines.backtest.strategy import SizingConfig

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
    rate = costs.borrow_bps / 1e4 / (360 * 86400)
    before = pl.col("pos") - pl.col("quantity")  # held into this bar, since the previous one
    df = df.with_columns(
        borrow=pl.when(before < 0)
        .then(
            -before
            * pl.col("close").shift(1).over(S)
            * (pl.col("ts") - pl.col("ts").shift(1).over(S)).dt.total_seconds()
            * rate
        )
        .otherwise(0.0),
        value=pl.col("pos") * pl.col("close"),
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


def model_targets(bars: pl.DataFrame, signals: pl.DataFrame, sizing: SizingConfig) -> pl.DataFrame:
    """:class:`~pipelines.backtest.strategy.ModelStrategy` as columns (``sizing.capital``
    must be set: sizing on the running equity is path-dependent)."""
    if sizing.capital is None:
        raise ValueError(
            "the vectorized model strategy sizes on fixed capital: set SizingConfig.capital "
            "(USD), or run the event engine to size on the running equity"
        )
    s, capital = sizing, sizing.capital
    p, vol = pl.col("prob"), pl.col("volatility")
    z = (p - 0.5) / (p * (1.0 - p)).sqrt()
    raw = (
        2.0 * z.map_batches(lambda x: pl.Series(ndtr(x.to_numpy())), return_dtype=pl.Float64) - 1.0
    ).clip(-s.max_bet, s.max_bet)
    live = (p > 0.0) & (p < 1.0) & ((p - 0.5).abs() >= s.threshold) & (vol > 0)
    size = pl.when(live).then(raw).otherwise(0.0)
    if not s.allow_short:
        size = pl.when(size < 0).then(0.0).otherwise(size)
    cap = s.max_position * capital
    df = (
        bars.select("symbol", "ts", "high", "low", "close")
        .join(signals.select("symbol", "ts", "prob", "volatility"), on=["symbol", "ts"], how="left")
        .sort("symbol", "ts")
        .with_columns(size=size.fill_null(0.0))
        .with_columns(
            q=pl.when(pl.col("size") != 0).then(
                (pl.col("size") * capital * s.target_vol / vol).clip(-cap, cap) / pl.col("close")
            )
        )
    )
    gross = (
        df.group_by("ts")
        .agg(cents=(pl.col("q").abs() * pl.col("close") * 100.0).floor().sum())
        .with_columns(
            scale=pl.when(pl.col("cents") > 0)
            .then(pl.min_horizontal(pl.lit(1.0), s.max_gross * capital * 100.0 / pl.col("cents")))
            .otherwise(1.0)
        )
    )
    up_mult = s.profit_take, s.stop_loss
    entry = pl.col("size") != 0
    side = pl.when(entry).then(pl.col("size").sign())
    df = df.join(gross.select("ts", "scale"), on="ts", how="left").with_columns(
        _side=side.forward_fill().over(S),
        _close0=pl.when(entry).then(pl.col("close")).forward_fill().over(S),
        _vol0=pl.when(entry).then(vol).forward_fill().over(S),
        _k=pl.int_range(pl.len()).over(S)
        - pl.when(entry).then(pl.int_range(pl.len())).forward_fill().over(S),
    )

    def barrier(mult: float | None, sign: float) -> pl.Expr:
        if mult is None:
            return pl.lit(np.inf * sign)
        return pl.col("_close0") * (1.0 + sign * mult * pl.col("_vol0"))

    long_ = pl.col("_side") > 0
    upper = pl.when(long_).then(barrier(up_mult[0], 1.0)).otherwise(barrier(up_mult[1], 1.0))
    lower = pl.when(long_).then(barrier(up_mult[1], -1.0)).otherwise(barrier(up_mult[0], -1.0))
    touched = (pl.col("high") >= upper) | (pl.col("low") <= lower)
    exit_ = (pl.col("_k") >= 1) & (touched | (pl.col("_k") >= s.max_holding_bars))
    return df.select(
        "symbol",
        "ts",
        target=pl.when(entry)
        .then((pl.col("q") * pl.col("scale")).cast(pl.Int64))
        .when(exit_)
        .then(0),
    )
