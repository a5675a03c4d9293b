"""The asset graph, materialized in process on the bundled 1-minute sample (SQLite)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from assets.bars import build_bar_assets
from quantdag.project import load_project
from resources import FileBarSourceResource, TradingDatabaseResource

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def project_1m():  # type: ignore[no-untyped-def]
    return load_project({"QUANTDAG_SETTINGS": str(ROOT / "config" / "settings.1m.yaml")})


def _resources(project, url: str) -> dict[str, object]:  # type: ignore[no-untyped-def]
    src = project.env.source
    return {
        "market_data": FileBarSourceResource(
            path=src.path,
            pattern=src.pattern,
            format=src.format,
            columns=src.columns.model_dump(exclude_none=True),
            timezone=src.timezone,
            label=src.label,
        ),
        "trading_db": TradingDatabaseResource(url=url),
    }


def _checks(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str], bool]:
    return {
        (e.asset_key.to_user_string(), e.check_name): e.passed
        for e in result.get_asset_check_evaluations()
    }


def test_graph_materializes_and_rematerializing_changes_nothing(project_1m, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assets = build_bar_assets(project_1m.universe, project_1m.settings.validation)
    url = f"sqlite:///{tmp_path / 'trading.db'}"
    resources = _resources(project_1m, url)
    instance = dg.DagsterInstance.ephemeral()
    first = dg.materialize(
        assets, partition_key="2019-02-01", resources=resources, instance=instance
    )
    assert first.success
    checks = _checks(first)
    assert len(checks) == 5 + 4 * 2
    failed = {k for k, ok in checks.items() if not ok}
    # VIX and VXXB make large moves in the sample: the price-jump check warns, nothing fails.
    assert failed <= {("bars_1m", "price_jumps")}
    meta = first.asset_materializations_for_node("bars_1m")[0].metadata
    assert meta["rows_in"].value == 43_164
    assert meta["rows_in"].value == meta["rows_stored"].value + meta["rows_quarantined"].value
    counts = {
        n: first.asset_materializations_for_node(n)[0].metadata["bars"].value
        for n in ("bars_5m", "bars_15m", "bars_60m", "bars_1d")
    }
    assert counts["bars_1d"] == 24 * 5

    second = dg.materialize(
        assets, partition_key="2019-02-01", resources=resources, instance=instance
    )
    assert second.success
    m1 = second.asset_materializations_for_node("bars_1m")[0].metadata
    assert m1["rows_in"].value == 0 and m1["fetch_requests"].value == 0
    assert m1["bars_in_partition"].value == meta["rows_stored"].value
    for n in ("bars_5m", "bars_15m", "bars_60m", "bars_1d"):
        m = second.asset_materializations_for_node(n)[0].metadata
        assert m["bars_changed"].value == 0 and m["bars"].value == counts[n]


def test_source_asset_by_direct_invocation(project_1m, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from assets.bars import IngestConfig, build_source_bars_asset

    asset = build_source_bars_asset(project_1m.universe, project_1m.settings.validation)
    resources = _resources(project_1m, f"sqlite:///{tmp_path / 't.db'}")
    context = dg.build_asset_context(partition_key="2019-02-01")
    result = asset(context=context, config=IngestConfig(), **resources)
    assert result.metadata["rows_stored"] == 43_164
    assert {c.check_name for c in result.check_results} >= {"rows_accounted", "bar_integrity"}


def _sample_setup(tmp_path: Path):  # type: ignore[no-untyped-def]
    """The 15-minute sample's bar and research assets, every resource in ``tmp_path``."""
    from assets.research import build_research_assets
    from resources import MlflowResource, OptunaResource, PolarsParquetIOManager

    project = load_project({})
    bar_assets = build_bar_assets(project.universe, project.settings.validation)
    research = build_research_assets(project.universe, project.settings)
    resources = {
        **_resources(project, f"sqlite:///{tmp_path / 'trading.db'}"),
        "parquet_io_manager": PolarsParquetIOManager(base_dir=str(tmp_path / "parquet")),
        "mlflow": MlflowResource(
            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="t", model_name="t"
        ),
        "optuna": OptunaResource(storage=f"sqlite:///{tmp_path / 'optuna.db'}"),
    }
    return bar_assets, research, resources, dg.DagsterInstance.ephemeral()


