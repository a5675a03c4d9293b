"""The daily sample through the same assets: bars (yearly partitions), features and labels,
materialized in process on a temporary database and Parquet directory."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from assets.bars import build_bar_assets
from assets.research import build_research_assets
from quantdag.project import load_project
from resources import FileBarSourceResource, PolarsParquetIOManager, TradingDatabaseResource

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def project_daily():  # type: ignore[no-untyped-def]
    return load_project({"QUANTDAG_SETTINGS": str(ROOT / "config" / "daily" / "settings.yaml")})


def test_daily_sample_materializes_bars_features_and_labels(  # type: ignore[no-untyped-def]
    project_daily, tmp_path: Path
) -> None:
    universe, settings = project_daily.universe, project_daily.settings
    assert universe.base_timeframe.is_daily
    bars = build_bar_assets(universe, settings.validation)
    research = build_research_assets(universe, settings)
    resources = {
        "market_data": FileBarSourceResource.from_config(project_daily.env.source),
        "trading_db": TradingDatabaseResource(url=f"sqlite:///{tmp_path / 'trading.db'}"),
        "parquet_io_manager": PolarsParquetIOManager(base_dir=str(tmp_path / "parquet")),
    }
    instance = dg.DagsterInstance.ephemeral()
    # Bars of both years first: the labels of 2018's last sessions read 2019's bars.
    stored = {}
    for key in ("2018-01-01", "2019-01-01"):
        result = dg.materialize(bars, partition_key=key, resources=resources, instance=instance)
        assert result.success
        meta = result.asset_materializations_for_node(f"bars_{universe.timeframe}")[0].metadata
        assert meta["rows_in"].value == meta["rows_stored"].value + meta["rows_quarantined"].value
        stored[key] = meta["rows_stored"].value
    # Every row of the files is a bar of its year (the sample has no defect).
    in_files = pl.concat(
        pl.read_csv(f, columns=["timestamp"])
        for f in (ROOT / "data" / "sample" / "eqker_daily").glob("*_daily.csv")
    )["timestamp"].str.slice(0, 4)
    assert stored == {
        "2018-01-01": int((in_files == "2018").sum()),
        "2019-01-01": int((in_files == "2019").sum()),
    }

    result = dg.materialize(
        [*bars, *research],
        selection=[a.key for a in research],
        partition_key="2018-01-01",
        resources=resources,
        instance=instance,
    )
    assert result.success
    checks = {
        (e.asset_key.to_user_string(), e.check_name): e.passed
        for e in result.get_asset_check_evaluations()
    }
    failed = {k for k, ok in checks.items() if not ok}
    # VIX's zero volumes leave its Amihud ratios undefined (a warning); nothing else fails.
    assert failed <= {("feature_matrix", "missing_after_warmup")}
    assert checks[("feature_matrix", "point_in_time")]
    assert checks[("feature_matrix", "stream_parity")]
    assert checks[("triple_barrier_labels", "within_vertical_barrier")]

    matrix = pl.read_parquet(tmp_path / "parquet" / "feature_matrix" / "2018-01-01.parquet")
    labels = pl.read_parquet(tmp_path / "parquet" / "triple_barrier_labels" / "2018-01-01.parquet")
    assert matrix.height == labels.height == stored["2018-01-01"]
    assert "intraday_tod_1_frac" not in matrix.columns
    assert not [c for c in matrix.columns if c.startswith("mtf_")]
    # Every bar of the year is labelled, the last session's with the next year's bars.
    end = datetime(2019, 1, 1, 5, tzinfo=UTC)
    assert labels["t1"].max() > end  # type: ignore[operator]
    spans = labels.select(
        (pl.col("t1").dt.date() - pl.col("ts").dt.date()).dt.total_days().alias("days")
    )["days"]
    assert spans.min() >= 1 and spans.max() >= settings.labels.max_holding_bars  # type: ignore[operator]
    assert labels["bars_held"].max() == settings.labels.max_holding_bars
