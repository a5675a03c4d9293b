"""Small helpers every asset module uses: partition windows, check specs and results, what
the instance holds per partition, markdown tables, and reading the bars around a partition."""

import logging
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

import dagster as dg
import polars as pl
from dagster._core.event_api import PartitionKeyFilter
from dagster._core.storage.asset_check_execution_record import (
    COMPLETED_ASSET_CHECK_EXECUTION_RECORD_STATUSES,
    AssetCheckExecutionRecordStatus,
)

from pipelines.checks import CheckDefinition, CheckOutcome
from pipelines.config import UniverseConfig
from pipelines.months import PartitionRecord, PartitionState
from resources import TradingDatabaseResource

PROGRESS = logging.getLogger("quantdag.progress")
"""Progress lines of the assets. ``make run`` prints them; in the UI they are the run's log."""


def say(context: dg.AssetExecutionContext, message: str) -> None:
    """One progress line: into the run's Dagster log, and to the terminal when one listens
    (``make run`` attaches a handler to :data:`PROGRESS`; nothing else does)."""
    context.log.info(message)
    PROGRESS.info(message)


def progress_to(context: dg.AssetExecutionContext, prefix: str) -> Callable[[str], None]:
    """A progress callback for the core's long loops (stages, folds, trials, configurations):
    each line names ``prefix`` and the seconds since the callback was made."""
    began = time.monotonic()
    return lambda message: say(context, f"{prefix}: {message} [{time.monotonic() - began:.0f}s]")


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
    partition, which is what lets the training set ask for the latest verdict on each month.
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


def check_results(
    outcomes: list[CheckOutcome], definitions: Mapping[str, CheckDefinition]
) -> list[dg.AssetCheckResult]:
    """One result per declared check (``definitions``, the table the specs were built from).

    Every declared check must have its verdict: a check without one would stay "planned" for
    the partition and show in the UI as skipped. A verdict for a check that was not declared,
    or two for one, is a programming error."""
    names = [o.name for o in outcomes]
    if sorted(names) != sorted(definitions):
        raise ValueError(
            f"verdicts {sorted(names)} do not match the declared checks {sorted(definitions)}"
        )
    return [
        dg.AssetCheckResult(
            check_name=o.name,
            passed=o.passed,
            severity=dg.AssetCheckSeverity.ERROR if o.blocking else dg.AssetCheckSeverity.WARN,
            metadata=o.metadata,
        )
        for o in outcomes
    ]


_STATES = {
    dg.AssetPartitionStatus.MATERIALIZED: PartitionState.MATERIALIZED,
    dg.AssetPartitionStatus.FAILED: PartitionState.FAILED,
    dg.AssetPartitionStatus.IN_PROGRESS: PartitionState.IN_PROGRESS,
}


def partition_records(
    instance: dg.DagsterInstance, asset: dg.AssetsDefinition, keys: Sequence[str]
) -> dict[str, PartitionRecord]:
    """What the instance holds for each partition of ``asset`` that it knows of: the status of
    its materialization and the blocking checks whose latest evaluation for it failed."""
    if asset.partitions_def is None:
        raise ValueError(f"{asset.key.to_user_string()} is not partitioned: it has no months")
    status = instance.get_status_by_partition(asset.key, keys, asset.partitions_def) or {}
    blocking = [s.key for s in asset.check_specs if s.blocking and s.asset_key == asset.key]
    records = {}
    for month, st in status.items():
        if st is None:
            continue
        failed = tuple(
            check.name for check in blocking if _latest_evaluation_failed(instance, check, month)
        )
        records[month] = PartitionRecord(_STATES[st], failed)
    return records


def _latest_evaluation_failed(
    instance: dg.DagsterInstance, check: dg.AssetCheckKey, partition: str
) -> bool:
    """Whether the latest evaluation (planned executions that never ran are not evaluations)
    of ``check`` on ``partition`` failed."""
    latest = instance.event_log_storage.get_asset_check_execution_history(
        check,
        limit=1,
        status=COMPLETED_ASSET_CHECK_EXECUTION_RECORD_STATUSES,
        partition_filter=PartitionKeyFilter(key=partition),
    )
    return bool(latest) and latest[0].status is AssetCheckExecutionRecordStatus.FAILED


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
