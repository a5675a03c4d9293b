"""The canonical bar frame every source produces and every later stage reads.

Raw batches (straight from a source, before validation) carry the raw values as text beside the
parsed ones, so that a rejected row can be quarantined with exactly what was received.
"""

from __future__ import annotations

import polars as pl

PRICE_COLUMNS = ("open", "high", "low", "close")

BAR_SCHEMA: dict[str, pl.DataType] = {
    "symbol": pl.String(),
    "ts": pl.Datetime("us", "UTC"),
    "open": pl.Float64(),
    "high": pl.Float64(),
    "low": pl.Float64(),
    "close": pl.Float64(),
    "volume": pl.Float64(),
    "vwap": pl.Float64(),
    "trade_count": pl.Int64(),
}
"""Validated bars: ``ts`` is the bar START in UTC; prices in the quote currency (USD);
``volume`` in shares; ``vwap`` and ``trade_count`` are null where the source lacks them."""

STORED_BAR_SCHEMA: dict[str, pl.DataType] = {
    **BAR_SCHEMA,
    "bar_count": pl.Int32(),
    "flags": pl.Int32(),
}
"""Bars as stored: ``bar_count`` counts the source bars inside (1 for source bars);
``flags`` is a bit set of :class:`BarFlag` values."""

RAW_SCHEMA: dict[str, pl.DataType] = {
    **BAR_SCHEMA,
    "source": pl.String(),
    "source_file": pl.String(),
    "source_row": pl.Int64(),
    "raw": pl.String(),
    "parse_error": pl.String(),
}
"""A raw batch: the parsed fields (null where unparseable), where each row came from, the row as
received (JSON text) and, when a value could not be parsed, which and why."""


class BarFlag:
    """Bit flags on stored bars: properties worth knowing that do not make a bar wrong."""

    PRICE_JUMP = 1
    HALF_DAY = 2
    ZERO_VOLUME = 4


def empty_raw() -> pl.DataFrame:
    return pl.DataFrame(schema=RAW_SCHEMA)
