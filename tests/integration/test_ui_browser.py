"""The Dagster UI in a real browser (Debian's chromium, driven by Playwright): ``dagster dev``
on a temporary instance and trading database; the asset graph with every group, the nightly
schedule and the live sensor listed, a partition of ``bars_15m`` materialized from the UI,
a backfill of two partitions launched from it and finished, and the backtest report's summary
on its asset page with the report opening, in one click, in the MLflow UI. A screenshot of the
page is written to the test's directory when a step fails."""

from __future__ import annotations

import contextlib
import os
import re
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
import yaml

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
FROM_UI = {"dagster/from_ui": "true"}  # the tag the UI puts on the runs it launches


@dataclass
class UI:
    url: str
    home: Path
    shots: Path
    env: dict[str, str]
    """The environment of the servers: the same instance, stores and settings."""
    mlflow_url: str
    """The MLflow UI on the instance's tracking store (the backtest report's links)."""
    mlflow: subprocess.Popen[bytes]

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_config(str(self.home))

    def wait_for_mlflow(self, timeout: float) -> None:
        def up() -> bool:
            if self.mlflow.poll() is not None:
                log = (self.shots / "mlflow-ui.log").read_text()[-3000:]
                raise AssertionError(f"the MLflow UI exited: {log}")
            try:
                return requests.get(f"{self.mlflow_url}/health", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        _until("the MLflow UI to serve", up, timeout)


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


def _start(cmd: list[str], log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the process group ``proc`` leads (it was started in a session of its own)."""
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UI]:
    """What ``make dev`` starts, on its own instance and databases: ``dagster dev`` (webserver,
    daemon, code server) and, beside it, the MLflow UI on the tracking store (not awaited here:
    only the test that opens it waits for it)."""
    tmp = tmp_path_factory.mktemp("ui")
    home = tmp / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    port, mlflow_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "QUANTDAG_SETTINGS": str(_settings_in(tmp)),
        "QUANTDAG_DATABASE_URL": f"sqlite:///{tmp / 'trading.db'}",
        "QUANTDAG_MLFLOW_URI": f"sqlite:///{tmp / 'mlflow.db'}",
        "QUANTDAG_OPTUNA_URI": f"sqlite:///{tmp / 'optuna.db'}",
        "QUANTDAG_MLFLOW_UI_URL": f"http://127.0.0.1:{mlflow_port}",
    }
    env.pop("QUANTDAG_ENV", None)
    bin_dir = ROOT / ".venv" / "bin"
    cmd = [str(bin_dir / "dagster"), "dev", "-m", "quantdag.definitions", "-h", "127.0.0.1"]
    proc = _start([*cmd, "-p", str(port)], tmp / "dagster-dev.log", env, ROOT)
    store = env["QUANTDAG_MLFLOW_URI"]
    server = [str(bin_dir / "mlflow"), "server", "--backend-store-uri", store, "--workers", "1"]
    mlflow = _start(
        [*server, "-h", "127.0.0.1", "-p", str(mlflow_port)],
        tmp / "mlflow-ui.log",
        {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # no job runner: not used
        tmp,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _until("dagster dev to serve", lambda: _up(url) or proc.poll() is not None, 120)
        assert proc.poll() is None, (tmp / "dagster-dev.log").read_text()[-3000:]
        yield UI(url, home, tmp, env, env["QUANTDAG_MLFLOW_UI_URL"], mlflow)
    finally:
        try:
            _stop(proc)
        finally:
            _stop(mlflow)


def _settings_in(tmp: Path) -> Path:
    """The project's settings with every file they write (Parquet, reports) under ``tmp``."""
    settings = yaml.safe_load((ROOT / "config" / "settings.yaml").read_text())
    settings["universe"] = str(ROOT / "config" / settings["universe"])
    settings["data_dir"] = str(tmp / "data")
    path = tmp / "settings.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


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
        launched = dg.RunsFilter(tags={"dagster/partition": "2019-01-01", **FROM_UI})

        def done() -> bool:
            runs = instance.get_runs(launched)
            return bool(runs) and runs[0].is_finished

        _until("the run to finish", done, 90)
        (run,) = instance.get_runs(launched)
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


def test_the_backtest_report_shows_its_summary_and_opens_in_one_click(page: Any, ui: UI) -> None:
    # The MLflow UI makes its store's tables at start: up, it no longer races the run for them.
    ui.wait_for_mlflow(60)
    # The whole graph as `make run` materializes it, through the Python API on the UI's
    # instance: far quicker than launching each step from the UI.
    made = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "-m", "quantdag.run"],
        cwd=ROOT,
        env=ui.env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    instance = ui.instance()
    try:
        event = instance.get_latest_materialization_event(dg.AssetKey("backtest_report"))
        assert event is not None and event.asset_materialization is not None
        meta = event.asset_materialization.metadata
    finally:
        instance.dispose()
    period = str(meta["test_period"].value)
    shown = dict(re.findall(r"^\| (\w+) \| (.+) \|$", str(meta["summary"].value), re.M))
    assert shown["test_period"] == period
    assert shown["deflated_sharpe"].endswith(f"(N = {meta['n_trials'].value} trials)")
    _open(page, f"{ui.url}/assets/backtest_report")
    summary = page.get_by_role("row").filter(has=page.get_by_text("summary", exact=True))
    for key in ("test_period", "total_return", "sharpe", "beta", "alpha", "deflated_sharpe", "pbo"):
        summary.get_by_text(key, exact=True).first.wait_for()
        summary.get_by_text(shown[key], exact=True).first.wait_for()
    # One click on the report's link opens the MLflow UI on the report, drawn in its page.
    url = str(meta["report_url"].value)
    link = page.get_by_role("row").filter(has=page.get_by_text("report_url", exact=True))
    with page.context.expect_page() as opened:
        link.get_by_role("link", name=url).click()
    report = opened.value
    try:
        report.wait_for_load_state("domcontentloaded")
        assert report.url.startswith(ui.mlflow_url) and url.startswith(ui.mlflow_url)
        report.set_default_timeout(30_000)
        frame = report.frame_locator("iframe").first
        heading = frame.get_by_role("heading", level=1)
        heading.wait_for()
        assert period.split(" (")[0] in heading.inner_text()  # the test period, in the title
        frame.get_by_role("heading", name="Headline figures").wait_for()
        frame.locator("#equity .main-svg").first.wait_for()  # plotly drew the equity chart
    finally:
        report.close()
