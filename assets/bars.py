"""Bar assets: the validated source-timeframe bars and their session-aware aggregates."""

from datetime import UTC, datetime

import dagster as dg
import polars as pl

from assets.partitions import monthly_partitions
from pipelines.bars.aggregate import aggregate_bars
from pipelines.bars.checks import (
    CheckOutcome,
    aggregate_check_descriptions,
    aggregate_checks,
    ingest_check_descriptions,
    ingest_checks,
)
from pipelines.config import UniverseConfig, ValidationConfig
from pipelines.data.ingest import ingest_window
from pipelines.timeframes import Timeframe
from resources import BarSourceResource, TradingDatabaseResource

GROUP = "market_data"


def _window(context: dg.AssetExecutionContext) -> tuple[datetime, datetime]:
    tw = context.partition_time_window
    return tw.start.astimezone(UTC), tw.end.astimezone(UTC)


def _specs(asset: str, descriptions: dict[str, str]) -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec(n, asset=asset, description=d) for n, d in descriptions.items()]


def _results(outcomes: list[CheckOutcome]) -> list[dg.AssetCheckResult]:
    return [
        dg.AssetCheckResult(
            check_name=o.name,
            passed=o.passed,
            severity=dg.AssetCheckSeverity.ERROR if o.blocking else dg.AssetCheckSeverity.WARN,
            metadata=o.metadata,
        )
        for o in outcomes
    ]


def _markdown(frame: pl.DataFrame) -> dg.MetadataValue:
    if frame.height == 0:
        return dg.MetadataValue.md("(no rows)")
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * frame.width]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in frame.iter_rows()]
    return dg.MetadataValue.md("\n".join(lines))


class IngestConfig(dg.Config):  # type: ignore[misc]
    """Run config of the source-bars asset."""

    refetch: bool = False
    """Fetch the whole partition again even where it was fetched before."""


def build_source_bars_asset(
    universe: UniverseConfig, rules: ValidationConfig
) -> dg.AssetsDefinition:
    tf = universe.base_timeframe.label
    name = f"bars_{tf}"

    @dg.asset(
        name=name,
        group_name=GROUP,
        partitions_def=monthly_partitions(universe),
        check_specs=_specs(name, ingest_check_descriptions(rules)),
        kinds={"polars", "sql"},
        description=f"Validated {tf} bars of the universe from the market-data source, UTC "
        "bar starts; rejected rows go to the quarantine table with their reason.",
    )
    def source_bars(
        context: dg.AssetExecutionContext,
        config: IngestConfig,
        market_data: BarSourceResource,
        trading_db: TradingDatabaseResource,
    ) -> dg.MaterializeResult:
        store = trading_db.store()
        window = _window(context)
        report = ingest_window(
            market_data.source(universe),
            store,
            universe,
            rules,
            window,
            as_of=datetime.now(UTC),
            batch=f"{name}/{context.partition_key}",
            refetch=config.refetch,
        )
        stored = store.read_bars(timeframe=tf, start=window[0], end=window[1])
        context.log.info(
            f"{name} {context.partition_key}: {report.rows_in} rows in, {report.rows_stored} "
            f"stored, {report.rows_quarantined} quarantined {report.by_reason}"
        )
        return dg.MaterializeResult(
            metadata={
                "rows_in": report.rows_in,
                "rows_stored": report.rows_stored,
                "rows_quarantined": report.rows_quarantined,
                "quarantined_by_reason": dict(report.by_reason),
                "by_symbol": _markdown(report.by_symbol),
                "bars_changed": report.bars_changed,
                "bars_in_partition": stored.height,
                "symbols": stored["symbol"].n_unique(),
                "fetch_requests": len(report.requests),
                "missing_bars_vs_calendar": report.missing_bars,
                "short_sessions": report.short_sessions,
                "half_day_bars": report.half_day_bars,
                "zero_volume_bars": report.zero_volume_bars,
            },
            check_results=_results(ingest_checks(report, stored, rules)),
        )

    return source_bars


def build_aggregate_asset(universe: UniverseConfig, target: Timeframe) -> dg.AssetsDefinition:
    base = universe.base_timeframe
    name = f"bars_{target}"

    @dg.asset(
        name=name,
        group_name=GROUP,
        partitions_def=monthly_partitions(universe),
        deps=[f"bars_{base}"],
        check_specs=_specs(name, aggregate_check_descriptions(base)),
        kinds={"polars", "sql"},
        description=f"{target} bars aggregated from {base} bars, session-aware; a bar is "
        "written once its window has closed.",
    )
    def aggregated_bars(
        context: dg.AssetExecutionContext, trading_db: TradingDatabaseResource
    ) -> dg.MaterializeResult:
        store = trading_db.store()
        start, end = _window(context)
        source = store.read_bars(timeframe=base.label, start=start, end=end)
        as_of = min(end, datetime.now(UTC))
        bars = aggregate_bars(
            source,
            source=base,
            target=target,
            session=universe.session,
            calendar=universe.calendar,
            as_of=as_of,
        )
        changed = store.upsert_bars(bars, timeframe=target.label, source=f"aggregate:{base}")
        outcomes = aggregate_checks(
            source,
            bars,
            target=target,
            session=universe.session,
            calendar=universe.calendar,
            as_of=as_of,
        )
        return dg.MaterializeResult(
            metadata={
                "bars": bars.height,
                "bars_changed": changed,
                "source_bars": source.height,
                "symbols": bars["symbol"].n_unique(),
            },
            check_results=_results(outcomes),
        )

    return aggregated_bars


def build_bar_assets(
    universe: UniverseConfig, rules: ValidationConfig
) -> list[dg.AssetsDefinition]:
    """The source-bars asset and one aggregate per configured coarser timeframe."""
    return [
        build_source_bars_asset(universe, rules),
        *(build_aggregate_asset(universe, t) for t in universe.target_timeframes),
    ]
