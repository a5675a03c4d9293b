"""Partitions shared by every market-data asset."""

from __future__ import annotations

import dagster as dg

from pipelines.bars.calendar import NEW_YORK
from pipelines.config import UniverseConfig


def monthly_partitions(universe: UniverseConfig) -> dg.MonthlyPartitionsDefinition:
    """One partition per New York calendar month over the whole universe.

    Months keep the count small (12 a year, whatever the number of symbols) and hold whole
    sessions, so no session is split between partitions. ``end_offset=1`` includes the current
    month for incremental updates.
    """
    return dg.MonthlyPartitionsDefinition(
        start_date=universe.history_start.replace(day=1).isoformat(),
        timezone=NEW_YORK,
        end_offset=1,
    )
