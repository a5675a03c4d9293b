"""Partitions shared by every market-data asset."""

from __future__ import annotations

import math
from datetime import date

import dagster as dg

from pipelines.bars.calendar import NEW_YORK
from pipelines.config import UniverseConfig


def _period_start(d: date, grain: str) -> date:
    return d.replace(month=1, day=1) if grain == "year" else d.replace(day=1)


def _next_period(d: date, grain: str) -> date:
    if grain == "year":
        return date(d.year + 1, 1, 1)
    return date(d.year + (d.month == 12), d.month % 12 + 1, 1)


def market_partitions(universe: UniverseConfig) -> dg.TimeWindowPartitionsDefinition:
    """One partition per New York calendar month (intraday sources) or year (daily sources),
    from the period holding ``history_start`` to the one holding ``history_end``.

    Months keep the count small (12 a year, whatever the number of symbols) and hold whole
    sessions, so no session is split between partitions; a year of daily bars is as small as a
    month of 15-minute ones. Without ``history_end`` (live data) the partitions run to the
    current period, for incremental updates (``end_offset=1`` includes the period under way;
    it never adds a period after ``history_end``). Keys are the period's first day,
    ``YYYY-MM-DD``, at either grain.
    """
    grain = universe.partition_grain
    start = _period_start(universe.history_start, grain)
    end = None if universe.history_end is None else _next_period(universe.history_end, grain)
    if grain == "month":
        return dg.MonthlyPartitionsDefinition(
            start_date=start.isoformat(),
            end_date=None if end is None else end.isoformat(),
            timezone=NEW_YORK,
            end_offset=1,
        )
    return dg.TimeWindowPartitionsDefinition(
        start=start.isoformat(),
        end=None if end is None else end.isoformat(),
        cron_schedule="0 0 1 1 *",
        fmt="%Y-%m-%d",
        timezone=NEW_YORK,
        end_offset=1 if end is None else 0,
    )


def bars_dep(universe: UniverseConfig, before_days: int, after_days: int = 0) -> dg.AssetDep:
    """The source bars a partition reads: its own period and the periods ``before_days`` of
    warm-up (features) and ``after_days`` of look-ahead (labels) reach into, so that a backfill
    of several assets stores those bars before it builds the partition (the UI's lineage shows
    them too). Periods before the first or after the last are not required."""
    shortest = 28 if universe.partition_grain == "month" else 365
    return dg.AssetDep(
        f"bars_{universe.base_timeframe}",
        partition_mapping=dg.TimeWindowPartitionMapping(
            start_offset=-math.ceil(before_days / shortest),
            end_offset=math.ceil(after_days / shortest),
            allow_nonexistent_upstream_partitions=True,
        ),
    )
