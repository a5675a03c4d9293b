"""deploy/dagster.multinode.yaml, checked by Dagster's own instance-config validation and loaded
as an instance on the real PostgreSQL; its concurrency limits kept equal to deploy/dagster.yaml's
and to the tags the code puts on runs; its run containers given what docker-compose.yml gives the
code container (no Docker engine here: nothing is launched)."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.config import dagster_instance_config
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._serdes import ConfigurableClassData

from jobs.schedules import STEP_TAG
from pipelines.config import LiveSettings
from sensors.live import LIVE_TAG
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
MULTINODE = yaml.safe_load((DEPLOY / "dagster.multinode.yaml").read_text())
HAS_DOCKER_LAUNCHER = importlib.util.find_spec("dagster_docker") is not None


def _validated(tmp_path: Path, text: str) -> Mapping[str, Any]:
    """``text`` as $DAGSTER_HOME/dagster.yaml, read and validated as Dagster reads it."""
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text(text)
    config, custom_class = dagster_instance_config(str(home))
    assert custom_class is None
    return config


def _rehydrate(section: Mapping[str, Any]) -> Any:
    """A configurable class of the instance config, its config checked against its schema."""
    return ConfigurableClassData(
        section["module"], section["class"], yaml.safe_dump(section.get("config", {}))
    ).rehydrate()


def _limits(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(config["run_coordinator"]["config"]["tag_concurrency_limits"])


def test_dagster_accepts_the_multinode_instance_config(tmp_path: Path) -> None:
    config = _validated(tmp_path, (DEPLOY / "dagster.multinode.yaml").read_text())
    assert config["storage"] == {"postgres": {"postgres_url": {"env": "DAGSTER_PG_URL"}}}
    assert config["run_monitoring"]["enabled"] is True
    coordinator = _rehydrate(config["run_coordinator"])
    assert isinstance(coordinator, QueuedRunCoordinator)
    queue = coordinator.get_run_queue_config()
    assert queue.max_concurrent_runs >= 3
    assert list(queue.tag_concurrency_limits) == _limits(MULTINODE)
    # The validation can fail: a wrong type is refused.
    wrong = dict(MULTINODE, run_monitoring={"enabled": "sometimes"})
    with pytest.raises(DagsterInvalidConfigError):
        _validated(tmp_path, yaml.safe_dump(wrong))


@pytest.mark.skipif(
    not HAS_DOCKER_LAUNCHER, reason="dagster-docker is not installed: the launcher cannot resolve"
)
def test_the_docker_run_launcher_resolves_with_its_config() -> None:
    from dagster_docker import DockerRunLauncher

    section = MULTINODE["run_launcher"]
    launcher = _rehydrate(section)
    assert isinstance(launcher, DockerRunLauncher)
    assert launcher.supports_check_run_worker_health  # run monitoring sees a dead container
    assert launcher.networks == ["quantdag"]
    stop_timeout = launcher.container_kwargs["stop_timeout"]
    live_stop = LiveSettings.model_fields["stop_timeout_s"].default
    # Docker kills a terminated live session only after it has handled its working orders,
    # and before run monitoring gives up on the cancel.
    assert live_stop < stop_timeout < MULTINODE["run_monitoring"]["cancel_timeout_seconds"]
    wrong = dict(section, config={**section["config"], "container_kwargs": {"image": "x"}})
    with pytest.raises(Exception, match="'image' cannot be used in 'container_kwargs'"):
        _rehydrate(wrong)


@pytest.mark.parametrize("other", ["dagster.yaml", "dagster.postgres.yaml"])
def test_tag_concurrency_limits_match_the_single_host_configs(other: str) -> None:
    single = yaml.safe_load((DEPLOY / other).read_text())
    assert _limits(MULTINODE) == _limits(single)
    # ...and name the tags the code puts on nightly and live runs.
    assert {limit["key"]: limit["limit"] for limit in _limits(MULTINODE)} == {
        STEP_TAG: 1,
        LIVE_TAG: 1,
    }


def _forwarded() -> dict[str, str | None]:
    return {
        name: (value if sep else None)
        for name, sep, value in (
            entry.partition("=") for entry in MULTINODE["run_launcher"]["config"]["env_vars"]
        )
    }


def test_run_containers_get_what_the_compose_code_container_gets() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    code_env = compose["services"]["code"]["environment"]
    forwarded = _forwarded()
    assert set(code_env) | {"DAGSTER_PG_URL", "QUANTDAG_PARQUET_URL"} <= set(forwarded)
    for name, value in forwarded.items():
        if value is not None:  # a fixed value agrees with the single-host stack's
            assert str(code_env[name]) == value, name
    assert str(code_env["QUANTDAG_METRICS_PORT"]) in compose["services"]["code"]["expose"]
    example = (DEPLOY / "multinode.env.example").read_text().splitlines()
    unset = [
        n
        for n, v in forwarded.items()
        if v is None and not any(line.startswith(f"{n}=") for line in example)
    ]
    assert unset == [], "the launcher forwards these but deploy/multinode.env.example omits them"


@pytest.mark.integration
def test_the_multinode_instance_loads_on_postgres(
    pg_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not HAS_DOCKER_LAUNCHER:
        pytest.skip("dagster-docker is not installed: the instance's launcher cannot load")
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOY / "dagster.multinode.yaml", home / "dagster.yaml")
    monkeypatch.setenv(
        "DAGSTER_PG_URL", pg_database.replace("postgresql+psycopg://", "postgresql://")
    )
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        assert type(instance.run_launcher).__name__ == "DockerRunLauncher"
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_max_resume_run_attempts == 0
        queued = instance.run_coordinator.get_run_queue_config()
        assert [dict(x) for x in queued.tag_concurrency_limits] == _limits(MULTINODE)
