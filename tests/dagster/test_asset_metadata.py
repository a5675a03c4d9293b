"""What the UI shows of each asset before anything runs: its owners, its code version, and the
columns of the tables it holds."""

from __future__ import annotations

from typing import Any

import dagster as dg
import polars as pl
import pytest

from assets.metadata import OWNERS, figures, is_count, readable, table_schema
from pipelines.features import FEATURE_SET_VERSION, FeatureConfig, feature_registry
from quantdag.definitions import defs
from quantdag.project import load_project

TABLES = (
    "bars_15m",
    "bars_60m",
    "bars_1d",
    "feature_matrix",
    "triple_barrier_labels",
    "training_set",
    "holdout_set",
    "oos_predictions",
)


def _graph() -> Any:
    return defs.resolve_asset_graph()


def test_every_asset_has_its_groups_owners_and_a_code_version() -> None:
    graph = _graph()
    keys = sorted(graph.get_all_asset_keys())
    assert {"bars_15m", "backtest_report", "live_orders"} <= {k.to_user_string() for k in keys}
    for key in keys:
        node = graph.get(key)
        name = key.to_user_string()
        assert node.owners and node.owners == OWNERS[node.group_name], name
        assert isinstance(node.code_version, str) and node.code_version, name


def test_tables_declare_their_columns_each_described() -> None:
    graph = _graph()
    for name in TABLES:
        schema = graph.get(dg.AssetKey(name)).metadata["dagster/column_schema"]
        names = [c.name for c in schema.columns]
        assert names[:2] == ["symbol", "ts"] and len(set(names)) == len(names), name
        assert all(c.description and c.type for c in schema.columns), name
    project = load_project()
    universe = project.universe
    registry = feature_registry(
        FeatureConfig(universe.base_timeframe, universe.session, universe.calendar)
    )
    features = graph.get(dg.AssetKey("feature_matrix")).metadata["dagster/column_schema"]
    assert [c.name for c in features.columns[2:]] == registry.names  # from the registry
    assert len(registry.names) >= 150
    training = graph.get(dg.AssetKey("training_set")).metadata["dagster/column_schema"]
    assert {"y", "label", "t1", "weight", *registry.names} <= {c.name for c in training.columns}
    # The feature matrix's code version names its feature set: a new feature makes it stale.
    version = graph.get(dg.AssetKey("feature_matrix")).code_version
    assert version.endswith(f"features-{FEATURE_SET_VERSION}")


def test_figures_are_rounded_and_counts_are_integers() -> None:
    shown = figures(
        {
            "auc": 0.523434804491,
            "n": 5286.0,
            "all.rows": 12.0,
            "log_loss_skill_clusters": 11.0,
            "commissions_usd": 2794.6049,
        }
    )
    assert shown["auc"] == dg.MetadataValue.float(0.5234)
    assert shown["n"] == dg.MetadataValue.int(5286)
    assert shown["all.rows"] == dg.MetadataValue.int(12)
    assert shown["log_loss_skill_clusters"] == dg.MetadataValue.int(11)
    assert shown["commissions_usd"] == dg.MetadataValue.float(2794.6)
    assert not is_count("positive_share") and is_count("trades_closed")
    with pytest.raises(ValueError, match="not a whole number"):
        figures({"oos_n": 12.5})
    with pytest.raises(ValueError, match="without a description"):
        table_schema({"a": pl.Int64()}, {})


def test_a_per_fold_table_shows_counts_as_integers() -> None:
    frame = readable(
        pl.DataFrame({"fold": [0, 1], "n": [1755.0, 1763.0], "auc": [0.5114215304382279, 0.57]})
    )
    assert frame["n"].dtype == pl.Int64 and frame["n"].to_list() == [1755, 1763]
    assert frame["auc"].to_list() == [0.5114, 0.57]
