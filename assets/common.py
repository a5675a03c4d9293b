"""Small helpers every asset module uses: partition windows, check specs and results,
markdown tables, and reading the bars around a partition."""

import warnings
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import dagster as dg
import polars as pl

from pipelines.checks import CheckDefinition, CheckOutcome
from pipelines.config import UniverseConfig
from resources import TradingDatabaseResource


def partition_window(context: dg.AssetExecutionContext) -> tuple[datetime, datetime]:
    """The partition's time window as UTC instants."""
    tw = context.partition_time_window
    return tw.start.astimezone(UTC), tw.end.astimezone(UTC)


def check_specs(
    asset: str,
    definitions: Mapping[str, CheckDefinition],
    partitions_def: dg.PartitionsDefinition,
) -> list[dg.AssetCheckSpec]:
    """One spec per check of the table, blocking as the table says, evaluated per partition.

    Partitioned checks (a preview feature of Dagster 1.13) record each evaluation with its
    partition, so the latest verdict on each month can be asked for.
    """
    with warnings.catch_warnings():  # Dagster's preview notice: we use the feature on purpose
        warnings.filterwarnings("ignore", category=dg.PreviewWarning)
        return [
            dg.AssetCheckSpec(
                d.name,
                asset=asset,
                description=d.description,
                blocking=d.blocking,
                partitions_def=partitions_def,
            )
            for d in definitions.values()
        ]


def check_results(outcomes: list[CheckOutcome]) -> list[dg.AssetCheckResult]:
    return [
        dg.AssetCheckResult(
            check_name=o.name,
            passed=o.passed,
            severity=dg.AssetCheckSeverity.ERROR if o.blocking else dg.AssetCheckSeverity.WARN,
            metadata=o.metadata,
        )
        for o in outcomes
    ]


def markdown_table(frame: pl.DataFrame) -> dg.MetadataValue:
    if frame.height == 0:
        return dg.MetadataValue.md("(no rows)")
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * frame.width]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in frame.iter_rows()]
    return dg.MetadataValue.md("\n".join(lines))


def bars_around(
    trading_db: TradingDatabaseResource,
    universe: UniverseConfig,
    window: tuple[datetime, datetime],
    *,
    before_days: int,
    after_days: int = 0,
) -> pl.DataFrame:
    """Source-timeframe bars from ``before_days`` before the window to ``after_days`` after."""
    return trading_db.store().read_bars(
        timeframe=universe.base_timeframe.label,
        start=window[0] - timedelta(days=before_days),
        end=window[1] + timedelta(days=after_days),
    )
