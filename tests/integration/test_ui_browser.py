"""The Dagster UI in a real browser (Debian's chromium, driven by Playwright): ``dagster dev``
on a temporary instance and trading database; the asset graph with every group, the nightly
schedule and the live sensor listed, a partition of ``bars_15m`` materialized from the UI,
and a backfill of two partitions launched from it and finished. A screenshot of the page is
written to the test's directory when a step fails."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import requests

from tests.conftest import ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="chromium is not installed (Debian: apt-get install chromium; .ci/run does it)",
    ),
]
GROUPS = ("market_data", "research", "training", "backtest", "live")


@dataclass
class UI:
    url: str
    home: Path
    shots: Path

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_config(str(self.home))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _until(what: str, ok: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def _up(url: str) -> bool:
    try:
        return requests.get(f"{url}/server_info", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UI]:
    """``dagster dev`` (webserver, daemon, code server) on its own instance and databases."""
    tmp = tmp_path_factory.mktemp("ui")
    home = tmp / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    port = _free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "QUANTDAG_DATABASE_URL": f"sqlite:///{tmp / 'trading.db'}",
        "QUANTDAG_MLFLOW_URI": f"sqlite:///{tmp / 'mlflow.db'}",
        "QUANTDAG_OPTUNA_URI": f"sqlite:///{tmp / 'optuna.db'}",
    }
    env.pop("QUANTDAG_ENV", None)
    dagster = ROOT / ".venv" / "bin" / "dagster"
    cmd = [str(dagster), "dev", "-m", "quantdag.definitions", "-h", "127.0.0.1", "-p", str(port)]
    log = (tmp / "dagster-dev.log").open("wb")
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _until("dagster dev to serve", lambda: _up(url) or proc.poll() is not None, 120)
        assert proc.poll() is None, (tmp / "dagster-dev.log").read_text()[-3000:]
        yield UI(url, home, tmp)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, ui: UI, request: pytest.FixtureRequest) -> Iterator[Any]:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(30_000)
    yield page
    failed = getattr(request.node, "rep_call", None)
    if failed is None or failed.failed:
        shot = ui.shots / f"{request.node.name}.png"
        page.screenshot(path=str(shot))
        print(f"screenshot of the failure: {shot}")
    page.close()


def _open(page: Any, url: str) -> None:
    page.goto(url, wait_until="networkidle", timeout=60_000)
    skip = page.get_by_role("button", name="Skip")  # the first visit's newsletter dialog
    if skip.count():
        skip.click()


def test_the_asset_graph_shows_every_group_and_automation_lists_ours(page: Any, ui: UI) -> None:
    _open(page, f"{ui.url}/asset-groups")
    for group in GROUPS:
        assert page.get_by_text(group, exact=True).first.is_visible(), group
    _open(page, f"{ui.url}/automation")
    for name in ("nightly_retraining_schedule", "live_trading_sensor", "kill_switch_alert_sensor"):
        page.get_by_text(name, exact=True).first.wait_for()


def _launch(page: Any, ui: UI, partitions: str, button: str) -> None:
    _open(page, f"{ui.url}/assets/bars_15m")
    page.get_by_role("button", name="Materialize…").click()
    dialog = page.get_by_role("dialog")
    box = dialog.get_by_placeholder("ex: 2019-01-01, 2019-02-01")
    box.fill(partitions)
    box.press("Enter")
    dialog.get_by_role("button", name=button).click()
    dialog.wait_for(state="hidden")


def test_a_partition_is_materialized_from_the_ui(page: Any, ui: UI) -> None:
    _launch(page, ui, "2019-01-01", "Launch 1 run")
    instance = ui.instance()
    try:

        def done() -> bool:
            runs = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": "2019-01-01"}))
            return bool(runs) and runs[0].is_finished

        _until("the run to finish", done, 90)
        (run,) = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": "2019-01-01"}))
        assert run.status == dg.DagsterRunStatus.SUCCESS
        key = dg.AssetKey("bars_15m")
        assert "2019-01-01" in instance.get_materialized_partitions(key)
    finally:
        instance.dispose()
    _open(page, f"{ui.url}/runs/{run.run_id}")
    page.get_by_text("Success").first.wait_for()


def test_a_backfill_of_two_partitions_is_launched_from_the_ui_and_finishes(
    page: Any, ui: UI
) -> None:
    _launch(page, ui, "2019-01-01, 2019-02-01", "Launch backfill")
    instance = ui.instance()
    try:

        def finished() -> bool:
            backfills = instance.get_backfills()
            return bool(backfills) and backfills[0].status.value != "REQUESTED"

        _until("the backfill to finish", finished, 150)
        (backfill,) = instance.get_backfills()
        assert backfill.status.value in ("COMPLETED_SUCCESS", "COMPLETED"), backfill.status
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill.backfill_id}))
        assert sorted(r.tags["dagster/partition"] for r in runs) == ["2019-01-01", "2019-02-01"]
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    finally:
        instance.dispose()
