"""Incremental, idempotent ingestion of one time window: plan, fetch, validate, store.

Coverage (which symbol has been fetched over which interval) lives in the trading database, so a
re-run fetches only what is missing, and a backfill over a range fills exactly the gaps. Writing
is idempotent, so repeating a window (``refetch=True``) changes nothing unless the source did.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import polars as pl

from pipelines.bars.calendar import NEW_YORK, session_dates, sessions_between
from pipelines.bars.validate import ValidationResult, validate_bars
from pipelines.config import UniverseConfig, ValidationConfig
from pipelines.data.schema import BarFlag
from pipelines.data.sources import BarSource
from pipelines.data.store import BarStore

Interval = tuple[datetime, datetime]
NY = ZoneInfo(NEW_YORK)
TIME_RULES = ("not_a_session", "outside_session", "off_grid")


@dataclass(frozen=True)
class FetchRequest:
    """Fetch ``symbols`` over ``[start, end)``."""

    symbols: tuple[str, ...]
    start: datetime
    end: datetime


def missing_intervals(window: Interval, covered: Sequence[Interval]) -> list[Interval]:
    """Parts of ``window`` not inside any covered interval, in order."""
    start, end = window
    gaps: list[Interval] = []
    cursor = start
    for s, e in sorted(covered):
        if e <= cursor or s >= end:
            continue
        if s > cursor:
            gaps.append((cursor, min(s, end)))
        cursor = max(cursor, e)
        if cursor >= end:
            break
    if cursor < end:
        gaps.append((cursor, end))
    return gaps


def plan_fetch(
    symbols: Sequence[str], window: Interval, covered: dict[str, list[Interval]]
) -> list[FetchRequest]:
    """Requests covering what is missing of ``window`` for each symbol; symbols missing the same
    interval share one request."""
    by_interval: dict[Interval, list[str]] = defaultdict(list)
    for sym in symbols:
        for gap in missing_intervals(window, covered.get(sym, [])):
            by_interval[gap].append(sym)
    return [FetchRequest(tuple(sorted(syms)), s, e) for (s, e), syms in sorted(by_interval.items())]


@dataclass(frozen=True)
class IngestReport:
    """What one ingestion did. ``rows_in == rows_stored + rows_quarantined`` for the rows
    fetched now; ``bars_changed`` counts rows the database actually inserted or changed,
    ``bars_deleted`` bars a re-fetch no longer found at the source, ``quarantine_removed``
    quarantine rows a re-fetch superseded (the row was fixed or removed at the source)."""

    window: Interval
    requests: tuple[FetchRequest, ...]
    rows_in: int = 0
    rows_stored: int = 0
    rows_quarantined: int = 0
    bars_changed: int = 0
    bars_deleted: int = 0
    quarantine_removed: int = 0
    quarantine_added: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    by_symbol: pl.DataFrame = field(default_factory=pl.DataFrame)
    missing_bars: int = 0
    short_sessions: int = 0
    missing_sessions: int = 0
    price_jumps: int = 0
    half_day_bars: int = 0
    zero_volume_bars: int = 0

    @property
    def accounted(self) -> bool:
        return self.rows_in == self.rows_stored + self.rows_quarantined


def previous_closes(
    store: BarStore,
    timeframe: str,
    symbols: Sequence[str],
    before: datetime,
    lookback_days: int = 10,
) -> pl.DataFrame:
    """The last stored close before ``before`` per symbol (for jump flags at a window edge)."""

    prior = store.read_bars(
        timeframe=timeframe,
        start=before - timedelta(days=lookback_days),
        end=before,
        symbols=list(symbols),
    )
    return prior.group_by("symbol").agg(pl.col("close").last().alias("prev_close"))


def ingest_window(
    source: BarSource,
    store: BarStore,
    universe: UniverseConfig,
    rules: ValidationConfig,
    window: Interval,
    *,
    as_of: datetime,
    batch: str,
    refetch: bool = False,
) -> IngestReport:
    """Fetch what is missing of ``window`` (never past what the source holds final as of
    ``as_of``: see :meth:`BarSource.covered_until`), validate it and store bars, quarantine rows
    and coverage in one transaction per request.

    ``batch`` names this ingestion in the quarantine table (for example the partition key).
    Nothing after the universe's ``history_end`` is fetched.
    """
    start, end = window[0], min(window[1], source.covered_until(as_of))
    if universe.history_end is not None:
        after = datetime.combine(universe.history_end + timedelta(days=1), time(0), NY)
        end = min(end, after.astimezone(UTC))
    if end <= start:
        return IngestReport(window=window, requests=())
    tf = universe.base_timeframe
    symbols = universe.symbol_names
    covered = (
        {} if refetch else store.covered(source=source.name, timeframe=tf.label, symbols=symbols)
    )
    requests = plan_fetch(symbols, (start, end), covered)
    results: list[ValidationResult] = []
    changed = added = deleted = removed = 0
    # Rows of no universe symbol come with every request that reads their file; when requests
    # overlap in time (symbols covered to different points), each such row counts once.
    returned: list[pl.DataFrame] = []
    for req in requests:
        raw = _once(source.fetch(req.symbols, req.start, req.end, symbols), symbols, returned)
        result = validate_bars(
            raw,
            universe=symbols,
            timeframe=tf,
            session=universe.session,
            calendar=universe.calendar,
            rules=rules,
            previous_close=previous_closes(store, tf.label, req.symbols, req.start),
        )
        del raw  # the batch can be large; only the validated result is needed from here on
        with store.engine.begin() as conn:
            # Supersedes what earlier fetches of this window stored (bars gone at the source are
            # deleted, quarantine rows fixed there are removed) and records the coverage.
            written = store.store_fetch(
                conn,
                bars=result.bars,
                quarantined=result.quarantine,
                source=source.name,
                timeframe=tf.label,
                symbols=req.symbols,
                universe=universe.symbol_names,
                window=(req.start, req.end),
                batch=batch,
                files=source.file_names(req.symbols),
                existing_files=source.file_names(None),
                covered_to=None
                if source.file_names(None) is None
                else coverage_ends(result, req, universe),
                # Foreign rows an earlier request stored are that request's, not stale here.
                protected={k for f in returned[:-1] for k in f.drop_nulls().iter_rows()},
            )
            changed += written.bars_changed
            deleted += written.bars_deleted
            removed += written.quarantine_removed
            added += written.quarantine_added
        results.append(result)
    report = _report(window, requests, results, changed, added)
    return replace(report, bars_deleted=deleted, quarantine_removed=removed)


def _once(raw: pl.DataFrame, universe: Sequence[str], returned: list[pl.DataFrame]) -> pl.DataFrame:
    """``raw`` without the rows of no universe symbol already returned by an earlier request
    (by file and row); ``returned`` gains the keys of this request's own (one frame each)."""
    keys = ["source_file", "source_row"]
    foreign = raw.filter(pl.col("symbol").is_null() | ~pl.col("symbol").is_in(list(universe)))
    if foreign.height and returned:
        dup = foreign.select(keys).join(pl.concat(returned), on=keys, how="semi")
        if dup.height:
            raw = raw.join(dup, on=keys, how="anti", nulls_equal=True, maintain_order="left")
            foreign = foreign.join(dup, on=keys, how="anti", nulls_equal=True)
    returned.append(foreign.select(keys))
    return raw


