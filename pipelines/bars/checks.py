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
from pipelines.checks import CheckDefinition, CheckOutcome, check_table
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


def ingest_check_definitions(rules: ValidationConfig) -> dict[str, CheckDefinition]:
    """The checks of :func:`ingest_checks`, for the asset's check specs and its verdicts."""
    return check_table(
        CheckDefinition(
            "rows_accounted", "rows in = rows stored + rows quarantined", blocking=True
        ),
        CheckDefinition(
            "bar_integrity",
            "stored bars: unique keys, positive prices, OHLC consistent",
            blocking=True,
        ),
        CheckDefinition(
            "quarantine_share",
            f"at most {rules.max_quarantine_share:.0%} of the rows quarantined",
            blocking=False,
        ),
        CheckDefinition(
            "whole_sessions_present",
            "no symbol misses a whole session inside its span",
            blocking=False,
        ),
        CheckDefinition(
            "price_jumps",
            f"no close-to-close |log return| above {rules.max_abs_log_return} "
            "(such bars are flagged and kept)",
            blocking=False,
        ),
    )


def ingest_checks(
    report: IngestReport, stored: pl.DataFrame, rules: ValidationConfig
) -> list[CheckOutcome]:
    """Verdicts on one ingestion (``report``) and the bars now stored for its window."""
    checks = ingest_check_definitions(rules)
    problems = bar_integrity(stored)
    share = report.rows_quarantined / report.rows_in if report.rows_in else 0.0
    return [
        checks["rows_accounted"].outcome(
            report.accounted,
            {
                "rows_in": report.rows_in,
                "rows_stored": report.rows_stored,
                "rows_quarantined": report.rows_quarantined,
            },
        ),
        checks["bar_integrity"].outcome(not problems, {"problems": problems or "none"}),
        checks["quarantine_share"].outcome(
            share <= rules.max_quarantine_share,
            {"share": share, "by_reason": dict(report.by_reason)},
        ),
        checks["whole_sessions_present"].outcome(
            report.missing_sessions == 0,
            {"missing_sessions": report.missing_sessions, "missing_bars": report.missing_bars},
        ),
        checks["price_jumps"].outcome(
            report.price_jumps == 0, {"flagged_bars": report.price_jumps}
        ),
    ]


def aggregate_check_definitions(source: Timeframe) -> dict[str, CheckDefinition]:
    """The checks of :func:`aggregate_checks`."""
    return check_table(
        CheckDefinition(
            "bar_integrity",
            "unique keys, OHLC consistent, each bar inside one session segment",
            blocking=True,
        ),
        CheckDefinition(
            "volume_conserved",
            f"volume equals the {source} volume it was built from",
            blocking=True,
        ),
    )


def aggregate_checks(
    source_bars: pl.DataFrame,
    bars: pl.DataFrame,
    *,
    source: Timeframe,
    target: Timeframe,
    session: Session,
    calendar: str | SessionCalendar,
    as_of: datetime,
) -> list[CheckOutcome]:
    """Verdicts on ``bars`` (``target``) built from ``source_bars`` (``source``)."""
    checks = aggregate_check_definitions(source)
    problems = bar_integrity(bars, timeframe=target, session=session, calendar=calendar)
    balance = volume_balance(
        source_bars, bars, target=target, session=session, calendar=calendar, as_of=as_of
    )
    return [
        checks["bar_integrity"].outcome(not problems, {"problems": problems or "none"}),
        checks["volume_conserved"].outcome(balance == 0.0, {"difference_shares": balance}),
    ]
