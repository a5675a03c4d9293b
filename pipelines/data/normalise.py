"""Turn a vendor's frame into a raw batch: canonical names, UTC, bar-start labels.

Nothing is dropped here. A value that cannot be parsed becomes null and the row carries a
``parse_error`` naming the column and the value, so that validation quarantines it. Problems
that concern the whole file (a missing column, timestamps whose time zone is unknowable or mixed)
raise :class:`SourceError` naming the file and, where it applies, the row.
"""

from __future__ import annotations

from typing import Literal

import polars as pl

from pipelines.config import ColumnMap
from pipelines.data.schema import RAW_SCHEMA
from pipelines.timeframes import Timeframe

_OFFSET = r"(Z|z|[+-]\d{2}:?\d{2})$"
_NAIVE_FORMATS = ("%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M")
_AWARE_FORMATS = ("%Y-%m-%d %H:%M:%S%.f%z", "%Y-%m-%d %H:%M%z")


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
    return {"symbol": columns.symbol, "vwap": columns.vwap, "trade_count": columns.trade_count}


def check_columns(present: list[str], columns: ColumnMap, where: str) -> None:
    """Raise if a mapped column is absent, listing what the file has."""
    wanted = {**_required(columns), **{k: v for k, v in _optional(columns).items() if v}}
    missing = [f"{src!r} (for {field})" for field, src in wanted.items() if src not in present]
    if missing:
        raise SourceError(
            f"{where}: column {', '.join(missing)} not found; the file has {present}. "
            "Map the source's names in the source config under `columns:`"
        )


def _parse_timestamps(df: pl.DataFrame, col: str, timezone: str | None, where: str) -> pl.Expr:
    dtype = df.schema[col]
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is None:
            if timezone is None:
                raise SourceError(
                    f"{where}: column {col!r} holds timestamps without a time zone; declare "
                    "the zone of its wall clock as `timezone:` in the source config "
                    "(for example America/New_York)"
                )
            return _localise(pl.col(col), timezone)
        if timezone is not None and dtype.time_zone != timezone:
            raise SourceError(
                f"{where}: column {col!r} is in time zone {dtype.time_zone} but the source config "
                f"declares {timezone}; remove `timezone:` or make them agree"
            )
        return pl.col(col).dt.convert_time_zone("UTC")
    if isinstance(dtype, pl.Date):
        raise SourceError(f"{where}: column {col!r} holds dates; intraday bars need date and time")
    text = pl.col(col).cast(pl.String).str.strip_chars().str.replace("T", " ", literal=True)
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
    if n_aware:
        text = text.str.replace(r"[Zz]$", "+00:00")
        return pl.coalesce(
            [text.str.to_datetime(f, time_zone="UTC", strict=False) for f in _AWARE_FORMATS]
        )
    if timezone is None:
        raise SourceError(
            f"{where}: column {col!r} holds timestamps without a UTC offset; declare the zone "
            "of its wall clock as `timezone:` in the source config (for example America/New_York)"
        )
    naive = pl.coalesce([text.str.to_datetime(f, strict=False) for f in _NAIVE_FORMATS])
    return _localise(naive, timezone)


def _localise(expr: pl.Expr, timezone: str) -> pl.Expr:
    # Ambiguous or skipped wall-clock times (DST changes) become null and are quarantined.
    return expr.dt.replace_time_zone(
        timezone, ambiguous="null", non_existent="null"
    ).dt.convert_time_zone("UTC")


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
) -> pl.DataFrame:
    """Rename, parse and relabel ``df`` into :data:`~pipelines.data.schema.RAW_SCHEMA`.

    ``label="end"`` means a bar stamped 09:45 covers 09:30-09:45; it is relabelled to its start.
    ``symbol`` gives the symbol when the file has no symbol column.
    """
    if df.height == 0:
        raise SourceError(f"{source_file}: the file has no rows")
    check_columns(df.columns, columns, source_file)
    if symbol is None and columns.symbol is None:
        raise SourceError(f"{source_file}: no symbol column is mapped and none was given")

    ts = _parse_timestamps(df, columns.timestamp, timezone, source_file)
    if label == "end":
        ts = ts - pl.duration(minutes=timeframe.minutes)
    ts = ts.dt.cast_time_unit("us").dt.convert_time_zone("UTC")

    fields: dict[str, pl.Expr] = {
        "symbol": (
            pl.col(columns.symbol).cast(pl.String).str.strip_chars()
            if columns.symbol
            else pl.lit(symbol, pl.String)
        ),
        "ts": ts,
        **{
            name: _number(df, getattr(columns, name), pl.Float64())
            for name in ("open", "high", "low", "close", "volume")
        },
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
    base = df.with_row_index("source_row")
    any_failed = base.select(pl.any_horizontal(failed.values()).arg_true()).to_series()
    # Messages are built for the failing rows only (usually none), not for every row.
    messages = (
        base[any_failed]
        .select(
            pl.concat_str(
                [
                    pl.when(failed[name]).then(
                        pl.format(
                            f"column {src!r} ({name}): cannot parse {{}}",
                            pl.col(src).cast(pl.String),
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
