"""Session-aware aggregation of validated bars into coarser timeframes.

Buckets are anchored at the start of each session segment, never at the clock: for the regular
session a 60-minute bar runs 09:30-10:30, ..., 15:30-16:00. In extended hours the pre-market
(04:00-09:30), the regular session and the post-market (close-20:00) are separate segments, so no
bar mixes them. A bucket ends early where its segment ends (15:30-16:00 above, or 12:30-13:00 on
an early-close day). Daily bars hold the regular session only.

Incomplete last bars: a bucket is emitted only once its window has closed by ``as_of`` (by default,
the end of the last source bar in the input), so a partial bucket at the end of the data never
looks like a finished bar. Buckets with missing source bars inside are emitted; ``bar_count`` says
how many source bars they hold.

``vwap`` is the volume-weighted mean of the source VWAPs (null if any is missing or the volume is
zero); ``trade_count`` is the sum (null if any is missing); ``flags`` is the OR of the sources'.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl

from pipelines.bars.calendar import (
    Session,
    SessionCalendar,
    segment_bounds,
    session_dates_within_hours,
    sessions_between,
)
from pipelines.data.schema import STORED_BAR_SCHEMA
from pipelines.timeframes import Timeframe


class AggregationError(ValueError):
    """The requested aggregation cannot be built from the given bars."""


def assign_buckets(
    bars: pl.DataFrame,
    *,
    target: Timeframe,
    session: Session,
    calendar: str | SessionCalendar = "XNYS",
) -> pl.DataFrame:
    """``bars`` with the start ``_b`` and end ``_e`` of the ``target`` bucket holding each row,
    sorted by symbol and time; for daily buckets, rows outside the regular session are left
    out. Every row must lie inside a session (validated bars do); otherwise this raises."""
    df = bars.select(*STORED_BAR_SCHEMA).with_columns(
        session_date=session_dates_within_hours(pl.col("ts"))
    )
    if isinstance(calendar, str):
        first, last = df["session_date"].min(), df["session_date"].max()
        cal = sessions_between(calendar, first, last)  # type: ignore[arg-type]
    else:
        cal = calendar
    df = df.join(cal.window(session), on="session_date", how="inner")
    inside = (pl.col("ts") >= pl.col("start")) & (pl.col("ts") < pl.col("end"))
    if df.height != bars.height or not df.select(inside.all()).item():
        raise AggregationError(
            f"some bars lie outside every {session} session; aggregate validated bars only"
        )
    if target.is_daily:
        df = df.filter((pl.col("ts") >= pl.col("reg_open")) & (pl.col("ts") < pl.col("reg_close")))
        bucket_start, bucket_end = pl.col("reg_open"), pl.col("reg_close")
    else:
        seg_start, seg_end = segment_bounds(session)
        offset = (pl.col("ts") - seg_start).dt.total_microseconds()
        bucket_start = seg_start + pl.duration(
            microseconds=(offset // target.micros) * target.micros
        )
        bucket_end = pl.min_horizontal(bucket_start + pl.duration(minutes=target.minutes), seg_end)
    window_cols = [
        "start",
        "end",
        "reg_open",
        "reg_close",
        "ext_open",
        "ext_close",
        "early_close",
        "session_date",
    ]
    return df.with_columns(_b=bucket_start, _e=bucket_end).drop(window_cols).sort("symbol", "ts")


def aggregate_bars(
    bars: pl.DataFrame,
    *,
    source: Timeframe,
    target: Timeframe,
    session: Session,
    calendar: str | SessionCalendar = "XNYS",
    as_of: datetime | None = None,
    with_end: bool = False,
) -> pl.DataFrame:
    """Build ``target`` bars from validated ``source`` bars (stored schema, UTC bar starts).
    ``with_end`` adds each bar's ``end`` (earlier than start + target where a segment ends).

    ``as_of`` (UTC) is the time up to which the input is complete; buckets ending after it are
    left out. Example: ``aggregate_bars(bars_1m, source=Timeframe.parse("1m"),
    target=Timeframe.parse("5m"), session="regular")``.
    """
    if not source.divides(target) and source != target:
        raise AggregationError(f"{target} bars cannot be built from {source} bars")
    empty = {**STORED_BAR_SCHEMA, **({"end": pl.Datetime("us", "UTC")} if with_end else {})}
    if bars.height == 0:
        return pl.DataFrame(schema=empty)
    df = assign_buckets(bars, target=target, session=session, calendar=calendar)
    repeated = (pl.col("symbol") == pl.col("symbol").shift(1)) & (
        pl.col("ts") == pl.col("ts").shift(1)
    )
    if df.select(repeated.any()).item():
        raise AggregationError("the input has duplicate (symbol, ts) rows; validate it first")
    if df.height == 0:
        return pl.DataFrame(schema=empty)
    if as_of is None:
        as_of = df.select(pl.col("ts").max() + source.duration).item()
    vol = pl.col("volume")
    aggs: dict[str, pl.Expr] = {
        "_e": pl.col("_e").first(),
        "open": pl.col("open").first(),
        "high": pl.col("high").max(),
        "low": pl.col("low").min(),
        "close": pl.col("close").last(),
        "volume": vol.sum(),
        "bar_count": pl.col("bar_count").sum(),
        "flags": pl.col("flags").bitwise_or(),
    }
    # Sources without VWAP or trade counts (most files) skip those sums entirely.
    has_vwap = df["vwap"].null_count() < df.height
    has_trades = df["trade_count"].null_count() < df.height
    if has_vwap:
        aggs |= {
            "_pv": (pl.col("vwap") * vol).sum(),
            "_vwap_missing": pl.col("vwap").is_null().any(),
        }
    if has_trades:
        aggs |= {
            "trade_count": pl.col("trade_count").sum(),
            "_tc_missing": pl.col("trade_count").is_null().any(),
        }
    out = (
        df.group_by("symbol", "_b")
        .agg(**aggs)
        .filter(pl.col("_e") <= as_of)
        .with_columns(
            ts=pl.col("_b"),
            vwap=(
                pl.when(pl.col("_vwap_missing") | (pl.col("volume") == 0))
                .then(None)
                .otherwise(pl.col("_pv") / pl.col("volume"))
                if has_vwap
                else pl.lit(None, pl.Float64)
            ),
            trade_count=(
                pl.when(pl.col("_tc_missing")).then(None).otherwise("trade_count")
                if has_trades
                else pl.lit(None, pl.Int64)
            ),
        )
    )
    columns = [pl.col(k).cast(v) for k, v in STORED_BAR_SCHEMA.items()]
    if with_end:
        columns.append(pl.col("_e").alias("end"))
    return out.select(columns).sort("symbol", "ts")
