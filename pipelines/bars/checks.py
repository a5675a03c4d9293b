"""Checks on stored bars, run after each materialization (shown as Dagster asset checks)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import polars as pl

from pipelines.bars.aggregate import assign_buckets
from pipelines.bars.calendar import (
    NEW_YORK,
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


class PartitionError(ValueError):
    """A partition cannot be materialized as it stands (for example every row that came in was
    quarantined); the message names the asset, the partition, why, and what to do."""


def quarantine_example(quarantine: pl.DataFrame) -> dict[str, str]:
    """One example per quarantine rule (the first row of each), as ``file, row index n:
    detail`` (``n`` counts the file's data rows from 0)."""
    if quarantine.height == 0:
        return {}
    first = quarantine.sort("source_file", "source_row").unique("rule", keep="first")
    return {
        r["rule"]: f"{r['source_file']}, row index {r['source_row']}: {r['detail']}"
        for r in first.iter_rows(named=True)
    }


def all_quarantined_message(
    asset: str,
    partition: str,
    *,
    rows_in: int,
    by_reason: Mapping[str, int],
    quarantine: pl.DataFrame,
    batch: str,
) -> str:
    """The one-line error of a partition whose rows all went to the quarantine.

    Example: ``bars_15m 2019-01-01: all 120 rows that came in were quarantined, none stored
    (unparseable_value 120, e.g. AAPL_15min.csv, row index 2: column 'close' (close): cannot
    parse n/a); ...``.
    """
    examples = quarantine_example(quarantine)
    rules = ", ".join(
        f"{rule} {n}" + (f", e.g. {examples[rule]}" if rule in examples else "")
        for rule, n in sorted(by_reason.items(), key=lambda kv: -kv[1])
    )
    return (
        f"{asset} {partition}: all {rows_in} rows that came in were quarantined, none stored "
        f"({rules}). Fix the source files or the source config (columns, timezone, label), "
        f"then ingest it again with refetch (python -m quantdag.run --refetch, or run config "
        f"ops.{asset}.config.refetch: true); the rows are in the quarantine table, batch "
        f"{batch!r}."
    )


def expected_sessions(
    calendar: str,
    session: Session,
    window: tuple[datetime, datetime],
    *,
    history_start: date,
    history_end: date | None,
) -> list[date]:
    """The sessions a stored partition must hold: New York dates inside ``window`` (UTC
    instants, end exclusive; clip its end to ``as_of`` first) and inside
    ``history_start..history_end``, whose tradable window (``session``) has closed by the
    window's end. Example: February 2019 up to 2019-02-12 18:30 New York is the 8 sessions
    2019-02-01 .. 2019-02-12."""
    start, end = window
    ny = ZoneInfo(NEW_YORK)
    first = max(start.astimezone(ny).date(), history_start)
    last = (end - timedelta(microseconds=1)).astimezone(ny).date()
    if history_end is not None:
        last = min(last, history_end)
    if end <= start or last < first:
        return []
    sessions = sessions_between(calendar, first, last).window(session)
    return sessions.filter(pl.col("end") <= end.astimezone(UTC))["session_date"].to_list()


def missing_sessions(
    stored: pl.DataFrame, sessions: Sequence[date], symbols: Sequence[str]
) -> dict[str, list[date]]:
    """Per symbol of ``symbols``: the sessions among ``sessions`` with no stored bar (symbols
    missing none are left out)."""
    if not sessions:
        return {}
    present = (
        stored.select("symbol", session_date=session_dates(pl.col("ts"))).unique()
        if stored.height
        else pl.DataFrame(schema={"symbol": pl.String(), "session_date": pl.Date()})
    )
    have: dict[str, set[date]] = {}
    for sym, day in present.iter_rows():
        have.setdefault(sym, set()).add(day)
    out = {}
    for sym in symbols:
        gone = [d for d in sessions if d not in have.get(sym, set())]
        if gone:
            out[sym] = gone
    return out


def describe_missing(missing: Mapping[str, Sequence[date]], n_symbols: int) -> str:
    """Missing sessions grouped by the symbols that miss the same ones, e.g. ``all 24 symbols:
    2019-01-02, 2019-01-03`` or ``AAPL, MSFT: 2019-02-04``; ``none`` when nothing is missing."""
    if not missing:
        return "none"
    groups: dict[tuple[date, ...], list[str]] = {}
    for sym, days in missing.items():
        groups.setdefault(tuple(days), []).append(sym)
    parts = []
    for days, syms in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        who = f"all {n_symbols} symbols" if len(syms) == n_symbols > 1 else _names(syms)
        shown = ", ".join(d.isoformat() for d in days[:5])
        more = f" and {len(days) - 5} more" if len(days) > 5 else ""
        parts.append(f"{who}: {shown}{more}")
    return "; ".join(parts)


def _names(symbols: Sequence[str], limit: int = 6) -> str:
    more = f" and {len(symbols) - limit} more" if len(symbols) > limit else ""
    return ", ".join(symbols[:limit]) + more


def ingest_check_definitions(rules: ValidationConfig) -> dict[str, CheckDefinition]:
    """The checks of :func:`ingest_checks`, for the asset's check specs and its verdicts."""
    return check_table(
        CheckDefinition(
            "rows_accounted", "rows in = rows stored + rows quarantined", blocking=True
        ),
        CheckDefinition(
            "sessions_have_bars",
            "the partition's exchange sessions (up to as_of, within the universe's history) "
            "have stored bars: a period with sessions and no bar fails, and so does one where a "
            "symbol with bars before and after it has none",
            blocking=True,
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
            "every symbol has stored bars in every exchange session of the partition (up to "
            "as_of, within the universe's history)",
            blocking=False,
        ),
        CheckDefinition(
            "price_jumps",
            f"no close-to-close |log return| above {rules.max_abs_log_return} "
            "(such bars are flagged and kept)",
            blocking=False,
        ),
    )


def _with_quarantined(symbols: Sequence[str], report: IngestReport) -> list[str]:
    """Each symbol, with how many of its rows this ingestion quarantined where it did."""
    counts: dict[str, int] = {}
    if report.by_symbol.height and "quarantined" in report.by_symbol.columns:
        counts = dict(report.by_symbol.select("symbol", "quarantined").iter_rows())
    return [f"{s} ({counts[s]} rows quarantined)" if counts.get(s) else s for s in symbols]


def ingest_checks(
    report: IngestReport,
    stored: pl.DataFrame,
    rules: ValidationConfig,
    *,
    sessions: Sequence[date],
    symbols: Sequence[str],
    spanning: Sequence[str] = (),
) -> list[CheckOutcome]:
    """Verdicts on one ingestion (``report``) and on the bars now stored for its partition,
    judged against the exchange ``sessions`` the partition must hold
    (:func:`expected_sessions`) for each of ``symbols``. ``spanning``: symbols with stored bars
    before and after the partition; one of them without a bar in it fails
    ``sessions_have_bars`` (a hole in its history, not a listing or a delisting)."""
    checks = ingest_check_definitions(rules)
    problems = bar_integrity(stored)
    share = report.rows_quarantined / report.rows_in if report.rows_in else 0.0
    missing = missing_sessions(stored, sessions, symbols)
    with_bars = (
        set(stored.select(session_dates(pl.col("ts")))["ts"].to_list()) if stored.height else set()
    )
    empty = [d for d in sessions if d not in with_bars]
    present = set(stored["symbol"].unique().to_list()) if stored.height else set()
    holes = sorted(set(spanning) - present) if sessions else []
    span = f"{sessions[0]} .. {sessions[-1]}" if sessions else "none"
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
        checks["sessions_have_bars"].outcome(
            not sessions or (stored.height > 0 and not holes),
            {
                "summary": (
                    f"{len(sessions)} sessions ({span}), {stored.height} bars stored"
                    + (f"; sessions without any bar: {len(empty)}" if empty else "")
                    + (
                        f"; no bar at all for {', '.join(_with_quarantined(holes, report))}, "
                        "which have bars before and after this partition"
                        if holes
                        else ""
                    )
                ),
                "symbols_without_bars": holes,
                "sessions": len(sessions),
                "bars_stored": stored.height,
                "sessions_without_bars": [d.isoformat() for d in empty],
            },
        ),
        checks["whole_sessions_present"].outcome(
            not missing,
            {
                "summary": f"{len(sessions)} sessions; missing: "
                + describe_missing(missing, len(symbols)),
                "sessions": len(sessions),
                "symbols_missing_sessions": len(missing),
                "missing_sessions": sum(len(v) for v in missing.values()),
                "by_symbol": {s: ", ".join(d.isoformat() for d in v) for s, v in missing.items()},
                "missing_bars_in_fetched_sessions": report.missing_bars,
            },
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
