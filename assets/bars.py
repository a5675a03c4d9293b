"""Bar assets: the validated source-timeframe bars and their session-aware aggregates."""

from datetime import UTC, datetime

import dagster as dg
import polars as pl

from assets.partitions import monthly_partitions
from pipelines.bars.aggregate import aggregate_bars
from pipelines.bars.checks import bar_integrity, volume_balance
from pipelines.config import UniverseConfig, ValidationConfig
from pipelines.data.ingest import ingest_window
from pipelines.timeframes import Timeframe
from resources import BarSourceResource, TradingDatabaseResource

GROUP = "market_data"


def _window(context: dg.AssetExecutionContext) -> tuple[datetime, datetime]:
    tw = context.partition_time_window
    return tw.start.astimezone(UTC), tw.end.astimezone(UTC)


def _table(frame: pl.DataFrame) -> dg.MetadataValue:
    if frame.height == 0:
        return dg.MetadataValue.md("(no rows)")
    head = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "---|" * frame.width
    rows = ["| " + " | ".join(str(v) for v in r) + " |" for r in frame.iter_rows()]
    return dg.MetadataValue.md("\n".join([head, rule, *rows]))


class IngestConfig(dg.Config):  # type: ignore[misc]
    """Run config of the source-bars asset."""

    refetch: bool = False
    """Fetch the whole partition again even where it was fetched before."""


def build_source_bars_asset(
    universe: UniverseConfig, rules: ValidationConfig
) -> dg.AssetsDefinition:
    tf = universe.base_timeframe.label
    name = f"bars_{tf}"
    checks = [
        dg.AssetCheckSpec(
            "rows_accounted", asset=name, description="rows in = rows stored + rows quarantined"
        ),
        dg.AssetCheckSpec(
            "bar_integrity",
            asset=name,
            description="stored bars: unique keys, OHLC consistent, positive",
        ),
        dg.AssetCheckSpec(
            "quarantine_share",
            asset=name,
            description=f"at most {rules.max_quarantine_share:.0%} quarantined",
        ),
        dg.AssetCheckSpec(
            "whole_sessions_present",
            asset=name,
            description="no symbol misses a whole session inside its span",
        ),
        dg.AssetCheckSpec(
            "price_jumps",
            asset=name,
            description=f"no close-to-close |log return| > "
            f"{rules.max_abs_log_return} (flagged, kept)",
        ),
    ]

    @dg.asset(
        name=name,
        group_name=GROUP,
        partitions_def=monthly_partitions(universe),
        check_specs=checks,
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
        integrity = bar_integrity(stored)
        share = report.rows_quarantined / report.rows_in if report.rows_in else 0.0
        context.log.info(
            f"{name} {context.partition_key}: {report.rows_in} rows in, {report.rows_stored} "
            f"stored, {report.rows_quarantined} quarantined {report.by_reason}"
        )
        return dg.MaterializeResult(
            metadata={
                "rows_in": report.rows_in,
                "rows_stored": report.rows_stored,
                "rows_quarantined": report.rows_quarantined,
                "bars_changed": report.bars_changed,
                "bars_in_partition": stored.height,
                "symbols": stored["symbol"].n_unique() if stored.height else 0,
                "fetch_requests": len(report.requests),
                "quarantined_by_reason": dict(report.by_reason),
                "by_symbol": _table(report.by_symbol),
                "missing_bars_vs_calendar": report.missing_bars,
                "short_sessions": report.short_sessions,
                "half_day_bars": report.half_day_bars,
                "zero_volume_bars": report.zero_volume_bars,
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name="rows_accounted",
                    passed=report.accounted,
                    metadata={
                        "rows_in": report.rows_in,
                        "rows_stored": report.rows_stored,
                        "rows_quarantined": report.rows_quarantined,
                    },
                ),
                dg.AssetCheckResult(
                    check_name="bar_integrity",
                    passed=not integrity,
                    metadata={"problems": integrity or "none"},
                ),
                dg.AssetCheckResult(
                    check_name="quarantine_share",
                    passed=share <= rules.max_quarantine_share,
                    severity=dg.AssetCheckSeverity.WARN,
                    metadata={"share": share, "by_reason": dict(report.by_reason)},
                ),
                dg.AssetCheckResult(
                    check_name="whole_sessions_present",
                    passed=report.missing_sessions == 0,
                    severity=dg.AssetCheckSeverity.WARN,
                    metadata={
                        "missing_sessions": report.missing_sessions,
                        "missing_bars": report.missing_bars,
                    },
                ),
                dg.AssetCheckResult(
                    check_name="price_jumps",
                    passed=report.price_jumps == 0,
                    severity=dg.AssetCheckSeverity.WARN,
                    metadata={"flagged_bars": report.price_jumps},
                ),
            ],
        )

    return source_bars


def build_aggregate_asset(universe: UniverseConfig, target: str) -> dg.AssetsDefinition:
    base = universe.base_timeframe
    name = f"bars_{target}"
    tf = Timeframe.parse(target)
    checks = [
        dg.AssetCheckSpec(
            "bar_integrity",
            asset=name,
            description="unique keys, OHLC consistent, inside one session segment",
        ),
        dg.AssetCheckSpec(
            "volume_conserved",
            asset=name,
            description=f"volume equals the {base} volume it was built from",
        ),
    ]

    @dg.asset(
        name=name,
        group_name=GROUP,
        partitions_def=monthly_partitions(universe),
        deps=[f"bars_{base.label}"],
        check_specs=checks,
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
            target=tf,
            session=universe.session,
            calendar=universe.calendar,
            as_of=as_of,
        )
        changed = store.upsert_bars(bars, timeframe=tf.label, source=f"aggregate:{base}")
        integrity = bar_integrity(
            bars, timeframe=tf, session=universe.session, calendar=universe.calendar
        )
        balance = volume_balance(
            source,
            bars,
            target=tf,
            session=universe.session,
            calendar=universe.calendar,
            as_of=as_of,
        )
        return dg.MaterializeResult(
            metadata={
                "bars": bars.height,
                "bars_changed": changed,
                "source_bars": source.height,
                "symbols": bars["symbol"].n_unique() if bars.height else 0,
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name="bar_integrity",
                    passed=not integrity,
                    metadata={"problems": integrity or "none"},
                ),
                dg.AssetCheckResult(
                    check_name="volume_conserved",
                    passed=balance == 0.0,
                    metadata={"difference_shares": balance},
                ),
            ],
        )

    return aggregated_bars


def build_bar_assets(
    universe: UniverseConfig, rules: ValidationConfig
) -> list[dg.AssetsDefinition]:
    """The source-bars asset and one aggregate per configured coarser timeframe."""
    return [
        build_source_bars_asset(universe, rules),
        *(build_aggregate_asset(universe, t.label) for t in universe.target_timeframes),
    ]
