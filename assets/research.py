"""Research assets: the feature matrix and the triple-barrier labels."""

from datetime import UTC

import dagster as dg

from assets.bars import GROUP as BARS_GROUP
from assets.bars import _markdown, _window
from assets.partitions import monthly_partitions
from pipelines.config import Settings, UniverseConfig
from pipelines.features import FEATURE_SET_VERSION, FeatureConfig, feature_registry
from pipelines.features.partition import build_feature_partition, history_days, padded_window
from pipelines.labels.partition import build_label_partition, label_padding_days
from resources import TradingDatabaseResource

GROUP = "research"
MAX_MISSING_SHARE = 0.02


def build_feature_matrix_asset(universe: UniverseConfig) -> dg.AssetsDefinition:
    config = FeatureConfig(universe.base_timeframe, universe.session, universe.calendar)
    registry = feature_registry(config)
    base = f"bars_{universe.base_timeframe}"
    lookback = history_days(registry, config)

    @dg.asset(
        group_name=GROUP,
        partitions_def=monthly_partitions(universe),
        deps=[base],
        io_manager_key="parquet_io_manager",
        kinds={"polars", "parquet"},
        check_specs=[
            dg.AssetCheckSpec(
                "finite_after_warmup",
                asset="feature_matrix",
                description="no NaN or infinite value after warm-up",
            ),
            dg.AssetCheckSpec(
                "missing_after_warmup",
                asset="feature_matrix",
                description=(
                    f"at most {MAX_MISSING_SHARE:.0%} undefined (null) per feature after warm-up"
                ),
            ),
            dg.AssetCheckSpec(
                "constant_columns",
                asset="feature_matrix",
                description="no feature is constant over the partition",
            ),
            dg.AssetCheckSpec(
                "point_in_time",
                asset="feature_matrix",
                description=(
                    "rebuilding on data cut at sampled times changes nothing before the cut"
                ),
            ),
        ],
        metadata={
            "feature_set_version": FEATURE_SET_VERSION,
            "features": len(registry),
            "registry": _markdown(registry.describe()),
        },
    )
    def feature_matrix(
        context: dg.AssetExecutionContext, trading_db: TradingDatabaseResource
    ):  # returns MaterializeResult(value=frame); an annotation would make the output Nothing
        """Point-in-time features of every bar of the partition (symbol, ts, one column each)."""
        window = _window(context)
        start, end = padded_window(window, lookback)
        bars = trading_db.store().read_bars(
            timeframe=universe.base_timeframe.label, start=start, end=end
        )
        part = build_feature_partition(bars, window, config, registry, key=context.partition_key)
        worst = sorted(part.null_share.items(), key=lambda kv: -kv[1])[:5]
        return dg.MaterializeResult(
            value=part.matrix,
            metadata={
                "rows": part.matrix.height,
                "features": len(registry),
                "feature_set_version": FEATURE_SET_VERSION,
                "symbols": part.matrix["symbol"].n_unique(),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name="finite_after_warmup",
                    passed=not part.nonfinite,
                    metadata={"nonfinite": part.nonfinite or "none"},
                ),
                dg.AssetCheckResult(
                    check_name="missing_after_warmup",
                    passed=all(v <= MAX_MISSING_SHARE for _, v in worst),
                    severity=dg.AssetCheckSeverity.WARN,
                    metadata={"worst": dict(worst)},
                ),
                dg.AssetCheckResult(
                    check_name="constant_columns",
                    passed=not part.constant,
                    severity=dg.AssetCheckSeverity.WARN,
                    metadata={"constant": part.constant or "none"},
                ),
                dg.AssetCheckResult(
                    check_name="point_in_time",
                    passed=not part.lookahead,
                    metadata={
                        "cuts": [c.astimezone(UTC).isoformat() for c in part.cuts],
                        "violations": part.lookahead[:10] or "none",
                    },
                ),
            ],
        )

    return feature_matrix


def build_labels_asset(universe: UniverseConfig, settings: Settings) -> dg.AssetsDefinition:
    labels_cfg = settings.labels
    base = f"bars_{universe.base_timeframe}"
    per_session = FeatureConfig(universe.base_timeframe, universe.session).bars_per_session
    before, after = label_padding_days(labels_cfg, per_session)

    @dg.asset(
        group_name=GROUP,
        partitions_def=monthly_partitions(universe),
        deps=[base],
        io_manager_key="parquet_io_manager",
        kinds={"polars", "parquet"},
        check_specs=[
            dg.AssetCheckSpec(
                "label_balance",
                asset="triple_barrier_labels",
                description="each of the -1 and +1 labels holds at least 10%",
            ),
            dg.AssetCheckSpec(
                "within_vertical_barrier",
                asset="triple_barrier_labels",
                description="no label is held past its vertical barrier",
            ),
        ],
        metadata={"config": labels_cfg.model_dump()},
    )
    def triple_barrier_labels(
        context: dg.AssetExecutionContext, trading_db: TradingDatabaseResource
    ):  # returns MaterializeResult(value=frame); an annotation would make the output Nothing
        """Triple-barrier labels with sample weights for every bar of the partition (long)."""
        window = _window(context)
        start, end = padded_window(window, before, after)
        bars = trading_db.store().read_bars(
            timeframe=universe.base_timeframe.label, start=start, end=end
        )
        part = build_label_partition(bars, window, labels_cfg)
        total = max(part.labels.height, 1)
        shares = {k: v / total for k, v in part.distribution.items()}
        return dg.MaterializeResult(
            value=part.labels,
            metadata={
                "rows": part.labels.height,
                "unlabelled": part.unlabelled,
                "label_distribution": part.distribution,
                "max_bars_held": part.max_bars_held,
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name="label_balance",
                    severity=dg.AssetCheckSeverity.WARN,
                    passed=min(shares.get("-1", 0.0), shares.get("1", 0.0)) >= 0.10,
                    metadata={"shares": shares},
                ),
                dg.AssetCheckResult(
                    check_name="within_vertical_barrier",
                    passed=part.max_bars_held <= labels_cfg.max_holding_bars,
                    metadata={
                        "max_bars_held": part.max_bars_held,
                        "max_holding_bars": labels_cfg.max_holding_bars,
                    },
                ),
            ],
        )

    return triple_barrier_labels


def build_research_assets(
    universe: UniverseConfig, settings: Settings
) -> list[dg.AssetsDefinition]:
    return [build_feature_matrix_asset(universe), build_labels_asset(universe, settings)]


__all__ = ["BARS_GROUP", "build_research_assets"]
