"""The deployable stack, checked without a Docker engine: docker-compose.yml against the
Compose specification's JSON schema (vendored in check-jsonschema), its ports bound to
127.0.0.1, its secrets interpolated from .env, its mounts present; the Prometheus config
for the containers checked by promtool; and every metric the Grafana dashboards query exported
by the live session."""

from __future__ import annotations

import importlib.resources
import json
import re
import shutil
import subprocess
from typing import Any

import jsonschema
import pytest
import yaml
from prometheus_client import generate_latest

from quantdag.metrics import live_registry, pipeline_registries
from tests.conftest import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SECRET_NAME = re.compile(r"PASSWORD|SECRET|KEY_ID|TOKEN|WEBHOOK")


def test_the_compose_file_follows_the_compose_specification() -> None:
    schema_file = importlib.resources.files("check_jsonschema.builtin_schemas.vendor").joinpath(
        "compose-spec.json"
    )
    schema = json.loads(schema_file.read_text())
    jsonschema.validate(COMPOSE, schema)
    wrong = dict(COMPOSE, services={"db": {"image": 5}})  # the check can fail
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(wrong, schema)


def test_the_stack_has_what_an_operator_expects() -> None:
    services = COMPOSE["services"]
    assert {"db", "code", "webserver", "daemon", "mlflow", "prometheus", "grafana"} <= set(services)
    assert services["db"]["image"].startswith("timescale/timescaledb")


def test_no_port_is_published_beyond_the_host() -> None:
    for name, service in COMPOSE["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port}"


def test_secrets_come_from_the_env_file_only() -> None:
    for name, service in COMPOSE["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                assert str(value).startswith("${"), f"{name}.{key} holds a literal"
        command = service.get("command", "")
        command = " ".join(command) if isinstance(command, list) else str(command)
        assert "PASSWORD" not in command, f"{name}'s command line holds a secret (ps shows it)"
    text = (ROOT / "docker-compose.yml").read_text()
    for url in re.findall(r"postgresql://[^\s]+", text):
        assert ":${POSTGRES_PASSWORD" in url, url
    example = (ROOT / "deploy" / "env.example").read_text()
    for needed in re.findall(r"\$\{([A-Z_]+)(?::\?|:-|\})", text):
        assert needed in example, f"{needed} is not in deploy/env.example"


def test_named_volumes_are_declared_and_mounted_files_exist() -> None:
    declared = set(COMPOSE["volumes"])
    used: set[str] = set()
    for service in COMPOSE["services"].values():
        for mount in service.get("volumes", []):
            source = str(mount).split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
            else:
                used.add(source)
    assert used == declared


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_the_containers_prometheus_config_checks() -> None:
    done = subprocess.run(
        ["promtool", "check", "config", "docker.yml"],
        cwd=ROOT / "deploy" / "prometheus",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _names(text: str) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}


def _exported() -> set[str]:
    names = _names(generate_latest(live_registry()).decode())
    for _, registry in pipeline_registries():
        names |= _names(generate_latest(registry).decode())
    return names


def _queries(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


@pytest.mark.parametrize("name", ["live_session.json", "risk.json", "pipeline_health.json"])
def test_every_metric_a_dashboard_queries_is_exported(name: str) -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / name).read_text())
    names = {m for e in _queries(dashboard) for m in re.findall(r"quantdag_[a-z_]+", e)}
    assert names and names <= _exported(), names - _exported()
