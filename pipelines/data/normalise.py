"""Turn a vendor's frame into a raw batch: canonical names, UTC, bar-start labels.

Nothing is dropped here. A value that cannot be parsed becomes null and the row carries a
``parse_error`` naming the column and the value, so that validation quarantines it. Problems
that concern the whole file (a missing column, timestamps whose time zone is unknowable or mixed)
raise :class:`SourceError` naming the file and, where it applies, the row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import polars as pl

from pipelines.config import ADJ_CLOSE_NAMES, ColumnMap
from pipelines.data.schema import PRICE_COLUMNS, RAW_SCHEMA
from pipelines.timeframes import Timeframe

_OFFSET = r"(Z|z|[+-]\d{2}:?\d{2})$"
_NAIVE_FORMATS = ("%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M")
_AWARE_FORMATS = ("%Y-%m-%d %H:%M:%S%.f%z", "%Y-%m-%d %H:%M%z")
_DATE_ONLY = r"^\d{4}-\d{2}-\d{2}$"
NEW_YORK = "America/New_York"

ACCEPTED_TIMESTAMPS = (
    "YYYY-MM-DD HH:MM[:SS[.ffffff]], a T allowed between date and time and a UTC offset "
    "(Z, -05:00) after it; YYYY-MM-DD for daily bars; any other form through the source's "
    "`timestamp_format:` (a strftime format such as '%m/%d/%Y %H:%M', or epoch_s / epoch_ms)"
)


class SourceError(ValueError):
    """A source file or response cannot be read as bars; the message says which and why."""


def _required(columns: ColumnMap) -> dict[str, str]:
    return {
        "timestamp": columns.timestamp,
        "open": columns.open,
        "high": columns.high,
        "low": columns.low,
        "close": columns.close,
        "volume": columns.volume,
    }


def _optional(columns: ColumnMap) -> dict[str, str | None]:
    return {
        "symbol": columns.symbol,
        "vwap": columns.vwap,
        "trade_count": columns.trade_count,
        "adj_close": columns.adj_close,
    }


def check_columns(
    present: list[str], columns: ColumnMap, where: str, adjustment: str = "unknown"
) -> None:
    """Raise if a mapped column is absent, listing what the file has, or if the file has an
    adjusted close while the source declares nothing about adjustment."""
    wanted = {**_required(columns), **{k: v for k, v in _optional(columns).items() if v}}
    missing = [f"{src!r} (for {field})" for field, src in wanted.items() if src not in present]
    if missing:
        raise SourceError(
            f"{where}: column {', '.join(missing)} not found; the file has {present}. "
            "Map the source's names in the source config under `columns:`"
        )
    adjusted = [c for c in present if c.strip().lower() in ADJ_CLOSE_NAMES]
    if adjusted and columns.adj_close is None and adjustment == "unknown":
        raise SourceError(
            f"{where}: the file has an adjusted close {adjusted[0]!r} and the source declares "
            f"no `adjustment:`. Use it with `columns: {{adj_close: {adjusted[0]!r}}}` and "
            "`adjustment: total_return`, or keep the close as given and declare what it is "
            "(`adjustment: split` or `raw`)"
        )


@dataclass(frozen=True)
class _Parsed:
    """Timestamps parsed to UTC, and for the rows that failed, why (None: not parseable)."""

    ts: pl.Expr
    why: pl.Expr | None = None


def _parse_timestamps(
    df: pl.DataFrame,
    col: str,
    timezone: str | None,
    where: str,
    *,
    daily: bool = False,
    timestamp_format: str | None = None,
) -> _Parsed:
    if daily:
        return _parse_daily(df, col, where, timestamp_format)
    dtype = df.schema[col]
    zone = timezone
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is None:
            if zone is None:
                raise SourceError(
                    f"{where}: column {col!r} holds timestamps without a time zone; declare "
                    "the zone of its wall clock as `timezone:` in the source config "
                    "(for example America/New_York)"
                )
            return _localise(pl.col(col), zone)
        if timezone is not None and dtype.time_zone != timezone:
            raise SourceError(
                f"{where}: column {col!r} is in time zone {dtype.time_zone} but the source config "
                f"declares {timezone}; remove `timezone:` or make them agree"
            )
        return _Parsed(pl.col(col).dt.convert_time_zone("UTC"))
    if isinstance(dtype, pl.Date):
        raise SourceError(
            f"{where}: column {col!r} holds dates; intraday bars need date and time "
            "(for daily bars set the universe's `timeframe: 1d`)"
        )
    if timestamp_format is not None:
        return _custom_format(df, col, zone, where, timestamp_format)
    text = pl.col(col).cast(pl.String).str.strip_chars().str.replace("T", " ", literal=True)
    date_only = text.str.contains(_DATE_ONLY)
    has_offset = df.select(text.str.contains(_OFFSET).alias("o"))["o"]
    n_aware = int(has_offset.sum())
    n_values = int(has_offset.len() - has_offset.null_count())
    if 0 < n_aware < n_values:
        first_naive = int(has_offset.arg_min() or 0)
        first_aware = int(has_offset.arg_max() or 0)
        raise SourceError(
            f"{where}: column {col!r} mixes timestamps with a UTC offset (row {first_aware}: "
            f"{df[col][first_aware]!r}) and without one (row {first_naive}: "
            f"{df[col][first_naive]!r}); a file must use one convention"
        )
    naive = pl.coalesce([text.str.to_datetime(f, strict=False) for f in _NAIVE_FORMATS])
    hint = (
        pl.when(date_only)
        .then(
            pl.lit(
                "a date without a time: intraday bars need a time (for daily bars set the "
                "universe's `timeframe: 1d`)"
            )
        )
        .otherwise(pl.lit(f"accepted forms: {ACCEPTED_TIMESTAMPS}"))
    )
    if n_aware:
        aware_text = text.str.replace(r"[Zz]$", "+00:00")
        aware = pl.coalesce(
            [aware_text.str.to_datetime(f, time_zone="UTC", strict=False) for f in _AWARE_FORMATS]
        )
        if timezone is not None:
            _refuse_contradicting_offsets(df, col, aware, aware_text, timezone, where)
        return _Parsed(aware, hint)
    if zone is None and df.select(text.is_not_null().any() & date_only.all()).item():
        raise SourceError(
            f"{where}: column {col!r} holds dates without a time (the first is "
            f"{df[col].drop_nulls()[0]!r}): intraday bars need a time; for daily bars set the "
            "universe's `timeframe: 1d`"
        )
    if zone is None:
        raise SourceError(
            f"{where}: column {col!r} holds timestamps without a UTC offset; declare the zone "
            "of its wall clock as `timezone:` in the source config (for example America/New_York)"
        )
    local = _localise(naive, zone)
    why = pl.when(naive.is_not_null()).then(local.why).otherwise(hint)
    return _Parsed(local.ts, why)


def _parse_daily(df: pl.DataFrame, col: str, where: str, timestamp_format: str | None) -> _Parsed:
    """A daily bar's session is the date as written, in the value's own zone or offset: a
    vendor that stamps the session 2019-01-03 as ``2019-01-03T00:00:00Z`` means that session,
    although it is 19:00 of the day before in New York. Epoch times are read as UTC dates."""
    dtype = df.schema[col]
    hint = pl.lit(f"accepted forms: {ACCEPTED_TIMESTAMPS}")
    if isinstance(dtype, pl.Date):
        return _Parsed(_session_date(pl.col(col)))
    if isinstance(dtype, pl.Datetime):
        return _Parsed(_session_date(pl.col(col).dt.date()))
    raw = pl.col(col).cast(pl.String).str.strip_chars()
    if timestamp_format in ("epoch_s", "epoch_ms"):
        epoch = _epoch(raw, timestamp_format)
        return _Parsed(_session_date(epoch.dt.date()), _epoch_why(timestamp_format))
    if timestamp_format is not None:
        hint = pl.lit(f"does not match the source's timestamp_format {timestamp_format!r}")
        return _Parsed(_session_date(raw.str.to_date(timestamp_format, strict=False)), hint)
    text = raw.str.replace("T", " ", literal=True)
    aware_text = text.str.replace(r"[Zz]$", "+00:00")
    well_formed = (
        text.str.contains(_DATE_ONLY)
        | pl.any_horizontal(
            text.str.to_datetime(f, strict=False).is_not_null() for f in _NAIVE_FORMATS
        )
        | pl.any_horizontal(
            aware_text.str.to_datetime(f, time_zone="UTC", strict=False).is_not_null()
            for f in _AWARE_FORMATS
        )
    )
    written = text.str.slice(0, 10).str.to_date("%Y-%m-%d", strict=False)
    return _Parsed(_session_date(pl.when(well_formed).then(written)), hint)


EPOCH_RANGE_S = (0, 4_102_444_800)
"""Unix times read as bar times: 1970-01-01 up to 2100-01-01 (UTC), in seconds. Outside it a
value is a unit mistake (milliseconds read as seconds) or garbage, and polars would wrap or
overflow it into a time no window holds."""


def _epoch(value: pl.Expr, fmt: str) -> pl.Expr:
    """Unix time (``epoch_s`` or ``epoch_ms``) as a UTC instant; null outside
    :data:`EPOCH_RANGE_S` or when not a whole number."""
    number = value.cast(pl.String).str.strip_chars().cast(pl.Int64, strict=False)
    scale = 1 if fmt == "epoch_s" else 1000
    lo, hi = EPOCH_RANGE_S
    plausible = pl.when(number.is_between(lo * scale, hi * scale)).then(number)
    return pl.from_epoch(plausible * (1000 // scale), time_unit="ms").dt.replace_time_zone("UTC")


def _epoch_why(fmt: str) -> pl.Expr:
    return pl.lit(f"not a whole {fmt} value between 1970 and 2100")


def _session_date(d: pl.Expr) -> pl.Expr:
    # Noon New York: never inside a DST change, and its New York date is the session's.
    return (
        d.cast(pl.Date)
        .cast(pl.Datetime("us"))
        .dt.offset_by("12h")
        .dt.replace_time_zone(NEW_YORK)
        .dt.convert_time_zone("UTC")
    )


def _custom_format(df: pl.DataFrame, col: str, zone: str | None, where: str, fmt: str) -> _Parsed:
    hint = pl.lit(f"does not match the source's timestamp_format {fmt!r}")
    if fmt in ("epoch_s", "epoch_ms"):
        epoch = _epoch(pl.col(col), fmt)
        return _Parsed(epoch, _epoch_why(fmt))
    text = pl.col(col).cast(pl.String).str.strip_chars()
    if "%z" in fmt or "%Z" in fmt:
        return _Parsed(text.str.to_datetime(fmt, time_zone="UTC", strict=False), hint)
    if zone is None:
        raise SourceError(
            f"{where}: timestamp_format {fmt!r} has no UTC offset (%z); declare the zone of the "
            "wall clock as `timezone:` in the source config (for example America/New_York)"
        )
    naive = text.str.to_datetime(fmt, strict=False)
    local = _localise(naive, zone)
    return _Parsed(local.ts, pl.when(naive.is_not_null()).then(local.why).otherwise(hint))


def _refuse_contradicting_offsets(
    df: pl.DataFrame, col: str, aware: pl.Expr, aware_text: pl.Expr, timezone: str, where: str
) -> None:
    """A declared zone and the file's own offsets must agree, row by row."""
    wall = pl.coalesce(
        [aware_text.str.slice(0, 19).str.to_datetime(f, strict=False) for f in _NAIVE_FORMATS]
    )
    expected = wall.dt.replace_time_zone(
        timezone, ambiguous="null", non_existent="null"
    ).dt.convert_time_zone("UTC")
    contra = df.select((aware != expected).fill_null(False).alias("c"))["c"]
    if contra.any():
        row = int(contra.arg_max() or 0)
        raise SourceError(
            f"{where}: column {col!r} row {row} ({df[col][row]!r}) carries a UTC offset that "
            f"contradicts the declared `timezone: {timezone}` ({int(contra.sum())} rows do); "
            "remove `timezone:` to trust the offsets, or fix the file"
        )


