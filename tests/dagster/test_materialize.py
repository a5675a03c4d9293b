"""The asset graph, materialized in process on the bundled 1-minute sample (SQLite)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from itertools import pairwise
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import sqlalchemy as sa

from assets.bars import build_bar_assets
from pipelines.data.tables import alert_log
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


def _declared(assets: list[dg.AssetsDefinition], key: str) -> dict[str, str]:
    """The columns (name -> type) that asset ``key`` declares in ``dagster/column_schema``."""
    spec = next(a.specs_by_key[k] for a in assets for k in a.keys if k.to_user_string() == key)
    return {c.name: c.type for c in spec.metadata["dagster/column_schema"].columns}


def _columns(frame: pl.DataFrame) -> dict[str, str]:
    return {name: str(dtype) for name, dtype in frame.schema.items()}


def _repeats_a_segment(key: str) -> bool:
    parts = re.split(r"[._/]", key)
    return any(a == b for a, b in pairwise(parts))


def _markdown_rows(table: str) -> list[dict[str, str]]:
    lines = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table.splitlines()]
    return [dict(zip(lines[0], row, strict=True)) for row in lines[2:]]


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
    assert len(checks) == 6 + 4 * 2
    failed = {k for k, ok in checks.items() if not ok}
    # The sample holds one week (11 to 15 February), its declared history: the stored month is
    # judged against the calendar's sessions of that week, all present.
    assert failed == set()
    whole = next(
        e for e in first.get_asset_check_evaluations() if e.check_name == "whole_sessions_present"
    )
    assert whole.metadata["sessions"].value == 5
    meta = first.asset_materializations_for_node("bars_1m")[0].metadata
    assert meta["rows_in"].value == 43_164
    assert meta["rows_in"].value == meta["rows_stored"].value + meta["rows_quarantined"].value
    assert meta["dagster/row_count"].value == meta["rows_stored"].value
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
    from resources.alerts import RecordingAlertsResource

    project = load_project({})
    bar_assets = build_bar_assets(project.universe, project.settings.validation)
    research = build_research_assets(project.universe, project.settings)
    resources = {
        **_resources(project, f"sqlite:///{tmp_path / 'trading.db'}"),
        "parquet_io_manager": PolarsParquetIOManager(base_dir=str(tmp_path / "parquet")),
        "mlflow": MlflowResource(
            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
            experiment="t",
            model_name="t",
            ui_url="http://mlflow.test",
        ),
        "optuna": OptunaResource(storage=f"sqlite:///{tmp_path / 'optuna.db'}"),
        "alerts": RecordingAlertsResource(),
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


@pytest.fixture(scope="module")
def february(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The sample materialized (bars, features, labels) in one temporary instance and stores,
    and the training assets with a holdout (from 2019-02-13, and JPM)."""
    from assets.training import build_training_set_asset, holdout_predictions, walk_forward_models
    from pipelines.models.holdout import HoldoutConfig

    tmp_path = tmp_path_factory.mktemp("february")
    bar_assets, research, resources, instance = _sample_setup(tmp_path)
    for key in ("2019-01-01", "2019-02-01"):
        assert dg.materialize(
            bar_assets[:1], partition_key=key, resources=resources, instance=instance
        ).success
    for key in ("2019-01-01", "2019-02-01"):
        assert dg.materialize(
            [*bar_assets[:1], *research],
            partition_key=key,
            resources=resources,
            instance=instance,
            selection=["feature_matrix", "triple_barrier_labels"],
        ).success
    holdout = HoldoutConfig(start=date(2019, 2, 13), symbols=("JPM",))
    training = [
        build_training_set_asset([bar_assets[0], *research], holdout),
        walk_forward_models,
        holdout_predictions,
    ]
    return tmp_path, [*research, *training], resources, instance


