"""Triple-barrier labels, meta-labels and sample weights (López de Prado, AFML ch. 3-4).

An event at bar t0 enters at its close on a side (+1 long, -1 short). The profit-take and
stop-loss barriers sit ``profit_take`` and ``stop_loss`` volatility units away from the entry,
the volatility being ATR(n) / close or the standard deviation of n log returns at t0 (both known
at t0). The vertical barrier is ``max_holding_bars`` bars later, or the last bar of t0's session
when ``cut_at_session_close`` is set. The label is +1 if the profit-take is touched first, -1 for
the stop-loss, and at the vertical barrier the sign of the side-adjusted return (0 if flat).
An event whose vertical barrier lies beyond the data and that touched nothing yet has no label:
it is left out (``unlabelled`` counts it), never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl

from pipelines.bars.calendar import session_dates_within_hours
from pipelines.features.expr import col, to_polars
from pipelines.features.library import S, atr, div, lag, rstd
from pipelines.labels.kernels import barrier_price_arrays, scan_barriers

BARRIERS = {1: "profit_take", -1: "stop_loss", 0: "vertical"}

LABEL_SCHEMA: dict[str, pl.DataType] = {
    "symbol": pl.String(),
    "ts": pl.Datetime("us", "UTC"),
    "side": pl.Int8(),
    "t1": pl.Datetime("us", "UTC"),
    "barrier": pl.String(),
    "ret": pl.Float64(),
    "label": pl.Int8(),
    "volatility": pl.Float64(),
    "bars_held": pl.Int32(),
}


@dataclass(frozen=True)
class BarrierConfig:
    """Triple-barrier settings.

    ``profit_take`` and ``stop_loss``: barrier distances in volatility units, e.g. 2.0 with
    ATR(14)/close = 0.4% puts the barriers 0.8% from the entry. ``max_holding_bars``: the
    vertical barrier, in bars (16 fifteen-minute bars = 4 hours). ``volatility``: ``"atr"`` or
    ``"std"`` over ``volatility_window`` bars.
    """

    profit_take: float = 2.0
    stop_loss: float = 2.0
    max_holding_bars: int = 16
    volatility: Literal["atr", "std"] = "atr"
    volatility_window: int = 14
    cut_at_session_close: bool = True

    def __post_init__(self) -> None:
        if self.profit_take <= 0 or self.stop_loss <= 0:
            raise ValueError("profit_take and stop_loss must be positive volatility multiples")
        if self.max_holding_bars < 1:
            raise ValueError("max_holding_bars must be at least 1")


@dataclass(frozen=True)
class LabelResult:
    """``labels`` (:data:`LABEL_SCHEMA`) and ``unlabelled``: events left without a label (no
    volatility yet, no bar after the entry in the session, or a horizon past the data)."""

    labels: pl.DataFrame
    unlabelled: int


def barrier_volatility(config: BarrierConfig) -> pl.Expr:
    """The per-bar volatility the barriers are measured in (ATR/close or the standard
    deviation of log returns), known at each bar; an expression over one symbol's bars."""
    n = config.volatility_window
    c = col("close")
    if config.volatility == "atr":
        return to_polars(div(atr(n), c, None))
    return to_polars(rstd((c / lag(c)).log(), n))


