"""Research assets: the feature matrix and the triple-barrier labels."""

import dagster as dg

from assets.common import (
    bars_around,
    check_results,
    check_specs,
    markdown_table,
    partition_window,
    progress_to,
)
from assets.partitions import market_partitions
from pipelines.config import Settings, UniverseConfig
from pipelines.features import FEATURE_SET_VERSION, FeatureConfig, feature_registry
from pipelines.features.partition import (
    build_feature_partition,
    feature_check_definitions,
    feature_checks,
    history_days,
)
from pipelines.labels.partition import (
    LABEL_CHECKS,
    build_label_partition,
    check_label_settings,
    label_checks,
    label_padding_days,
)
from resources import TradingDatabaseResource

GROUP = "research"
MAX_MISSING_SHARE = 0.02


def build_feature_matrix_asset(universe: UniverseConfig) -> dg.AssetsDefinition:
    config = FeatureConfig(universe.base_timeframe, universe.session, universe.calendar)
    registry = feature_registry(config)
    lookback = history_days(registry, config)
    partitions = market_partitions(universe)
    checks = feature_check_definitions(MAX_MISSING_SHARE)

    @dg.asset(
        group_name=GROUP,
        partitions_def=partitions,
        deps=[f"bars_{universe.base_timeframe}"],
        io_manager_key="parquet_io_manager",
        kinds={"polars", "parquet"},
        check_specs=check_specs("feature_matrix", checks, partitions),
        metadata={
            "feature_set_version": FEATURE_SET_VERSION,
            "features": len(registry),
            "registry": markdown_table(registry.describe()),
        },
    )
    def feature_matrix(context: dg.AssetExecutionContext, trading_db: TradingDatabaseResource):  # type: ignore[no-untyped-def]
        """Point-in-time features of every bar of the partition (symbol, ts, one column each)."""
        # No return annotation: one would make Dagster type the output as Nothing.
        window = partition_window(context)
        bars = bars_around(trading_db, universe, window, before_days=lookback)
        key = context.partition_key
        part = build_feature_partition(
            bars,
            window,
            config,
            registry,
            key=key,
            progress=progress_to(context, f"features {key}"),
        )
        return dg.MaterializeResult(
            value=part.matrix,
            metadata={
                "rows": part.matrix.height,
                "dagster/row_count": part.matrix.height,
                "features": len(registry),
                "feature_set_version": FEATURE_SET_VERSION,
                "symbols": part.matrix["symbol"].n_unique(),
            },
            check_results=check_results(feature_checks(part, MAX_MISSING_SHARE), checks),
        )

    return feature_matrix


def build_labels_asset(universe: UniverseConfig, settings: Settings) -> dg.AssetsDefinition:
    labels_cfg = settings.labels
    check_label_settings(labels_cfg, universe.base_timeframe)
    per_session = FeatureConfig(universe.base_timeframe, universe.session).bars_per_session
    before, after = label_padding_days(labels_cfg, per_session)
    partitions = market_partitions(universe)

    @dg.asset(
        group_name=GROUP,
        partitions_def=partitions,
        deps=[f"bars_{universe.base_timeframe}"],
        io_manager_key="parquet_io_manager",
        kinds={"polars", "parquet"},
        check_specs=check_specs("triple_barrier_labels", LABEL_CHECKS, partitions),
        metadata={"config": labels_cfg.model_dump()},
    )
    def triple_barrier_labels(  # type: ignore[no-untyped-def]
        context: dg.AssetExecutionContext, trading_db: TradingDatabaseResource
    ):
        """Triple-barrier labels with sample weights for every bar of the partition (long)."""
        window = partition_window(context)
        bars = bars_around(trading_db, universe, window, before_days=before, after_days=after)
        progress = progress_to(context, f"labels {context.partition_key}")
        part = build_label_partition(bars, window, labels_cfg)
        progress(f"{part.labels.height} bars labelled, {part.unlabelled} unlabelled")
        return dg.MaterializeResult(
            value=part.labels,
            metadata={
                "rows": part.labels.height,
                "dagster/row_count": part.labels.height,
                "unlabelled": part.unlabelled,
                "label_distribution": part.distribution,
                "max_bars_held": part.max_bars_held,
            },
            check_results=check_results(label_checks(part, labels_cfg), LABEL_CHECKS),
        )

    return triple_barrier_labels


def build_research_assets(
    universe: UniverseConfig, settings: Settings
) -> list[dg.AssetsDefinition]:
    return [build_feature_matrix_asset(universe), build_labels_asset(universe, settings)]
