"""Validate a raw batch: every row is either stored or quarantined with its reason.

Rules, in the order a row is judged (the first that fails is its reason):

=========================  ==================================================================
``unparseable_value``      a field could not be parsed (the detail names column and value)
``symbol_not_in_universe`` the symbol is not in the configured universe
``missing_value``          a timestamp, price or volume is empty or NaN
``nonfinite_value``        a price, volume or VWAP is infinite
``implausible_value``      a price outside ``[min_price, max_price]`` or a volume above
                           ``max_volume`` (:class:`~pipelines.config.ValidationConfig`)
``nonpositive_price``      a price is zero or negative
``negative_volume``        volume below zero
``ohlc_violation``         low > min(open, close), high < max(open, close) or low > high
``not_a_session``          the New York date is not a session of the exchange calendar
``outside_session``        the bar does not lie inside the configured session (regular or
                           extended hours; an early close ends the session early)
``off_grid``               the bar start is not on the timeframe's grid from the session open
                           (``outside_session`` and ``off_grid`` do not apply to daily bars)
``duplicate_exact``        the same symbol, time and values as an earlier row (the first is kept)
``duplicate_conflict``     the same symbol and time as another row with other values (all kept
                           out: there is no telling which is right)
=========================  ==================================================================

A daily bar belongs to the session of its timestamp's New York date and is stored with that
session's regular open as its start, like a daily bar aggregated from intraday bars.

Kept bars carry flags (:class:`~pipelines.data.schema.BarFlag`): price jumps beyond the
configured threshold, bars of early-close sessions and zero-volume bars are flagged, not dropped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import polars as pl

from pipelines.bars.calendar import (
    SESSION_SCHEMA,
    Session,
    SessionCalendar,
    segment_bounds,
    session_dates,
    sessions_between,
)
from pipelines.config import ValidationConfig
from pipelines.data.schema import (
    BAR_SCHEMA,
    PRICE_COLUMNS,
    RAW_SCHEMA,
    STORED_BAR_SCHEMA,
    BarFlag,
)
from pipelines.timeframes import Timeframe

RULES = (
    "unparseable_value",
    "symbol_not_in_universe",
    "missing_value",
    "nonfinite_value",
    "implausible_value",
    "nonpositive_price",
    "negative_volume",
    "ohlc_violation",
    "not_a_session",
    "outside_session",
    "off_grid",
    "duplicate_exact",
    "duplicate_conflict",
)

QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "source": pl.String(),
    "source_file": pl.String(),
    "source_row": pl.Int64(),
    "symbol": pl.String(),
    "ts": pl.Datetime("us", "UTC"),
    "rule": pl.String(),
    "detail": pl.String(),
    "raw": pl.String(),
}

GAP_SCHEMA: dict[str, pl.DataType] = {
    "symbol": pl.String(),
    "session_date": pl.Date(),
    "expected": pl.Int32(),
    "present": pl.Int32(),
    "missing": pl.Int32(),
}


@dataclass(frozen=True)
class ValidationResult:
    """Outcome of :func:`validate_bars`.

    ``bars`` (stored schema), ``quarantine`` (one row per rejected input row), ``gaps`` (per
    symbol and session: bars the calendar expects against bars present, including whole sessions
    missing inside a symbol's span) and ``by_reason`` (rule -> count).
    """

    rows_in: int
    bars: pl.DataFrame
    quarantine: pl.DataFrame
    gaps: pl.DataFrame
    by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def rows_stored(self) -> int:
        return self.bars.height

    @property
    def rows_quarantined(self) -> int:
        return self.quarantine.height

    @property
    def missing_bars(self) -> int:
        return int(self.gaps["missing"].sum()) if self.gaps.height else 0

    def flag_count(self, flag: int) -> int:
        return int(((self.bars["flags"] & flag) != 0).sum())

    def by_symbol(self) -> pl.DataFrame:
        """Rows stored and quarantined per symbol, one column per quarantine rule seen."""
        stored = self.bars.group_by("symbol").agg(pl.len().alias("stored"))
        if self.quarantine.height:
            q = self.quarantine.with_columns(pl.col("symbol").fill_null("<none>")).pivot(
                on="rule", index="symbol", values="source_row", aggregate_function="len"
            )
        else:
            q = pl.DataFrame(schema={"symbol": pl.String()})
        out = stored.join(q, on="symbol", how="full", coalesce=True).fill_null(0)
        rules = [c for c in out.columns if c not in ("symbol", "stored")]
        out = out.with_columns(quarantined=pl.sum_horizontal(rules) if rules else pl.lit(0))
        # One integer type, so that the tables of several requests stack.
        return out.with_columns(pl.exclude("symbol").cast(pl.Int64)).sort("symbol")


def _code(rule: str) -> pl.Expr:
    # Rules are carried as small integer codes over the whole batch and named only for the
    # rejected rows: a string per row would cost memory and time on millions of good rows.
    return pl.lit(RULES.index(rule), pl.UInt8)


def _first_failure(
    universe: Iterable[str], tf: Timeframe, session: Session, rules: ValidationConfig
) -> pl.Expr:
    prices = [pl.col(c) for c in PRICE_COLUMNS]
    finite = [*prices, pl.col("volume"), pl.col("vwap")]
    tf_us = tf.micros
    seg_start, seg_end = segment_bounds(session)
    bar_end = pl.col("ts") + pl.duration(minutes=tf.minutes)
    offset_us = (pl.col("ts") - seg_start).dt.total_microseconds()
    rule = (
        pl.when(pl.col("parse_error").is_not_null())
        .then(_code("unparseable_value"))
        .when(pl.col("symbol").is_null() | ~pl.col("symbol").is_in(list(universe)))
        .then(_code("symbol_not_in_universe"))
        .when(
            pl.col("ts").is_null()
            | pl.any_horizontal(p.is_null() | p.is_nan() for p in [*prices, pl.col("volume")])
        )
        .then(_code("missing_value"))
        .when(pl.any_horizontal(v.is_infinite().fill_null(False) for v in finite))
        .then(_code("nonfinite_value"))
        .when(
            pl.any_horizontal(
                p.gt(rules.max_price) | p.lt(rules.min_price) & p.gt(0) for p in prices
            )
            | pl.col("volume").gt(rules.max_volume)
        )
        .then(_code("implausible_value"))
        .when(pl.any_horizontal(p.le(0) for p in prices))
        .then(_code("nonpositive_price"))
        .when(pl.col("volume") < 0)
        .then(_code("negative_volume"))
        .when(
            (pl.col("low") > pl.min_horizontal("open", "close"))
            | (pl.col("high") < pl.max_horizontal("open", "close"))
            | (pl.col("low") > pl.col("high"))
        )
        .then(_code("ohlc_violation"))
        .when(pl.col("start").is_null())
        .then(_code("not_a_session"))
    )
    if tf.is_daily:
        return rule
    return (
        rule.when((pl.col("ts") < pl.col("start")) | (bar_end > pl.col("end")))
        .then(_code("outside_session"))
        .when((offset_us % tf_us != 0) | (bar_end > seg_end))
        .then(_code("off_grid"))
    )


def _detail(rule: str, session: Session, daily: bool = False) -> pl.Expr | None:
    fmt_ts = pl.col("ts").dt.convert_time_zone("America/New_York").dt.strftime("%Y-%m-%d %H:%M")
    return {
        "unparseable_value": pl.col("parse_error"),
        "symbol_not_in_universe": pl.format(
            "symbol {} is not in the universe", pl.col("symbol").fill_null("<empty>")
        ),
        "missing_value": pl.lit("a timestamp, price or volume is empty or NaN"),
        "nonfinite_value": pl.format(
            "open {} high {} low {} close {} volume {} vwap {}",
            "open",
            "high",
            "low",
            "close",
            "volume",
            pl.col("vwap").fill_null(float("nan")),
        ),
        "implausible_value": pl.format(
            "open {} high {} low {} close {} volume {}: outside the configured bounds "
            "(validation: min_price, max_price, max_volume)",
            "open",
            "high",
            "low",
            "close",
            "volume",
        ),
        "nonpositive_price": pl.format(
            "open {} high {} low {} close {}", "open", "high", "low", "close"
        ),
        "negative_volume": pl.format("volume {}", "volume"),
        "ohlc_violation": pl.format(
            "open {} high {} low {} close {}", "open", "high", "low", "close"
        ),
        "not_a_session": (
            pl.format("{} is not a trading session", pl.col("session_date"))
            if daily
            else pl.format("{} ET is not a trading session", fmt_ts)
        ),
        "outside_session": pl.format(
            "bar starting {} ET lies outside the {} session {}-{} ET",
            fmt_ts,
            pl.lit(session),
            pl.col("start").dt.convert_time_zone("America/New_York").dt.strftime("%H:%M"),
            pl.col("end").dt.convert_time_zone("America/New_York").dt.strftime("%H:%M"),
        ),
        "off_grid": pl.format("bar starting {} ET is not on the bar grid", fmt_ts),
    }.get(rule)


def validate_bars(
    raw: pl.DataFrame,
    *,
    universe: Iterable[str],
    timeframe: Timeframe,
    session: Session,
    calendar: str | SessionCalendar = "XNYS",
    rules: ValidationConfig | None = None,
    previous_close: pl.DataFrame | None = None,
) -> ValidationResult:
    """Split a raw batch (:data:`~pipelines.data.schema.RAW_SCHEMA`) into stored bars and
    quarantined rows; ``rows_in == rows_stored + rows_quarantined`` always holds.

    ``timeframe`` is the source's bar length; ``session`` is ``"regular"`` or ``"extended"``;
    ``calendar`` is an exchange_calendars name (default ``XNYS``) or a prepared calendar.
    ``previous_close`` (``symbol``, ``prev_close``) gives the close before this batch, so that a
    jump at the batch's first bar is flagged too.
    """
    if dict(raw.schema) != RAW_SCHEMA:
        raise TypeError(f"validate_bars needs RAW_SCHEMA, got {raw.schema}")
    rules = rules or ValidationConfig()
    universe = list(universe)
    rows_in = raw.height
    if rows_in == 0:
        return ValidationResult(
            0,
            pl.DataFrame(schema=STORED_BAR_SCHEMA),
            pl.DataFrame(schema=QUARANTINE_SCHEMA),
            pl.DataFrame(schema=GAP_SCHEMA),
            {},
        )

    # The provenance columns (raw JSON text above all) are joined back for rejected rows only.
    provenance = ["source", "source_file", "source_row", "raw"]
    df = raw.select(pl.exclude(provenance)).with_row_index("_row")
    df = df.with_columns(session_date=session_dates(pl.col("ts")))
    dates = df["session_date"].drop_nulls()
    if not isinstance(calendar, str):
        cal = calendar
    elif dates.len():
        cal = sessions_between(calendar, dates.min(), dates.max())  # type: ignore[arg-type]
    else:  # no parseable timestamp at all: every row fails before the calendar is needed
        cal = SessionCalendar(calendar, pl.DataFrame(schema=SESSION_SCHEMA))
    window = cal.window("regular" if timeframe.is_daily else session)
    df = df.join(window, on="session_date", how="left")
    if timeframe.is_daily:
        df = df.with_columns(ts=pl.coalesce("start", "ts"))
    df = df.with_columns(_code=_first_failure(universe, timeframe, session, rules))

    # Duplicates among the rows that passed every other rule.
    value_cols = [c for c in BAR_SCHEMA if c not in ("symbol", "ts")]
    key = ["symbol", "ts"]
    passed = pl.col("_code").is_null()
    candidates = df.select("_row", *key, *value_cols, "_code").filter(
        passed & pl.struct(key).is_duplicated().over(passed)
    )
    dup = (
        candidates.with_columns(
            _n=pl.len().over(key),
            _distinct=pl.struct(value_cols).n_unique().over(key),
            _first=pl.col("_row").min().over(key),
        )
        .select(
            "_row",
            pl.when(pl.col("_distinct") > 1)
            .then(_code("duplicate_conflict"))
            .when(pl.col("_row") != pl.col("_first"))
            .then(_code("duplicate_exact"))
            .alias("_dup_code"),
            pl.col("_first").alias("_dup_of"),
            pl.col("_n").alias("_dup_n"),
        )
        .filter(pl.col("_dup_code").is_not_null())
    )
    if dup.height:
        # A small mapping, so the wide frame gains a column instead of being joined again.
        df = df.with_columns(
            _code=pl.coalesce(
                "_code",
                pl.col("_row").replace_strict(
                    dup["_row"], dup["_dup_code"], default=None, return_dtype=pl.UInt8
                ),
            )
        )

    bad = (
        df.filter(pl.col("_code").is_not_null())
        .join(dup, on="_row", how="left")
        .with_columns(
            rule=pl.col("_code").replace_strict(
                list(range(len(RULES))), list(RULES), return_dtype=pl.String
            )
        )
    )
    detail = pl.lit(None, pl.String)
    for r in RULES:
        expr = _detail(r, session, timeframe.is_daily)
        if expr is not None:
            detail = pl.when(pl.col("rule") == r).then(expr).otherwise(detail)
    origin = raw.select(provenance).with_row_index("_row")
    bad = bad.join(origin, on="_row", how="left")
    source_row_of = origin.select(
        pl.col("_row").alias("_dup_of"), pl.col("source_row").alias("_of")
    )
    bad = bad.join(source_row_of, on="_dup_of", how="left").with_columns(
        detail=pl.when(pl.col("rule") == "duplicate_exact")
        .then(pl.format("same values as source row {}", "_of"))
        .when(pl.col("rule") == "duplicate_conflict")
        .then(pl.format("{} rows share this symbol and time with different values", "_dup_n"))
        .otherwise(detail)
    )
    quarantine = bad.sort("_row").select(pl.col(k).cast(v) for k, v in QUARANTINE_SCHEMA.items())

    good = (
        df.select(*BAR_SCHEMA, "early_close", "session_date", "_code")
        .filter(pl.col("_code").is_null())
        .drop("_code")
    )
    good = good if _sorted_by_symbol_ts(good) else good.sort("symbol", "ts")
    prev = pl.col("close").shift(1).over("symbol")
    if previous_close is not None and previous_close.height:
        good = good.join(previous_close.select("symbol", "prev_close"), on="symbol", how="left")
        prev = prev.fill_null(pl.col("prev_close"))
    log_ret = (pl.col("close") / prev).log().abs()
    bars = good.with_columns(
        bar_count=pl.lit(1, pl.Int32),
        flags=(
            pl.when(log_ret > rules.max_abs_log_return).then(BarFlag.PRICE_JUMP).otherwise(0)
            | pl.when(pl.col("early_close")).then(BarFlag.HALF_DAY).otherwise(0)
            | pl.when(pl.col("volume") == 0).then(BarFlag.ZERO_VOLUME).otherwise(0)
        ).cast(pl.Int32),
    ).select(pl.col(k).cast(v) for k, v in STORED_BAR_SCHEMA.items())

    gaps = calendar_gaps(
        bars,
        timeframe=timeframe,
        session=session,
        calendar=cal,
        session_date=good["session_date"],
    )
    by_reason = dict(quarantine.group_by("rule").len().sort("rule").iter_rows())
    return ValidationResult(rows_in, bars, quarantine, gaps, by_reason)


def _sorted_by_symbol_ts(frame: pl.DataFrame) -> bool:
    later = (pl.col("symbol") > pl.col("symbol").shift(1)) | (
        (pl.col("symbol") == pl.col("symbol").shift(1)) & (pl.col("ts") > pl.col("ts").shift(1))
    )
    return bool(frame.select(later.slice(1).all()).item()) if frame.height > 1 else True


def calendar_gaps(
    bars: pl.DataFrame,
    *,
    timeframe: Timeframe,
    session: Session,
    calendar: SessionCalendar,
    session_date: pl.Series | None = None,
) -> pl.DataFrame:
    """Per symbol and session inside the symbol's span: bars expected by the calendar, present
    and missing. Sessions with no bar at all appear with ``present == 0``. ``session_date``
    (the New York date of each bar) saves recomputing it when the caller has it."""
    if bars.height == 0:
        return pl.DataFrame(schema=GAP_SCHEMA)
    dates = session_dates(pl.col("ts")) if session_date is None else pl.lit(session_date)
    per_session = (
        pl.lit(1)
        if timeframe.is_daily
        else (pl.col("end") - pl.col("start")).dt.total_minutes() // timeframe.minutes
    )
    window = calendar.window(session).with_columns(expected=per_session)
    present = bars.group_by("symbol", session_date=dates).agg(present=pl.len())
    spans = present.group_by("symbol").agg(
        first=pl.col("session_date").min(), last=pl.col("session_date").max()
    )
    expected = spans.join(window.select("session_date", "expected"), how="cross").filter(
        pl.col("session_date").is_between(pl.col("first"), pl.col("last"))
    )
    return (
        expected.join(present, on=["symbol", "session_date"], how="left")
        .with_columns(present=pl.col("present").fill_null(0))
        .with_columns(missing=(pl.col("expected") - pl.col("present")).clip(lower_bound=0))
        .filter(pl.col("missing") > 0)
        .sort("symbol", "session_date")
        .select(pl.col(k).cast(v) for k, v in GAP_SCHEMA.items())
    )