def test_features_and_labels_materialize_with_checks(tmp_path: Path) -> None:
    bar_assets, research, resources, instance = _sample_setup(tmp_path)
    for key in ("2019-01-01", "2019-02-01"):
        assert dg.materialize(
            bar_assets[:1], partition_key=key, resources=resources, instance=instance
        ).success
    result = dg.materialize(
        [*bar_assets[:1], *research],
        partition_key="2019-02-01",
        resources=resources,
        instance=instance,
        selection=["feature_matrix", "triple_barrier_labels"],
    )
    assert result.success
    checks = _checks(result)
    assert checks[("feature_matrix", "point_in_time")]
    assert checks[("feature_matrix", "finite_after_warmup")]
    assert checks[("feature_matrix", "stream_parity")]  # the live path gives this matrix
    assert checks[("triple_barrier_labels", "within_vertical_barrier")]
    meta = result.asset_materializations_for_node("feature_matrix")[0].metadata
    assert meta["features"].value >= 150 and meta["rows"].value > 0
    stored = tmp_path / "parquet" / "feature_matrix" / "2019-02-01.parquet"
    assert stored.exists()
    labels = result.asset_materializations_for_node("triple_barrier_labels")[0].metadata
    assert labels["rows"].value > 0 and set(labels["label_distribution"].value) <= {"-1", "0", "1"}

    # Training on what is stored (one month): quick mode, registry in a temporary MLflow store.
    # January's bars are stored but not its features and labels: a gap, allowed here.
    from assets.training import build_training_set_asset, walk_forward_models

    training_set = build_training_set_asset([bar_assets[0], *research])
    trained = dg.materialize(
        [*research, training_set, walk_forward_models],
        resources=resources,
        instance=instance,
        selection=["training_set", "oos_predictions", "champion_model"],
        run_config={
            "ops": {
                "training_set": {"config": {"allow_gaps": True}},
                "walk_forward_models": {"config": {"mode": "quick", "stack": True}},
            }
        },
    )
    assert trained.success
    tmeta = trained.asset_materializations_for_node("training_set")[0].metadata
    assert tmeta["months"].value == ["2019-02-01"]
    assert set(tmeta["left_out_months"].value) == {"2019-01-01"}
    meta = {
        m.asset_key.to_user_string(): m.metadata
        for m in trained.asset_materializations_for_node("walk_forward_models")
    }
    assert meta["champion_model"]["promoted"].value is True
    assert meta["oos_predictions"]["rows"].value > 0
    assert 0.0 <= meta["oos_predictions"]["oos_auc"].value <= 1.0
    stored = pl.read_parquet(tmp_path / "parquet" / "oos_predictions" / "all.parquet")
    assert {"prob", "prob_raw", "fold", "model_version", "prob_stacked"} <= set(stored.columns)
    assert stored["prob_stacked"].drop_nulls().len() > 0
    assert 0.0 <= meta["oos_predictions"]["stacked_auc"].value <= 1.0

    # The backtest report on those out-of-sample predictions.
    from assets.backtest import build_backtest_report_asset
    from quantdag.project import PROJECT_ROOT

    project = load_project({})
    report_asset = build_backtest_report_asset(
        project.universe,
        project.settings.model_copy(update={"data_dir": str(tmp_path)}),
        PROJECT_ROOT,
    )
    reported = dg.materialize(
        [*research, training_set, walk_forward_models, report_asset],
        resources=resources,
        instance=instance,
        selection=["backtest_report"],
    )
    assert reported.success
    rmeta = reported.asset_materializations_for_node("backtest_report")[0].metadata
    page = Path(rmeta["report"].value).read_text()
    assert "Equity and benchmark" in page and page.count("<svg") >= 5
    assert rmeta["max_drawdown"].value <= 0.0


def test_full_mode_tunes_before_training(tmp_path: Path) -> None:
    """Full mode runs an Optuna study first and logs how many trials it took."""
    from assets.training import build_training_set_asset, walk_forward_models

    bar_assets, research, resources, instance = _sample_setup(tmp_path)
    training_set = build_training_set_asset([bar_assets[0], *research])
    for key in ("2019-01-01", "2019-02-01"):
        assert dg.materialize(
            [*bar_assets[:1], *research], partition_key=key, resources=resources, instance=instance
        ).success
    trained = dg.materialize(
        [*research, training_set, walk_forward_models],
        resources=resources,
        instance=instance,
        selection=["training_set", "oos_predictions", "champion_model"],
        run_config={"ops": {"walk_forward_models": {"config": {"mode": "full", "tune_trials": 2}}}},
    )
    assert trained.success
    meta = {
        m.asset_key.to_user_string(): m.metadata
        for m in trained.asset_materializations_for_node("walk_forward_models")
    }
    assert meta["oos_predictions"]["optuna_trials"].value == 2
    assert meta["oos_predictions"]["folds"].value >= 6
