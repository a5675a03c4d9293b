"""Bar assets: the validated source-timeframe bars and their session-aware aggregates."""

import time
from datetime import UTC, datetime

import dagster as dg

from assets.common import check_results, check_specs, markdown_table, partition_window, say
from assets.metadata import OWNERS, column_schema, table_schema
from assets.partitions import market_partitions
from pipelines.bars.aggregate import aggregate_bars
from pipelines.bars.checks import (
    PartitionError,
    aggregate_check_definitions,
    aggregate_checks,
    all_quarantined_message,
    expected_sessions,
    ingest_check_definitions,
    ingest_checks,
)
from pipelines.config import UniverseConfig, ValidationConfig
from pipelines.data.ingest import ingest_window
from pipelines.data.schema import STORED_BAR_SCHEMA
from pipelines.data.sources import FileBarSource
from pipelines.timeframes import Timeframe
from resources import BarSourceResource, TradingDatabaseResource

GROUP = "market_data"
CODE_VERSION = {"source_bars": "1", "aggregated_bars": "1"}
"""Bump an asset's version when its logic changes (see assets/metadata.py)."""
BAR_COLUMNS = column_schema(
    table_schema(
        STORED_BAR_SCHEMA,
        {
            "symbol": "The universe's symbol.",
            "ts": "The bar's START, UTC.",
            "open": "First trade price (USD).",
            "high": "Highest trade price (USD).",
            "low": "Lowest trade price (USD).",
            "close": "Last trade price (USD).",
            "volume": "Shares traded.",
            "vwap": "Volume-weighted average price (USD); null where the source lacks it.",
            "trade_count": "Trades in the bar; null where the source lacks it.",
            "bar_count": "Source bars inside (1 for a source bar).",
            "flags": "Bit set: 1 price jump, 2 half-day session, 4 zero volume (kept bars).",
        },
    )
)
"""The columns of a bars asset (the store's ``bars`` table, one timeframe)."""


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
    partitions = market_partitions(universe)
    checks = ingest_check_definitions(rules)

    @dg.asset(
        name=name,
        group_name=GROUP,
        partitions_def=partitions,
        check_specs=check_specs(name, checks, partitions),
        kinds={"polars", "sql"},
        owners=OWNERS[GROUP],
        code_version=CODE_VERSION["source_bars"],
        metadata=BAR_COLUMNS,
        description=f"Validated {tf} bars of the universe from the market-data source, UTC "
        "bar starts; rejected rows go to the quarantine table with their reason. A partition "
        "whose rows were all rejected fails, naming the rules; one whose exchange sessions "
        "have no stored bar fails its blocking check.",
    )
    def source_bars(
        context: dg.AssetExecutionContext,
        config: IngestConfig,
        market_data: BarSourceResource,
        trading_db: TradingDatabaseResource,
    ) -> dg.MaterializeResult:
        store = trading_db.store()
        window = partition_window(context)
        key = context.partition_key
        as_of = ingest_as_of(config, datetime.now(UTC))
        began = time.monotonic()
        batch = f"{name}/{key}"
        source = market_data.source(universe)
        report = ingest_window(
            source,
            store,
            universe,
            rules,
            window,
            as_of=as_of,
            batch=batch,
            refetch=config.refetch,
        )
        reasons = ", ".join(f"{k} {v}" for k, v in report.by_reason.items())
        say(
            context,
            f"{name} {key}: {report.rows_in} rows fetched, {report.rows_stored} stored, "
            f"{report.rows_quarantined} quarantined"
            + (f" ({reasons})" if reasons else "")
            + f" [{time.monotonic() - began:.1f}s]",
        )
        if report.rows_in and not report.rows_stored:
            quarantine = store.read_quarantine(start=window[0], end=window[1], batch=batch)
            raise PartitionError(
                all_quarantined_message(
                    name,
                    key,
                    rows_in=report.rows_in,
                    by_reason=report.by_reason,
                    quarantine=quarantine.filter(quarantine["batch"] == batch),
                    batch=batch,
                )
            )
        stored = store.read_bars(timeframe=tf, start=window[0], end=window[1])
        sessions = expected_sessions(
            universe.calendar,
            universe.session,
            (window[0], min(window[1], as_of)),
            history_start=universe.history_start,
            history_end=universe.history_end,
        )
        spanning = set(
            store.symbols_spanning(
                timeframe=tf, start=window[0], end=window[1], symbols=universe.symbol_names
            )
        )
        absent = sorted(set(universe.symbol_names) - set(stored["symbol"].unique().to_list()))
        if absent and isinstance(source, FileBarSource):  # files know spans not yet ingested
            spans = source.symbol_spans(absent)
            spanning |= {s for s, (lo, hi) in spans.items() if lo < window[0] and hi >= window[1]}
        outcomes = ingest_checks(
            report,
            stored,
            rules,
            sessions=sessions,
            symbols=universe.symbol_names,
            spanning=sorted(spanning),
        )
        return dg.MaterializeResult(
            metadata={
                "as_of": as_of.isoformat(),
                "rows_in": report.rows_in,
                "rows_stored": report.rows_stored,
                "dagster/row_count": report.rows_stored,
                "rows_quarantined": report.rows_quarantined,
                "quarantined_by_reason": dict(report.by_reason),
                "bars_deleted_at_source": report.bars_deleted,
                "quarantine_superseded": report.quarantine_removed,
                "price_adjustment": source.adjustment,
                "by_symbol": markdown_table(report.by_symbol),
                "bars_changed": report.bars_changed,
                "bars_in_partition": stored.height,
                "sessions": len(sessions),
                "symbols": stored["symbol"].n_unique(),
                "fetch_requests": len(report.requests),
                "missing_bars_vs_calendar": report.missing_bars,
                "short_sessions": report.short_sessions,
                "half_day_bars": report.half_day_bars,
                "zero_volume_bars": report.zero_volume_bars,
            },
            check_results=check_results(outcomes, checks),
        )

    return source_bars


def build_aggregate_asset(universe: UniverseConfig, target: Timeframe) -> dg.AssetsDefinition:
    base = universe.base_timeframe
    name = f"bars_{target}"
    partitions = market_partitions(universe)
    checks = aggregate_check_definitions(base)

    @dg.asset(
        name=name,
        group_name=GROUP,
        partitions_def=partitions,
        deps=[f"bars_{base}"],
        check_specs=check_specs(name, checks, partitions),
        kinds={"polars", "sql"},
        owners=OWNERS[GROUP],
        code_version=CODE_VERSION["aggregated_bars"],
        metadata=BAR_COLUMNS,
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
        say(
            context,
            f"{name} {context.partition_key}: {bars.height} bars from {source.height} "
            f"{base} bars ({changed} changed)",
        )
        return dg.MaterializeResult(
            metadata={
                "bars": bars.height,
                "dagster/row_count": bars.height,
                "bars_changed": changed,
                "source_bars": source.height,
                "symbols": bars["symbol"].n_unique(),
            },
            check_results=check_results(outcomes, checks),
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
