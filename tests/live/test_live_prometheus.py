"""A real Prometheus (Debian's package) scrapes a replayed live session and fires an alert;
``promtool`` checks the shipped config and rules and runs their unit tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from pipelines.live.metrics import LiveMetrics
from quantdag.live import serve_metrics
from quantdag.testing.alpaca_server import LocalAlpaca
from quantdag.testing.live import Day, start_session, step_buckets, wait_subscribed
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

DEPLOY = ROOT / "deploy" / "prometheus"
PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="Prometheus is not installed (Debian: apt-get install prometheus; .ci/run does it)",
)


@dataclass(frozen=True)
class _Serve:
    metrics_port: int
    metrics_addr: str = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@needs_prometheus
def test_the_shipped_config_and_rules_check_and_their_unit_tests_pass() -> None:
    assert PROMTOOL is not None
    for args in (
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ):
        done = subprocess.run(
            [PROMTOOL, *args], cwd=DEPLOY, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """Prometheus on 127.0.0.1 with the shipped config and rules, scraping every second a
    metrics port it names, its alerts' ``for`` durations set to 0 (promtool's unit tests hold
    the durations); yields its URL and that metrics port."""
    assert PROMETHEUS is not None
    target = _free_port()
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["scrape_configs"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{target}"]}]
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["for"] = "0s"
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules))
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _until("Prometheus to be ready", lambda: _ready(url), 30)
        yield url, target
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/-/ready", timeout=1).status_code == 200
    except requests.ConnectionError:
        return False


def _until(what: str, ok: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.25)


def _query(url: str, expr: str) -> list[dict[str, Any]]:
    answer = requests.get(f"{url}/api/v1/query", params={"query": expr}, timeout=5).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]  # type: ignore[no-any-return]


def _firing(url: str) -> set[str]:
    alerts = requests.get(f"{url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    return {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}


@needs_prometheus
def test_prometheus_scrapes_a_replayed_session_and_fires_when_its_data_goes_stale(
    day: Day, server: LocalAlpaca, tmp_path: Path, prometheus: tuple[str, int]
) -> None:
    url, target = prometheus
    running = start_session(day, server, tmp_path / "live.db")
    metrics = LiveMetrics(minute_ages=running.session.minute_ages)
    keep = running.session._observe

    def observe(outcome: Any) -> None:
        metrics.on_bar(outcome, 15)
        metrics.on_result(running.session.result)
        assert keep is not None
        keep(outcome)

    running.session._observe = observe
    with serve_metrics(metrics, _Serve(target), lambda _: None):
        wait_subscribed(server, 0)
        buckets = running.session.agg.buckets
        step_buckets(server, running.engine, day.minutes, buckets[:4], alive=running.alive)
        decided = running.session.result.bars

        def scraped() -> bool:
            got = _query(url, "quantdag_live_bars_decided_total")
            return bool(got) and float(got[0]["value"][1]) == decided

        _until(f"Prometheus to scrape {decided} bars decided", scraped, 20)
        assert "LiveMarketDataStale" not in _firing(url)
        # The stream goes silent and the session's clock runs on: every symbol's newest minute
        # ages past the alert's 3 minutes (the session itself reconnects only after
        # live.data_timeout_s of wall time, longer than this test).
        server.stall_data(replay_seconds=3600)
        server.advance(buckets[4][0] + timedelta(minutes=5))
        _until("LiveMarketDataStale to fire", lambda: "LiveMarketDataStale" in _firing(url), 20)
        ages = _query(url, "quantdag_live_bar_age_seconds")
        assert len(ages) == len(day.symbols)
        assert min(float(a["value"][1]) for a in ages) > 180
        running.stop.set()
        running.thread.join(30)
    assert not running.error
