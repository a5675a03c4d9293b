"""Bar assets: the validated source-timeframe bars and their session-aware aggregates."""

from datetime import UTC, datetime

import dagster as dg

from assets.common import check_results, check_specs, markdown_table, partition_window
from assets.partitions import monthly_partitions
from pipelines.bars.aggregate import aggregate_bars
from pipelines.bars.checks import (
    aggregate_check_definitions,
    aggregate_checks,
    ingest_check_definitions,
    ingest_checks,
)
from pipelines.config import UniverseConfig, ValidationConfig
from pipelines.data.ingest import ingest_window
from pipelines.timeframes import Timeframe
from resources import BarSourceResource, TradingDatabaseResource

GROUP = "market_data"


class IngestConfig(dg.Config):  # type: ignore[misc]
    """Run config of the source-bars asset."""

    refetch: bool = False
    """Fetch the whole partition again even where it was fetched before."""
    as_of: str | None = None
    """Ingest bars starting before this instant (ISO 8601 with its offset, e.g.
    ``2019-02-12T18:30:00-05:00``); default: now. The nightly schedule sets its tick's time, so a
    run ingests up to its session whenever it runs. Never later than now: coverage would be
    recorded for bars the source does not have yet."""


def ingest_as_of(config: IngestConfig, now: datetime) -> datetime:
    """The instant the ingestion runs up to: ``config.as_of`` (checked) or ``now``."""
    if config.as_of is None:
        return now
    as_of = datetime.fromisoformat(config.as_of)
    if as_of.tzinfo is None:
        raise ValueError(f"as_of {config.as_of!r} has no UTC offset: write e.g. {now.isoformat()}")
    if as_of > now:
        raise ValueError(
            f"as_of {config.as_of} is later than now ({now.isoformat()}): the ingestion would "
            "record as fetched bars the source cannot have yet"
        )
    return as_of.astimezone(UTC)


def build_source_bars_asset(
    universe: UniverseConfig, rules: ValidationConfig
) -> dg.AssetsDefinition:
    tf = universe.base_timeframe.label
    name = f"bars_{tf}"
    partitions = monthly_partitions(universe)

    @dg.asset(
        name=name,
        group_name=GROUP,
        partitions_def=partitions,
        check_specs=check_specs(name, ingest_check_definitions(rules), partitions),
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
        window = partition_window(context)
        as_of = ingest_as_of(config, datetime.now(UTC))
        report = ingest_window(
            market_data.source(universe),
            store,
            universe,
            rules,
            window,
            as_of=as_of,
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
                "as_of": as_of.isoformat(),
                "rows_in": report.rows_in,
                "rows_stored": report.rows_stored,
                "rows_quarantined": report.rows_quarantined,
                "quarantined_by_reason": dict(report.by_reason),
                "by_symbol": markdown_table(report.by_symbol),
                "bars_changed": report.bars_changed,
                "bars_in_partition": stored.height,
                "symbols": stored["symbol"].n_unique(),
                "fetch_requests": len(report.requests),
                "missing_bars_vs_calendar": report.missing_bars,
                "short_sessions": report.short_sessions,
                "half_day_bars": report.half_day_bars,
                "zero_volume_bars": report.zero_volume_bars,
            },
            check_results=check_results(ingest_checks(report, stored, rules)),
        )

    return source_bars


def build_aggregate_asset(universe: UniverseConfig, target: Timeframe) -> dg.AssetsDefinition:
    base = universe.base_timeframe
    name = f"bars_{target}"
    partitions = monthly_partitions(universe)

    @dg.asset(
        name=name,
        group_name=GROUP,
        partitions_def=partitions,
        deps=[f"bars_{base}"],
        check_specs=check_specs(name, aggregate_check_definitions(base), partitions),
        kinds={"polars", "sql"},
        description=f"{target} bars aggregated from {base} bars, session-aware; a bar is "
        "written once its window has closed.",
    )
    def aggregated_bars(
        context: dg.AssetExecutionContext, trading_db: TradingDatabaseResource
    ) -> dg.MaterializeResult:
        store = trading_db.store()
        start, end = partition_window(context)
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
            source=base,
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
            check_results=check_results(outcomes),
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
