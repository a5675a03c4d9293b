"""The vectorized fast path for research sweeps: targets as columns, fills in one pass.

:func:`simulate_targets` reproduces the event engine's conventions exactly: a target decided at
a bar's close fills at the open of the symbol's next bar, slippage (fixed bps + half spread)
against the trade, a per-share commission with a minimum rounded to the cent (half even, in
integer micro-dollars so it matches the Decimal ledger), and the borrow fee on shorts. It
assumes no order is refused or capped (enough buying power, no participation cap, no impact
model); the equality tests with the event engine hold it to that. The moving-average crossover
and the model strategy compute their targets as columns and share it.

The bars are walked once, sorted by symbol and time (numba kernels in
:mod:`pipelines.backtest.fill_kernels`); bars that come sorted are not copied.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import cast

import numpy as np
import numpy.typing as npt
import polars as pl

from pipelines.backtest import fill_kernels
from pipelines.backtest.broker import CENT, MICROS_PER_BORROW_YEAR, CostModel, money
from pipelines.backtest.kernels import model_run
from pipelines.backtest.strategy import SizingConfig, kernel_params, signal_columns

S = pl.col("symbol")
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class VectorizedResult:
    fills: pl.DataFrame  # symbol, ts, quantity, price, commission
    cash: float  # USD after every fill and charge
    equity: pl.DataFrame  # ts, equity
    borrow: float  # USD paid for borrowing shares


@dataclass(frozen=True)
class _Rows:
    """Bars sorted by symbol and time, as arrays: a symbol's rows are
    ``starts[s]:starts[s + 1]``; ``tidx`` numbers each row's time among the distinct times;
    ``first[t]`` is a row at time ``t``."""

    symbol: pl.Series
    ts: pl.Series
    stamps: I64
    open: F64
    close: F64
    starts: I64
    tidx: I64
    first: I64

    @property
    def names(self) -> pl.Series:
        return self.symbol.gather(self.starts[:-1])


def _spans(frame: pl.DataFrame) -> tuple[I64, I64, int]:
    lengths = frame.select(S.rle()).unnest("symbol")["len"].to_numpy()
    starts = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    stamps = frame["ts"].to_physical().to_numpy().astype(np.int64, copy=False)
    if not frame["symbol"].is_sorted():
        return starts, stamps, 0
    return starts, stamps, int(fill_kernels.first_unsorted(starts, stamps))


def _rows(bars: pl.DataFrame) -> _Rows:
    frame = bars.select("symbol", "ts", pl.col("open", "close").cast(pl.Float64))
    nulls = [c for c in frame.columns if frame[c].null_count()]
    if nulls:
        raise ValueError(f"bars have nulls in {nulls}: validate them first (validate_bars)")
    starts, stamps, bad = _spans(frame)
    if bad >= 0:
        frame = frame.sort("symbol", "ts")
        starts, stamps, bad = _spans(frame)
        if bad >= 0:
            raise ValueError(
                f"bars hold more than one row of {frame['symbol'][bad]} at {frame['ts'][bad]}:"
                " keep one bar per symbol and time (validate_bars does)"
            )
    times = np.unique(stamps)
    tidx = np.empty(len(stamps), dtype=np.int64)
    first = np.empty(len(times), dtype=np.int64)
    fill_kernels.time_index(starts, stamps, times, tidx, first)
    return _Rows(
        frame["symbol"],
        frame["ts"],
        stamps,
        frame["open"].to_numpy(),
        frame["close"].to_numpy(),
        starts,
        tidx,
        first,
    )


def _micro_dollars(costs: CostModel) -> tuple[int, int]:
    micro_per_share = int(costs.commission_per_share * 1_000_000)
    micro_min = int(costs.commission_min * 1_000_000)
    if Decimal(micro_per_share) != costs.commission_per_share * 1_000_000:
        raise ValueError("commission_per_share must be a whole number of micro-dollars")
    return micro_per_share, micro_min


def _borrow(rows: _Rows, shorts: I64, held: I64, costs: CostModel) -> tuple[F64, Decimal]:
    """The borrow booked at each of the rows ``shorts`` (USD) and its total: the broker's
    arithmetic exactly, in Decimal: the exact fee of the ``held`` shares short into the bar,
    over the time since the symbol's previous bar at its previous close, accumulated per
    symbol, and whole cents of the running total booked."""
    out = np.zeros(len(shorts))
    total = Decimal(0)
    if not costs.borrow_bps or not len(shorts):
        return out, total
    rate = money(costs.borrow_bps / 1e4)
    us = rows.ts.dt.epoch("us").to_numpy()
    # a short is held into a bar only after one: the previous row is the symbol's
    before = shorts - 1
    if not np.isfinite(rows.close[before]).all():
        raise ValueError("a short is valued at a close that is not a number: validate the bars")
    symbol = (np.searchsorted(rows.starts, shorts, side="right") - 1).tolist()
    half_cent = CENT / 2
    accrued = booked = Decimal(0)
    edge = half_cent  # accrued grows: its whole cents change only once it reaches booked + 0.005
    current = -1
    for k, (s, shares, close, micros) in enumerate(
        zip(
            symbol,
            map(Decimal, held.tolist()),
            map(Decimal, map(repr, rows.close[before].tolist())),  # as money(): shortest repr
            map(Decimal, (us[shorts] - us[before]).tolist()),
            strict=True,
        )
    ):
        if s != current:
            current, accrued, booked, edge = s, Decimal(0), Decimal(0), half_cent
        accrued += shares * close * rate * micros / MICROS_PER_BORROW_YEAR
        if accrued < edge:
            continue
        cents = accrued.quantize(CENT, rounding=ROUND_HALF_EVEN) - booked
        booked += cents
        edge = booked + half_cent
        total += cents
        out[k] = float(cents)
    return out, total


def _simulate(
    rows: _Rows, target: I64, has: B, costs: CostModel, cash: float, split_flips: bool = True
) -> VectorizedResult:
    if costs.impact_k or costs.commission_bps:
        raise ValueError(
            "the vectorized path models fixed slippage, half spread, per-share commissions "
            "and borrow; run the event engine for impact or bps commissions"
        )
    micro_per_share, micro_min = _micro_dollars(costs)
    n, n_times = len(rows.stamps), len(rows.first)
    fills, quantity = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    price, commission = np.empty(n), np.empty(n)
    shorts, held = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    flow, d_value = np.zeros(n_times), np.zeros(n_times)
    n_fills, n_shorts, paid = fill_kernels.simulate(
        rows.starts,
        rows.tidx,
        rows.open,
        rows.close,
        target,
        has,
        (costs.slippage_bps + costs.half_spread_bps) / 1e4,
        micro_per_share,
        micro_min,
        fills,
        quantity,
        price,
        commission,
        shorts,
        held,
        flow,
        d_value,
        split_flips,
    )
    short = shorts[:n_shorts]
    borrowed, borrow = _borrow(rows, short, held[:n_shorts], costs)
    if borrow:
        flow -= np.bincount(rows.tidx[short], weights=borrowed, minlength=n_times)
    # rows are in symbol order: a stable sort on time alone leaves each time's in symbol order
    order = np.argsort(rows.tidx[fills[:n_fills]], kind="stable")
    at = fills[:n_fills][order]
    fills_frame = pl.DataFrame(
        {
            "symbol": rows.symbol.gather(at),
            "ts": rows.ts.gather(at),
            "quantity": quantity[:n_fills][order],
            "price": price[:n_fills][order],
            "commission": commission[:n_fills][order],
        }
    )
    equity = pl.DataFrame(
        {
            "ts": rows.ts.gather(rows.first),
            "equity": cash + np.cumsum(flow) + np.cumsum(d_value),
        }
    )
    return VectorizedResult(fills_frame, cash - paid - float(borrow), equity, float(borrow))


def _shares(target: pl.Series) -> pl.Series:
    if not target.dtype.is_numeric():
        raise ValueError(f"targets are numbers of shares, not {target.dtype}")
    whole = target.cast(pl.Int64, strict=False)
    off = whole.ne_missing(target.cast(pl.Float64))
    if off.any():
        raise ValueError(
            "targets are whole numbers of shares (or null to keep the position), not "
            f"{target.filter(off).head(3).to_list()}: round them before simulating"
        )
    return whole


def _place(rows: _Rows, targets: pl.DataFrame) -> tuple[I64, B]:
    """Each bar row's target (and whether it has one) from ``targets``' rows on its symbol and
    time; targets off the bars are ignored, as in a left join of the bars with them."""
    if targets["ts"].dtype != rows.ts.dtype:
        raise ValueError(
            f"targets' ts is {targets['ts'].dtype} but the bars' is {rows.ts.dtype}: cast one"
        )
    shares = _shares(targets["target"])
    values = shares.fill_null(0).to_numpy().astype(np.int64, copy=False)
    given = shares.is_not_null().to_numpy()
    n = len(rows.stamps)
    if (
        targets.height == n
        and targets["symbol"].equals(rows.symbol)
        and targets["ts"].equals(rows.ts)
    ):
        return values, given
    names = rows.names
    codes = (
        targets["symbol"]
        .replace_strict(names, pl.int_range(len(names), eager=True), default=-1)
        .cast(pl.Int64)
        .fill_null(-1)
        .to_numpy()
    )
    codes = np.where(targets["ts"].is_null().to_numpy(), -1, codes).astype(np.int64)
    at = targets["ts"].to_physical().fill_null(0).to_numpy().astype(np.int64, copy=False)
    target, has = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.bool_)
    twice = fill_kernels.place_targets(
        rows.starts, rows.stamps, codes, at, values, given, target, has
    )
    if twice >= 0:
        raise ValueError(
            f"targets hold more than one row of {targets['symbol'][twice]} at "
            f"{targets['ts'][twice]}: keep one target per symbol and bar"
        )
    return target, has


def simulate_targets(
    bars: pl.DataFrame,
    targets: pl.DataFrame,
    *,
    costs: CostModel,
    cash: float,
    split_flips: bool = True,
) -> VectorizedResult:
    """Fills, cash and equity of ``targets`` (``symbol``, ``ts``, ``target`` shares decided at
    that bar's close; null or absent keeps the position) on ``bars``, from ``cash`` (USD);
    ``split_flips`` as :class:`~pipelines.execution.path.PathConfig`'s (a target through zero
    closes first, and opens the other side one bar later)."""
    rows = _rows(bars)
    target, has = _place(rows, targets)
    return _simulate(rows, target, has, costs, cash, split_flips)


def _ma_cross(rows: _Rows, fast: int, slow: int, shares: int) -> tuple[I64, B]:
    if not 0 < fast < slow:
        raise ValueError("need 0 < fast < slow")
    n = len(rows.stamps)
    target, has = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.bool_)
    fill_kernels.ma_cross_targets(rows.starts, rows.close, fast, slow, shares, target, has)
    return target, has


def ma_cross_targets(bars: pl.DataFrame, *, fast: int, slow: int, shares: int) -> pl.DataFrame:
    """:class:`~pipelines.backtest.engine.MovingAverageCross` as a column: ``shares`` while
    ``fast_sum * slow > slow_sum * fast`` (window sums from prefix sums, the engine's
    arithmetic), from the ``slow``-th bar of each symbol; sorted by symbol and time."""
    rows = _rows(bars)
    target, has = _ma_cross(rows, fast, slow, shares)
    return pl.DataFrame({"symbol": rows.symbol, "ts": rows.ts}).with_columns(
        target=pl.when(pl.Series(has)).then(pl.Series(target))
    )


def ma_cross_vectorized(
    bars: pl.DataFrame, *, fast: int, slow: int, shares: int, costs: CostModel, cash: float
) -> VectorizedResult:
    """The moving-average crossover through :func:`simulate_targets` (``shares`` per symbol,
    ``cash`` in USD)."""
    rows = _rows(bars)
    target, has = _ma_cross(rows, fast, slow, shares)
    return _simulate(rows, target, has, costs, cash)


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
