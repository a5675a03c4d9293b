"""Checks on stored bars, run after each materialization (shown as Dagster asset checks)."""

from __future__ import annotations

from datetime import datetime

import polars as pl

from pipelines.bars.aggregate import assign_buckets
from pipelines.bars.calendar import (
    Session,
    SessionCalendar,
    segment_bounds,
    session_dates,
    sessions_between,
)
from pipelines.checks import CheckOutcome
from pipelines.config import ValidationConfig
from pipelines.data.ingest import IngestReport
from pipelines.timeframes import Timeframe


def bar_integrity(
    bars: pl.DataFrame,
    *,
    timeframe: Timeframe | None = None,
    session: Session | None = None,
    calendar: str | SessionCalendar = "XNYS",
) -> list[str]:
    """Problems found in ``bars`` (stored schema), as sentences; empty when none.

    Always: unique (symbol, ts), positive finite prices, OHLC consistency, volume >= 0. With
    ``timeframe`` and ``session``: every bar lies inside one session segment.
    """
    if bars.height == 0:
        return []
    problems = []
    n_dup = bars.select(pl.struct("symbol", "ts").is_duplicated().sum()).item()
    if n_dup:
        problems.append(f"{n_dup} rows share a (symbol, ts)")
    bad_price = bars.filter(
        pl.any_horizontal(
            pl.col(c).le(0) | ~pl.col(c).is_finite() for c in ("open", "high", "low", "close")
        )
    ).height
    if bad_price:
        problems.append(f"{bad_price} bars with a non-positive or non-finite price")
    ohlc = bars.filter(
        (pl.col("low") > pl.min_horizontal("open", "close"))
        | (pl.col("high") < pl.max_horizontal("open", "close"))
    ).height
    if ohlc:
        problems.append(f"{ohlc} bars violate low <= open, close <= high")
    neg = bars.filter(pl.col("volume") < 0).height
    if neg:
        problems.append(f"{neg} bars with negative volume")
    if timeframe is not None and session is not None:
        outside = _outside_segments(bars, timeframe, session, calendar)
        if outside:
            problems.append(f"{outside} bars cross a session boundary or lie outside a session")
    return problems


def _outside_segments(
    bars: pl.DataFrame, timeframe: Timeframe, session: Session, calendar: str | SessionCalendar
) -> int:
    df = bars.with_columns(session_date=session_dates(pl.col("ts")))
    if isinstance(calendar, str):
        cal = sessions_between(calendar, df["session_date"].min(), df["session_date"].max())  # type: ignore[arg-type]
    else:
        cal = calendar
    df = df.join(cal.window(session), on="session_date", how="left")
    if timeframe.is_daily:
        return df.filter(pl.col("reg_open").is_null() | (pl.col("ts") != pl.col("reg_open"))).height
    seg_start, seg_end = segment_bounds(session)
    end = pl.col("ts") + pl.duration(minutes=timeframe.minutes)
    return df.filter(
        pl.col("reg_open").is_null()
        | (pl.col("ts") < seg_start)
        | (pl.min_horizontal(end, seg_end) > seg_end)
        | (pl.col("ts") >= seg_end)
    ).height


def volume_balance(
    source: pl.DataFrame,
    aggregated: pl.DataFrame,
    *,
    target: Timeframe,
    session: Session,
    calendar: str | SessionCalendar,
    as_of: datetime,
) -> float:
    """Source volume inside emitted buckets minus the aggregated volume (0.0 when conserved)."""
    if source.height == 0:
        return float(-aggregated["volume"].sum()) if aggregated.height else 0.0
    buckets = assign_buckets(source, target=target, session=session, calendar=calendar)
    expected = float(buckets.filter(pl.col("_e") <= as_of)["volume"].sum())
    return expected - float(aggregated["volume"].sum())


def ingest_check_descriptions(rules: ValidationConfig) -> dict[str, str]:
    """Names and one-line descriptions of :func:`ingest_checks`, for the asset's check specs."""
    return {
        "rows_accounted": "rows in = rows stored + rows quarantined",
        "bar_integrity": "stored bars: unique keys, positive prices, OHLC consistent",
        "quarantine_share": f"at most {rules.max_quarantine_share:.0%} of the rows quarantined",
        "whole_sessions_present": "no symbol misses a whole session inside its span",
        "price_jumps": (
            f"no close-to-close |log return| above {rules.max_abs_log_return} "
            "(such bars are flagged and kept)"
        ),
    }


def ingest_checks(
    report: IngestReport, stored: pl.DataFrame, rules: ValidationConfig
) -> list[CheckOutcome]:
    """Verdicts on one ingestion (``report``) and the bars now stored for its window."""
    problems = bar_integrity(stored)
    share = report.rows_quarantined / report.rows_in if report.rows_in else 0.0
    return [
        CheckOutcome(
            "rows_accounted",
            report.accounted,
            True,
            {
                "rows_in": report.rows_in,
                "rows_stored": report.rows_stored,
                "rows_quarantined": report.rows_quarantined,
            },
        ),
        CheckOutcome("bar_integrity", not problems, True, {"problems": problems or "none"}),
        CheckOutcome(
            "quarantine_share",
            share <= rules.max_quarantine_share,
            False,
            {
                "share": share,
                "by_reason": dict(report.by_reason),
            },
        ),
        CheckOutcome(
            "whole_sessions_present",
            report.missing_sessions == 0,
            False,
            {
                "missing_sessions": report.missing_sessions,
                "missing_bars": report.missing_bars,
            },
        ),
        CheckOutcome(
            "price_jumps",
            report.price_jumps == 0,
            False,
            {
                "flagged_bars": report.price_jumps,
            },
        ),
    ]


def aggregate_check_descriptions(source: Timeframe) -> dict[str, str]:
    """Names and descriptions of :func:`aggregate_checks`."""
    return {
        "bar_integrity": "unique keys, OHLC consistent, each bar inside one session segment",
        "volume_conserved": f"volume equals the {source} volume it was built from",
    }


def aggregate_checks(
    source_bars: pl.DataFrame,
    bars: pl.DataFrame,
    *,
    target: Timeframe,
    session: Session,
    calendar: str | SessionCalendar,
    as_of: datetime,
) -> list[CheckOutcome]:
    """Verdicts on ``bars`` built from ``source_bars``."""
    problems = bar_integrity(bars, timeframe=target, session=session, calendar=calendar)
    balance = volume_balance(
        source_bars, bars, target=target, session=session, calendar=calendar, as_of=as_of
    )
    return [
        CheckOutcome("bar_integrity", not problems, True, {"problems": problems or "none"}),
        CheckOutcome("volume_conserved", balance == 0.0, True, {"difference_shares": balance}),
    ]
