"""The final holdout: rows no tuning, training, selection or promotion ever sees.

A holdout is declared in the settings as a time range (every row from the New York date
``start`` on) and a list of symbols (every row of theirs). Those rows are split off before
anything is fitted; the development rows keep only labels that end before the holdout starts
(a label whose span reaches into the holdout would carry its prices into training), less an
embargo. The holdout is scored once per model version (:mod:`pipelines.models.registry`
refuses a second read) and reported apart from the walk-forward's out-of-sample figures.

Example: ``HoldoutConfig(start=date(2022, 6, 1), symbols=("AMZN", "JPM"))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import polars as pl

from pipelines.bars.calendar import NEW_YORK


class HoldoutError(ValueError):
    """The holdout cannot be split off or read as asked; the message says why."""


@dataclass(frozen=True)
class HoldoutConfig:
    """``start``: the first New York date of the time holdout (None: no time holdout);
    ``symbols``: symbols held out over the whole range; ``embargo``: development labels must
    end this long before ``start``."""

    start: date | None = None
    symbols: tuple[str, ...] = ()
    embargo: timedelta = timedelta(hours=4)

    @property
    def empty(self) -> bool:
        return self.start is None and not self.symbols

    @property
    def start_utc(self) -> datetime | None:
        if self.start is None:
            return None
        return datetime.combine(self.start, time(0), ZoneInfo(NEW_YORK)).astimezone(UTC)

    def describe(self) -> str:
        parts = []
        if self.start is not None:
            parts.append(f"every row from {self.start.isoformat()} (New York)")
        if self.symbols:
            parts.append(f"every row of {', '.join(self.symbols)}")
        return " and ".join(parts) if parts else "none"


@dataclass(frozen=True)
class HoldoutSplit:
    """``development``: rows for tuning, training, selection and promotion; ``holdout``: the
    held-out rows, each with its ``segment`` (``time``: a development symbol after ``start``;
    ``symbol``: a held-out symbol before it; ``both``); ``purged``: development rows dropped
    because their label reaches into the time holdout (or its embargo)."""

    development: pl.DataFrame
    holdout: pl.DataFrame
    purged: int


def split_holdout(data: pl.DataFrame, config: HoldoutConfig) -> HoldoutSplit:
    """Split labelled rows (``symbol``, ``ts``, ``t1``, ...) into development and holdout."""
    for column in ("symbol", "ts", "t1"):
        if column not in data.columns:
            raise HoldoutError(f"the rows need a {column!r} column to split off a holdout")
    start = config.start_utc
    by_symbol = pl.col("symbol").is_in(list(config.symbols))
    by_time = pl.lit(False) if start is None else pl.col("ts") >= start
    held = data.filter(by_symbol | by_time).with_columns(
        segment=pl.when(by_symbol & by_time)
        .then(pl.lit("both"))
        .when(by_symbol)
        .then(pl.lit("symbol"))
        .otherwise(pl.lit("time"))
    )
    rest = data.filter(~(by_symbol | by_time))
    development = rest
    if start is not None:
        development = rest.filter(pl.col("t1") < start - config.embargo)
    if development.height == 0:
        raise HoldoutError(
            f"the holdout ({config.describe()}) leaves no development rows: move its start "
            "later or hold out fewer symbols"
        )
    return HoldoutSplit(development, held, rest.height - development.height)