def coverage_ends(
    result: ValidationResult, req: FetchRequest, universe: UniverseConfig
) -> dict[str, datetime]:
    """How far a fetch from files covers each symbol: files are written by another process and
    may lag the clock, so a symbol is covered only up to its last row: to the next session's
    start when that row ends its session, else to the row's end. A symbol without a row in the
    window is not covered at all (fetched again next time)."""
    tf = universe.base_timeframe
    # A quarantined row counts as seen only when its time is not in question: a mis-dated row
    # (a holiday, outside the session) must not carry coverage past the file's real end.
    timed = result.quarantine.filter(~pl.col("rule").is_in(list(TIME_RULES)))
    seen = pl.concat([result.bars.select("symbol", "ts"), timed.select("symbol", "ts")]).filter(
        pl.col("symbol").is_in(list(req.symbols)) & pl.col("ts").is_not_null()
    )
    if seen.height == 0:
        return {}
    last = (
        seen.group_by("symbol")
        .agg(pl.col("ts").max())
        .with_columns(day=session_dates(pl.col("ts")))
        .sort("day")
    )
    session = "regular" if tf.is_daily else universe.session
    first, final = last["day"].min(), last["day"].max()
    sessions = (
        sessions_between(universe.calendar, first, final + timedelta(days=14))  # type: ignore[operator, arg-type]
        .window(session)
        .select("session_date", "start", "end", next_start=pl.col("start").shift(-1))
    )
    # The row's own session, or the next one when the row lies on a day without a session.
    found = last.join_asof(
        sessions, left_on="day", right_on="session_date", strategy="forward"
    ).with_columns(own=pl.col("session_date") == pl.col("day"))
    row_end = (
        pl.when(pl.col("own") & pl.lit(tf.is_daily))
        .then(pl.col("end"))
        .otherwise(pl.col("ts") + pl.duration(minutes=tf.minutes))
    )
    after = pl.when(pl.col("own")).then(pl.col("next_start")).otherwise(pl.col("start"))
    complete = ~pl.col("own").fill_null(False) | (row_end >= pl.col("end"))
    ends = found.select(
        "symbol", end=pl.when(complete & after.is_not_null()).then(after).otherwise(row_end)
    )
    return dict(ends.iter_rows())


def _report(
    window: Interval,
    requests: list[FetchRequest],
    results: list[ValidationResult],
    changed: int,
    added: int,
) -> IngestReport:
    by_reason: dict[str, int] = defaultdict(int)
    for r in results:
        for k, v in r.by_reason.items():
            by_reason[k] += v
    by_symbol = (
        pl.concat([r.by_symbol() for r in results], how="diagonal")
        .fill_null(0)
        .group_by("symbol")
        .sum()
        .sort("symbol")
        if results
        else pl.DataFrame()
    )
    return IngestReport(
        window=window,
        requests=tuple(requests),
        rows_in=sum(r.rows_in for r in results),
        rows_stored=sum(r.rows_stored for r in results),
        rows_quarantined=sum(r.rows_quarantined for r in results),
        bars_changed=changed,
        quarantine_added=added,
        by_reason=dict(sorted(by_reason.items())),
        by_symbol=by_symbol,
        missing_bars=sum(r.missing_bars for r in results),
        short_sessions=sum(r.gaps.height for r in results),
        missing_sessions=sum(int((r.gaps["present"] == 0).sum()) for r in results),
        price_jumps=sum(r.flag_count(BarFlag.PRICE_JUMP) for r in results),
        half_day_bars=sum(r.flag_count(BarFlag.HALF_DAY) for r in results),
        zero_volume_bars=sum(r.flag_count(BarFlag.ZERO_VOLUME) for r in results),
    )