def test_training_gate_holdout_and_backtest_through_dagster(february) -> None:  # type: ignore[no-untyped-def]
    from assets.backtest import build_backtest_report_asset
    from quantdag.project import PROJECT_ROOT

    tmp_path, assets, resources, instance = february
    trained = dg.materialize(
        assets,
        resources=resources,
        instance=instance,
        selection=[
            "training_set",
            "holdout_set",
            "oos_predictions",
            "champion_model",
            "holdout_predictions",
        ],
        run_config={"ops": {"walk_forward_models": {"config": {"mode": "quick"}}}},
    )
    assert trained.success
    meta = {
        m.asset_key.to_user_string(): m.metadata
        for node in ("training_set", "walk_forward_models", "holdout_predictions")
        for m in trained.asset_materializations_for_node(node)
    }
    assert meta["training_set"]["months"].value == ["2019-01-01", "2019-02-01"]
    # The UI's row counts (dagster/row_count) are the rows written.
    for key in ("training_set", "holdout_set", "oos_predictions"):
        assert meta[key]["dagster/row_count"].value == meta[key]["rows"].value, key
    assert "JPM" in meta["training_set"]["holdout"].value
    assert set(meta["holdout_set"]["rows_by_segment"].value) == {"time", "symbol", "both"}
    train = pl.read_parquet(tmp_path / "parquet" / "training_set" / "all.parquet")
    assert "JPM" not in train["symbol"].to_list()
    assert train["t1"].max() < datetime(2019, 2, 13, 5, tzinfo=UTC)  # nothing of the holdout
    decision = meta["champion_model"]
    # Five weeks of bars cannot show skill: the model is registered, not deployable, and says why.
    assert decision["deployable"].value is False and decision["promoted"].value is False
    assert "skill gate refused" in decision["reason"].value
    # The UI says so on the predictions' checks (a warning: nothing downstream is blocked),
    # and people are told once.
    checks = {e.check_name: e for e in trained.get_asset_check_evaluations()}
    assert checks["skill_gate"].passed is False
    assert checks["skill_gate"].severity is dg.AssetCheckSeverity.WARN
    assert "not_one_sided" in checks
    with sa.create_engine(f"sqlite:///{tmp_path / 'trading.db'}").connect() as conn:
        kinds = [r.kind for r in conn.execute(sa.select(alert_log.c.kind))]
    assert kinds == ["gate_refused"]
    quality = meta["oos_predictions"]
    assert {"gate_auc_within_fold", "gate_auc_within_fold_se", "gate_log_loss_skill_z"} <= set(
        quality
    )
    assert meta["holdout_predictions"]["all.rows"].value == meta["holdout_set"]["rows"].value
    stored = pl.read_parquet(tmp_path / "parquet" / "oos_predictions" / "all.parquet")
    assert {"prob", "prob_raw", "fold", "model_version", "base_rate"} <= set(stored.columns)
    # The column schemas the UI shows are the columns written (prob_stacked: stack only).
    assert _declared(assets, "oos_predictions") == {**_columns(stored), "prob_stacked": "Float64"}
    for key, file in (
        ("feature_matrix", "feature_matrix/2019-02-01.parquet"),
        ("triple_barrier_labels", "triple_barrier_labels/2019-02-01.parquet"),
        ("training_set", "training_set/all.parquet"),
        ("holdout_set", "holdout_set/all.parquet"),
    ):
        assert _declared(assets, key) == _columns(pl.read_parquet(tmp_path / "parquet" / file))
    february = (datetime(2019, 2, 1, tzinfo=UTC), datetime(2019, 3, 1, tzinfo=UTC))
    bars = (
        resources["trading_db"]
        .store()
        .read_bars(timeframe="15m", start=february[0], end=february[1])
    )
    sample = load_project({})
    bar_assets = build_bar_assets(sample.universe, sample.settings.validation)
    assert _declared(bar_assets, "bars_15m") == _columns(bars)
    # Per-fold counts are integers, figures four significant digits.
    quality_meta = meta["oos_predictions"]
    assert isinstance(quality_meta["oos_n"], dg.IntMetadataValue)
    assert isinstance(quality_meta["gate_auc_within_fold_clusters"], dg.IntMetadataValue)
    auc = quality_meta["oos_auc"].value
    assert auc == float(f"{auc:.4g}")
    table = _markdown_rows(quality_meta["per_fold"].value)
    for column in ("fold", "trials", "best_iteration", "n"):
        assert all(re.fullmatch(r"\d+", row[column]) for row in table), column
    assert all(len(row["auc"].lstrip("-0.")) <= 5 for row in table)
    assert isinstance(meta["holdout_predictions"]["all.rows"], dg.IntMetadataValue)

    project = load_project({})
    report_asset = build_backtest_report_asset(
        project.universe,
        project.settings.model_copy(update={"data_dir": str(tmp_path)}),
        PROJECT_ROOT,
    )
    reported = dg.materialize(
        [*assets, report_asset],
        resources=resources,
        instance=instance,
        selection=["backtest_report"],
        run_config={"ops": {"backtest_report": {"config": {"grid_thresholds": [0.0, 0.05]}}}},
    )
    assert reported.success
    rmeta = reported.asset_materializations_for_node("backtest_report")[0].metadata
    page = Path(rmeta["report"].value).read_text()
    assert "Equity and benchmark" in page and "NOT deployable" in page
    assert "Holdout (never used" in page
    assert rmeta["n_trials"].value == 5  # 2 thresholds x 2 exits, and the configured pair
    # No key names a segment twice (the closed-trade count was once trades_trades); counts are
    # integers; the summary names the test period and shows returns in percent.
    doubled = [k for k in rmeta if _repeats_a_segment(k)]
    assert doubled == [], doubled
    counts = ["n_trials", "trades_closed", *(k for k in rmeta if k.endswith("_trades_closed"))]
    assert len(counts) > 2 and all(isinstance(rmeta[k], dg.IntMetadataValue) for k in counts)
    summary = rmeta["summary"].value
    assert f"| test_period | {rmeta['test_period'].value} |" in summary
    assert re.search(r"\| total_return \| [+-]\d+\.\d\d% \|", summary), summary
    assert f"(N = {rmeta['n_trials'].value} trials)" in summary
    assert rmeta["deployable"].value is False and rmeta["max_drawdown"].value <= 0.0
    # The report is an artifact of the model's MLflow run, linked from the asset.
    run_id = str(decision["run_id"].value) if "run_id" in decision else None
    client = resources["mlflow"].client()
    runs_with_report = [
        r.info.run_id
        for r in client.search_runs([client.get_experiment_by_name("t").experiment_id])
        if any(a.path == "backtest" for a in client.list_artifacts(r.info.run_id))
    ]
    assert len(runs_with_report) == 1 and (run_id is None or runs_with_report == [run_id])
    (report,) = client.list_artifacts(runs_with_report[0], "backtest")
    assert report.path.endswith(".html")
    url = rmeta["report_url"].value
    assert url.startswith("http://mlflow.test/#/experiments/")
    assert url.endswith(f"/runs/{runs_with_report[0]}/artifactPath/{report.path}")
    # make run's summary reads this metadata: every figure it names is there, none "undefined".
    from quantdag.run import research_summary

    lines = research_summary(meta["oos_predictions"], decision, meta["holdout_predictions"], rmeta)
    backtest = next(line for line in lines if line.startswith("Backtest ("))
    assert "undefined" not in backtest, backtest
    assert f"{rmeta['sharpe_daily_annualised'].value:.2f} annualised" in backtest
    held = next(line for line in lines if line.startswith("Holdout ("))
    assert "have read it: 1)" in held and "out of time" in held, held

    # The holdout was read by this model: reading it again for the same version is refused.
    again = dg.materialize(
        assets,
        resources=resources,
        instance=instance,
        selection=["holdout_predictions"],
        raise_on_error=False,
    )
    assert not again.success
    failure = again.get_step_failure_events()[0].event_specific_data.error.to_string()  # type: ignore[union-attr]
    assert "already scored on the holdout" in failure


def test_full_mode_tunes_every_fold_on_its_own_rows(february) -> None:  # type: ignore[no-untyped-def]
    """Full mode tunes each walk-forward fold (nested) and counts every trial."""
    _, assets, resources, instance = february
    trained = dg.materialize(
        assets,
        resources=resources,
        instance=instance,
        selection=["training_set", "holdout_set", "oos_predictions", "champion_model"],
        run_config={
            "ops": {
                "walk_forward_models": {
                    "config": {"mode": "full", "tune_trials": 1, "test_windows": 3}
                }
            }
        },
    )
    assert trained.success
    meta = {
        m.asset_key.to_user_string(): m.metadata
        for m in trained.asset_materializations_for_node("walk_forward_models")
    }
    folds = meta["oos_predictions"]["folds"].value
    assert folds >= 3 and meta["oos_predictions"]["tuning_trials"].value == folds
    assert "| trials |" in meta["oos_predictions"]["per_fold"].value.replace(
        "trials |", "| trials |"
    )