def _localise(expr: pl.Expr, timezone: str) -> _Parsed:
    # Skipped or repeated wall-clock times (DST changes) become null and are quarantined, named.
    ts = expr.dt.replace_time_zone(
        timezone, ambiguous="null", non_existent="null"
    ).dt.convert_time_zone("UTC")
    repeated = expr.dt.replace_time_zone(timezone, ambiguous="earliest", non_existent="null")
    shown = expr.dt.strftime("%Y-%m-%d %H:%M")
    why = (
        pl.when(ts.is_not_null())
        .then(pl.lit(None, pl.String))
        .when(repeated.is_not_null())
        .then(
            pl.format(
                "{} is ambiguous in {} (clocks go back: a DST overlap); write UTC offsets",
                shown,
                pl.lit(timezone),
            )
        )
        .otherwise(
            pl.format(
                "{} does not exist in {} (clocks go forward: a DST gap)", shown, pl.lit(timezone)
            )
        )
    )
    return _Parsed(ts, why)


def _number(df: pl.DataFrame, col: str, dtype: pl.DataType) -> pl.Expr:
    if df.schema[col] == pl.String:
        return pl.col(col).str.strip_chars().cast(dtype, strict=False)
    return pl.col(col).cast(dtype, strict=False)


def normalise_frame(
    df: pl.DataFrame,
    columns: ColumnMap,
    *,
    timezone: str | None,
    label: Literal["start", "end"],
    timeframe: Timeframe,
    source: str,
    source_file: str,
    symbol: str | None = None,
    timestamp_format: str | None = None,
    adjustment: str = "unknown",
) -> pl.DataFrame:
    """Rename, parse and relabel ``df`` into :data:`~pipelines.data.schema.RAW_SCHEMA`.

    ``label="end"`` means a bar stamped 09:45 covers 09:30-09:45; it is relabelled to its start.
    A daily bar keeps a time inside its session (its session date at noon New York time, for a
    date-only value); validation labels it with its session's open. ``symbol`` gives the symbol
    when the file has no symbol column. With ``columns.adj_close`` mapped, open, high, low and
    close are scaled by ``adj_close / close``.

    A file none of whose timestamps parses is refused whole (naming the accepted forms): its
    rows could not be placed in any window, so they would be lost rather than quarantined.
    """
    if df.height == 0:
        raise SourceError(f"{source_file}: the file has no rows")
    check_columns(df.columns, columns, source_file, adjustment)
    if symbol is None and columns.symbol is None:
        raise SourceError(f"{source_file}: no symbol column is mapped and none was given")

    parsed = _parse_timestamps(
        df,
        columns.timestamp,
        timezone,
        source_file,
        daily=timeframe.is_daily,
        timestamp_format=timestamp_format,
    )
    ts = parsed.ts
    if label == "end" and not timeframe.is_daily:
        ts = ts - pl.duration(minutes=timeframe.minutes)
    ts = ts.dt.cast_time_unit("us").dt.convert_time_zone("UTC")
    _refuse_unplaceable(df, columns.timestamp, ts, parsed.why, source_file)

    prices = {name: _number(df, getattr(columns, name), pl.Float64()) for name in PRICE_COLUMNS}
    if columns.adj_close is not None:
        factor = _number(df, columns.adj_close, pl.Float64()) / prices["close"]
        prices = {name: expr * factor for name, expr in prices.items()}
    fields: dict[str, pl.Expr] = {
        "symbol": (
            pl.col(columns.symbol).cast(pl.String).str.strip_chars()
            if columns.symbol
            else pl.lit(symbol, pl.String)
        ),
        "ts": ts,
        **prices,
        "volume": _number(df, columns.volume, pl.Float64()),
        "vwap": _number(df, columns.vwap, pl.Float64())
        if columns.vwap
        else pl.lit(None, pl.Float64),
        "trade_count": (
            _number(df, columns.trade_count, pl.Int64())
            if columns.trade_count
            else pl.lit(None, pl.Int64)
        ),
    }
    sources = {"ts": columns.timestamp, **{k: getattr(columns, k) for k in fields if k != "ts"}}
    checked = [(name, src) for name, src in sources.items() if src is not None]
    failed = {name: fields[name].is_null() & pl.col(src).is_not_null() for name, src in checked}
    if columns.adj_close is not None:
        adj = _number(df, columns.adj_close, pl.Float64())
        checked.append(("adj_close", columns.adj_close))
        failed["adj_close"] = adj.is_null() & pl.col(columns.adj_close).is_not_null()
    base = df.with_row_index("source_row")
    any_failed = base.select(pl.any_horizontal(failed.values()).arg_true()).to_series()
    why = {"ts": parsed.why} if parsed.why is not None else {}
    # Messages are built for the failing rows only (usually none), not for every row.
    messages = (
        base[any_failed]
        .select(
            pl.concat_str(
                [
                    pl.when(failed[name]).then(
                        pl.format(
                            f"column {src!r} ({name}): cannot parse {{}}"
                            + ("; {}" if name in why else ""),
                            pl.col(src).cast(pl.String),
                            *([why[name]] if name in why else []),
                        )
                    )
                    for name, src in checked
                ],
                separator="; ",
                ignore_nulls=True,
            )
        )
        .to_series()
    )
    parse_error = pl.repeat(None, df.height, dtype=pl.String, eager=True).alias("parse_error")
    if len(any_failed):
        parse_error = parse_error.scatter(any_failed, messages)
    out = base.select(
        *(expr.alias(name) for name, expr in fields.items()),
        pl.lit(source, pl.String).alias("source"),
        pl.lit(source_file, pl.String).alias("source_file"),
        pl.col("source_row").cast(pl.Int64),
        pl.struct(pl.exclude("source_row")).struct.json_encode().alias("raw"),
    ).with_columns(parse_error)
    return out.select(pl.col(k).cast(v) for k, v in RAW_SCHEMA.items())


def _refuse_unplaceable(
    df: pl.DataFrame, col: str, ts: pl.Expr, why: pl.Expr | None, where: str
) -> None:
    """Raise when no timestamp of the file parses (or none is given): such rows belong to no
    window, so they could be neither stored nor quarantined."""
    present = df.select(pl.col(col).is_not_null().sum()).item()
    if present and df.select(ts.is_not_null().any()).item():
        return
    if not present:
        raise SourceError(
            f"{where}: none of its {df.height} rows has a value in the timestamp column "
            f"{col!r}: check the file and the source's `columns: {{timestamp: ...}}`"
        )
    first = df.select(pl.col(col).drop_nulls().first()).item()
    reason = df.select(why.drop_nulls().first()).item() if why is not None else None
    raise SourceError(
        f"{where}: none of its {present} timestamps in column {col!r} parses (the first is "
        f"{str(first)!r}): {reason or f'accepted forms: {ACCEPTED_TIMESTAMPS}'}"
    )