def label_triple_barrier(
    bars: pl.DataFrame,
    config: BarrierConfig,
    *,
    events: pl.DataFrame | None = None,
) -> LabelResult:
    """Label ``events`` (``symbol``, ``ts``, optional ``side``; default: every bar, long) on
    ``bars`` (validated bars sorted by symbol and time).

    Example: ``label_triple_barrier(bars_15m, BarrierConfig(profit_take=2, stop_loss=1))``.
    """
    df = bars.select(S, "ts", "open", "high", "low", "close").sort(S, "ts")
    if df.select(pl.struct(S, "ts").is_duplicated().any()).item():
        raise ValueError("duplicate (symbol, ts) bars: label validated bars only")
    row = pl.int_range(pl.len())
    df = df.with_columns(
        _row=row,
        _vol=barrier_volatility(config),
        _sess=session_dates_within_hours(pl.col("ts")),
    ).with_columns(
        _sym_end=pl.col("_row").max().over(S),
        _sess_end=pl.col("_row").max().over(S, "_sess"),
    )
    if events is None:
        ev = df.with_columns(side=pl.lit(1, pl.Int8))
    else:
        side = events["side"] if "side" in events.columns else pl.lit(1, pl.Int8)
        ev = events.select(S, "ts").with_columns(side=side).join(df, on=[S, "ts"], how="inner")
        if ev.height != events.height:
            raise ValueError(f"{events.height - ev.height} events are not at a bar of `bars`")
    if ev.filter(~pl.col("side").is_in([1, -1])).height:
        raise ValueError("side must be +1 (long) or -1 (short) for every event")
    n_events = ev.height
    horizon = pl.col("_row") + config.max_holding_bars
    if config.cut_at_session_close:
        # The session's end is known once a later bar of the symbol exists, or the whole
        # horizon lies inside the data (every bar through it then belongs to the session).
        vertical = pl.min_horizontal(horizon, pl.col("_sess_end"))
        complete = (pl.col("_sess_end") < pl.col("_sym_end")) | (horizon <= pl.col("_sym_end"))
    else:
        vertical = horizon
        complete = horizon <= pl.col("_sym_end")
    ev = ev.with_columns(
        _vert=pl.min_horizontal(vertical, pl.col("_sym_end")), _complete=complete
    ).filter(
        pl.col("_vol").is_not_null() & (pl.col("_vol") > 0) & (pl.col("_vert") > pl.col("_row"))
    )
    upper, lower = barrier_price_arrays(
        ev["close"].cast(pl.Float64).to_numpy(),
        ev["_vol"].cast(pl.Float64).to_numpy(),
        ev["side"].cast(pl.Float64).to_numpy(),
        config.profit_take,
        config.stop_loss,
    )
    arrays = {c: df[c].to_numpy() for c in ("open", "high", "low", "close")}
    exit_at, hit, price = scan_barriers(
        arrays["open"],
        arrays["high"],
        arrays["low"],
        arrays["close"],
        ev["_row"].to_numpy().astype(np.int64),
        ev["side"].to_numpy().astype(np.float64),
        upper,
        lower,
        ev["_vert"].to_numpy().astype(np.int64),
    )
    ts = df["ts"]
    out = ev.select(S, "ts", "side", "close", "_row", "_complete", "_vol").with_columns(
        _exit=pl.Series(exit_at),
        _hit=pl.Series(hit),
        _price=pl.Series(price),
    )
    # An incomplete event is kept only if a horizontal barrier was touched inside the data.
    labelled = out.filter(pl.col("_complete") | (pl.col("_hit") != 0))
    unlabelled = n_events - labelled.height
    ret = pl.col("side") * (pl.col("_price") / pl.col("close") - 1.0)
    labels = labelled.with_columns(
        t1=ts.gather(labelled["_exit"].to_numpy()),
        barrier=pl.col("_hit").replace_strict(BARRIERS, return_dtype=pl.String),
        ret=ret,
        label=pl.when(pl.col("_hit") != 0).then(pl.col("_hit")).otherwise(ret.sign()),
        volatility=pl.col("_vol"),
        bars_held=pl.col("_exit") - pl.col("_row"),
    ).select(pl.col(k).cast(v) for k, v in LABEL_SCHEMA.items())
    return LabelResult(labels, unlabelled)


def meta_labels(labels: pl.DataFrame) -> pl.DataFrame:
    """Meta-labels for the primary sides in ``labels``: 1 where betting that side made money
    (side-adjusted return > 0), else 0."""
    return labels.with_columns(meta_label=(pl.col("ret") > 0).cast(pl.Int8))
