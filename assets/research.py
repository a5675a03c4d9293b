"""Research assets: the feature matrix and the triple-barrier labels."""

import dagster as dg
import polars as pl

from assets.common import (
    bars_around,
    check_results,
    check_specs,
    markdown_table,
    partition_window,
    progress_to,
)
from assets.metadata import OWNERS, column_schema, table_schema
from assets.partitions import bars_dep, market_partitions
from pipelines.config import Settings, UniverseConfig
from pipelines.features import FEATURE_SET_VERSION, FeatureConfig, feature_registry
from pipelines.features.partition import (
    build_feature_partition,
    feature_check_definitions,
    feature_checks,
    history_days,
)
from pipelines.features.registry import FeatureRegistry
from pipelines.labels.partition import (
    LABEL_CHECKS,
    build_label_partition,
    check_label_settings,
    label_checks,
    label_padding_days,
)
from pipelines.labels.triple_barrier import LABEL_SCHEMA
from pipelines.labels.weights import WEIGHT_COLUMNS
from resources import TradingDatabaseResource

GROUP = "research"
MAX_MISSING_SHARE = 0.02
CODE_VERSION = {"feature_matrix": "1", "triple_barrier_labels": "1"}
"""Bump an asset's version when its logic changes (see assets/metadata.py); the feature
matrix's also names the feature set (FEATURE_SET_VERSION), bumped with any feature."""
KEY_COLUMNS = {"symbol": "The universe's symbol.", "ts": "The bar's START, UTC."}
LABEL_COLUMNS = {
    **KEY_COLUMNS,
    "side": "The bet's side: +1 long, -1 short.",
    "t1": "When the first barrier was touched (UTC bar start).",
    "barrier": "Which barrier ended the bet: profit_take, stop_loss or vertical.",
    "ret": "The side-adjusted return from the entry (t0's close) to t1 (fraction).",
    "label": "+1 profit-take first, -1 stop-loss first, else the sign of ret (0 if flat).",
    "volatility": "The volatility the barriers were set in (fraction of price).",
    "bars_held": "Bars from the entry to t1.",
    "uniqueness": "Average uniqueness over the bet's span (1: no concurrent label).",
    "weight_return": "Return-attribution weight.",
    "weight_decay": "Time-decay factor.",
    "weight": "The sample weight training uses.",
}


def feature_columns(registry: FeatureRegistry) -> dict[str, str]:
    """Every column of the feature matrix, described (the features from the registry)."""
    described = registry.describe()
    return {**KEY_COLUMNS, **dict(zip(described["name"], described["description"], strict=True))}


def build_feature_matrix_asset(universe: UniverseConfig) -> dg.AssetsDefinition:
    config = FeatureConfig(universe.base_timeframe, universe.session, universe.calendar)
    registry = feature_registry(config)
    lookback = history_days(registry, config)
    partitions = market_partitions(universe)
    checks = feature_check_definitions(MAX_MISSING_SHARE)

    @dg.asset(
        group_name=GROUP,
        partitions_def=partitions,
        deps=[bars_dep(universe, before_days=lookback)],
        io_manager_key="parquet_io_manager",
        kinds={"polars", "parquet"},
        check_specs=check_specs("feature_matrix", checks, partitions),
        owners=OWNERS[GROUP],
        code_version=f"{CODE_VERSION['feature_matrix']}.features-{FEATURE_SET_VERSION}",
        metadata={
            "feature_set_version": FEATURE_SET_VERSION,
            "features": len(registry),
            "registry": markdown_table(registry.describe()),
            **column_schema(
                table_schema(
                    {"symbol": pl.String(), "ts": pl.Datetime("us", "UTC")}
                    | {name: pl.Float64() for name in registry.names},
                    feature_columns(registry),
                )
            ),
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
        deps=[bars_dep(universe, before_days=before, after_days=after)],
        io_manager_key="parquet_io_manager",
        kinds={"polars", "parquet"},
        check_specs=check_specs("triple_barrier_labels", LABEL_CHECKS, partitions),
        owners=OWNERS[GROUP],
        code_version=CODE_VERSION["triple_barrier_labels"],
        metadata={
            "config": labels_cfg.model_dump(),
            **column_schema(
                table_schema(
                    {**LABEL_SCHEMA, **{c: pl.Float64() for c in WEIGHT_COLUMNS}}, LABEL_COLUMNS
                )
            ),
        },
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
