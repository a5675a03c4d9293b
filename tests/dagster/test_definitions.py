"""The Dagster code location: it loads, and the environment switch picks whole resource sets."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from pipelines.config import LIVE_CONFIRMATION, ConfigError
from quantdag.definitions import build_definitions
from quantdag.project import load_project
from resources import AlpacaBarSourceResource, FileBarSourceResource

ROOT = Path(__file__).resolve().parents[2]
DOWNSTREAM = (
    "feature_matrix",
    "triple_barrier_labels",
    "training_set",
    "holdout_set",
    "oos_predictions",
    "champion_model",
    "holdout_predictions",
    "backtest_report",
)
LIVE = ("live_signals", "live_orders", "live_positions")  # observed by live_session_job


def test_definitions_module_loads() -> None:
    from quantdag.definitions import defs

    keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    assert keys == {"bars_15m", "bars_60m", "bars_1d", *DOWNSTREAM, *LIVE}
    checks = {
        (c.asset_key.to_user_string(), c.name) for c in defs.resolve_asset_graph().asset_check_keys
    }
    assert ("bars_15m", "rows_accounted") in checks
    assert ("bars_60m", "volume_conserved") in checks
    assert defs.resolve_job_def("market_data_job") is not None
    assert defs.resolve_job_def("all_assets_job") is not None
    assert defs.resolve_job_def("live_session_job") is not None
    assert ("feature_matrix", "point_in_time") in checks
    assert ("feature_matrix", "stream_parity") in checks
    bars = defs.resolve_assets_def("bars_15m")
    assert isinstance(bars.partitions_def, dg.MonthlyPartitionsDefinition)
    assert bars.descriptions_by_key[dg.AssetKey("bars_15m")]


def test_workspace_and_pyproject_name_the_same_entry_point() -> None:
    import tomllib

    import yaml

    workspace = yaml.safe_load((ROOT / "workspace.yaml").read_text())
    module = workspace["load_from"][0]["python_module"]["module_name"]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert module == pyproject["tool"]["dagster"]["module_name"] == "quantdag.definitions"


def test_one_minute_universe_builds_every_timeframe() -> None:
    project = load_project({"QUANTDAG_SETTINGS": str(ROOT / "config" / "settings.1m.yaml")})
    defs = build_definitions(project)
    keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    assert keys == {"bars_1m", "bars_5m", "bars_15m", "bars_60m", "bars_1d", *DOWNSTREAM, *LIVE}


def test_local_environment_uses_files() -> None:
    defs = build_definitions(load_project({}))
    assert isinstance(defs.resources["market_data"], FileBarSourceResource)


def test_paper_environment_reads_secrets_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("APCA_API_KEY_ID", "key-that-must-not-show")
    monkeypatch.setenv("QUANTDAG_DATABASE_URL", "postgresql://u:secret-password@127.0.0.1/db")
    defs = build_definitions(load_project({"QUANTDAG_ENV": "paper"}))
    market = defs.resources["market_data"]
    assert isinstance(market, AlpacaBarSourceResource)
    # The resources hold EnvVar references, not the values: nothing secret reaches the UI.
    shown = repr(defs.resources)
    assert "key-that-must-not-show" not in shown and "secret-password" not in shown
    assert isinstance(market.api_key, dg.EnvVar) or "APCA_API_KEY_ID" in repr(market)


def test_live_is_an_explicit_opt_in() -> None:
    with pytest.raises(ConfigError, match="explicit opt-in"):
        load_project({"QUANTDAG_ENV": "live"})
    project = load_project({"QUANTDAG_ENV": "live", "QUANTDAG_LIVE_CONFIRM": LIVE_CONFIRMATION})
    assert project.environment == "live"


def test_docker_compose_points_at_the_same_code_location() -> None:
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert "-m quantdag.definitions" in services["code"]["command"]
    workspace_file = services["webserver"]["command"].split("-w ")[1]
    grpc = yaml.safe_load((ROOT / workspace_file).read_text())["load_from"][0]["grpc_server"]
    assert grpc["host"] == "code" and str(grpc["port"]) in services["code"]["command"]
    assert "timescale" in services["db"]["image"]
    env = compose["x-quantdag"]["environment"]
    assert "DAGSTER_PG_URL" in env and "QUANTDAG_DATABASE_URL" in env


def test_nightly_retraining_follows_the_exchange_calendar(tmp_path: Path) -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from quantdag.definitions import defs

    schedule = defs.resolve_schedule_def("nightly_retraining_schedule")
    assert schedule.job_name == "all_assets_job"
    assert {s.name for s in defs.sensors} == {
        "nightly_training_sensor",
        "nightly_backtest_sensor",
        "live_trading_sensor",
        "kill_switch_alert_sensor",
        "run_failure_alert_sensor",
        "alert_retry_sensor",
        "pipeline_metrics_sensor",
        "pipeline_metrics_failure_sensor",
    }
    ny = ZoneInfo("America/New_York")
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:

        def tick(day: int) -> dg.ScheduleExecutionData:
            context = dg.build_schedule_context(
                instance=instance,
                scheduled_execution_time=datetime(2019, 2, day, 18, 30, tzinfo=ny),
                repository_def=defs.get_repository_def(),
            )
            return schedule.evaluate_tick(context)

        requests = list(tick(14).run_requests or [])
        assert len(requests) == 1 and requests[0].run_key == "nightly-2019-02-14-data"
        for day in (18, 16):  # Presidents' Day, a Saturday
            result = tick(day)
            assert not result.run_requests and "not a XNYS session" in (result.skip_message or "")


def test_backtest_report_is_defined() -> None:
    from quantdag.definitions import defs

    assert defs.resolve_job_def("backtest_job") is not None
    assert dg.AssetKey("backtest_report") in defs.resolve_all_asset_keys()


def test_mlflow_run_link_shows_where_but_no_password() -> None:
    from resources import MlflowResource

    uri = "postgresql+psycopg://quant:Pw-hunter2@db:5432/mlflow"
    link = MlflowResource(tracking_uri=uri).run_link("abc123")
    assert link.startswith("postgresql+psycopg://***@db:5432/mlflow run abc123")
    assert "Pw-hunter2" not in link


def test_features_and_labels_depend_on_the_bars_they_read_around_their_month() -> None:
    """A month's features read 45 days of earlier bars and its labels a few days of the next
    month's: a backfill of every asset must store those bars first, so the graph says so."""
    from quantdag.definitions import defs

    graph = defs.resolve_asset_graph()
    bars = dg.AssetKey("bars_15m")

    def upstream(asset: str, month: str) -> list[str]:
        key = dg.AssetKey(asset)
        node = graph.get(key)
        mapping = node.partition_mappings.get(bars)
        assert mapping is not None, f"{asset} does not declare which bars it reads"
        subset = node.partitions_def.subset_with_partition_keys([month])
        got = mapping.get_upstream_mapped_partitions_result_for_partitions(
            subset, node.partitions_def, graph.get(bars).partitions_def
        )
        return sorted(got.partitions_subset.get_partition_keys())

    assert upstream("feature_matrix", "2019-02-01") == ["2019-01-01", "2019-02-01"]
    assert upstream("triple_barrier_labels", "2019-01-01") == ["2019-01-01", "2019-02-01"]
