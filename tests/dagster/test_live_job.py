"""``live_session_job`` with the hand-written fake runners of ``tests/dagster/live_fakes.py``:
in process (observations, failures), then in a real run worker launched through a temporary
instance's DefaultRunLauncher (``dagster job launch``), terminated as the UI does and killed
with -9."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import dagster as dg
import pytest

from jobs.live import build_live_session_job
from pipelines.risk.killswitch import KillSwitch
from quantdag.project import load_project
from sensors.live import ATTEMPT_TAG, LIVE_TAG, SESSION_TAG, live_tags
from tests.dagster.live_fakes import report

ROOT = Path(__file__).resolve().parents[2]
DAY = date(2024, 7, 2)
KEYS = ("live_signals", "live_orders", "live_positions")


def _config(runner: str, **extra: object) -> dict[str, object]:
    return {"ops": {"live_session_op": {"config": {"runner": runner, **extra}}}}


def _observations(instance: dg.DagsterInstance, key: str) -> list[dg.AssetObservation]:
    records = instance.fetch_observations(dg.AssetKey(key), limit=100).records
    out = [r.asset_observation for r in records]
    return [o for o in reversed(out) if o is not None]  # oldest first


@pytest.fixture(scope="module")
def job() -> dg.JobDefinition:
    return build_live_session_job(load_project({}))


def test_each_bar_becomes_observations_of_the_three_assets(
    job: dg.JobDefinition, tmp_path: Path
) -> None:
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = job.execute_in_process(
            run_config=_config("tests.dagster.live_fakes:three_bars"),
            instance=instance,
            tags=live_tags(DAY, 2),
        )
        assert result.success
        signals, orders, positions = (_observations(instance, k) for k in KEYS)
        assert [o.metadata["bar_ts"].value for o in signals] == [
            report(i).bar_ts.isoformat() for i in range(3)
        ]
        assert [o.metadata["signals"].value for o in signals] == [2, 2, 2]
        assert [o.metadata["nonzero"].value for o in signals] == [0, 1, 2]
        assert [o.metadata["orders"].value for o in orders] == [0, 1, 1]
        assert [o.metadata["shares"].value for o in orders] == [0, 100, 50]
        assert "m-BBB-2" in str(orders[2].metadata["table"].value)
        assert [o.metadata["equity"].value for o in positions] == [100_000.0, 100_001.0, 100_002.0]
        assert positions[2].metadata["by_symbol"].value == {"AAA": 100, "BBB": -50}
        assert {o.metadata["state"].value for o in positions} == {"ACTIVE"}
        # Session and attempt come from the tags the sensor sets; the runner's log is the run's.
        messages = [e.message for e in instance.all_logs(result.run_id) if e.message]
        assert any("fake session 2024-07-02 attempt 2" in m for m in messages)
        [output] = [e for e in result.all_node_events if e.is_successful_output]
        summary = output.step_output_data.metadata
        assert summary["fills"].value == 2 and summary["ended"].value == "close"
        assert summary["session"].value == "2024-07-02" and summary["attempt"].value == 2


def test_config_overrides_the_tags(job: dg.JobDefinition, tmp_path: Path) -> None:
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = job.execute_in_process(
            run_config=_config(
                "tests.dagster.live_fakes:three_bars", session="2019-02-15", attempt=3
            ),
            instance=instance,
            tags=live_tags(DAY, 1),
        )
        assert result.success
        messages = [e.message for e in instance.all_logs(result.run_id) if e.message]
        assert any("fake session 2019-02-15 attempt 3" in m for m in messages)


def test_a_runner_exception_fails_the_run(job: dg.JobDefinition, tmp_path: Path) -> None:
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = job.execute_in_process(
            run_config=_config("tests.dagster.live_fakes:broken"),
            instance=instance,
            tags=live_tags(DAY, 1),
            raise_on_error=False,
        )
        assert not result.success
        run = instance.get_run_by_id(result.run_id)
        assert run is not None and run.status == dg.DagsterRunStatus.FAILURE
        [failure] = result.get_step_failure_events()
        error = failure.step_failure_data.error
        assert error is not None and "broker unreachable" in str(error.cause or error)
        assert len(_observations(instance, "live_signals")) == 1  # what it decided is kept


def test_a_test_runner_is_refused_outside_the_local_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("APCA_API_KEY_ID", "k")
    monkeypatch.setenv("APCA_API_SECRET_KEY", "s")
    paper = build_live_session_job(load_project({"QUANTDAG_ENV": "paper"}))
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = paper.execute_in_process(
            run_config=_config("tests.dagster.live_fakes:three_bars"),
            instance=instance,
            tags=live_tags(DAY, 1),
            raise_on_error=False,
        )
    assert not result.success
    error = result.get_step_failure_events()[0].step_failure_data.error
    assert error is not None and "refused in the paper environment" in str(error.cause or error)


def test_the_job_carries_the_live_concurrency_tag(job: dg.JobDefinition) -> None:
    assert job.tags[LIVE_TAG] == "session"


# -- a real run worker ----------------------------------------------------------------------


@dataclass
class Launched:
    instance: dg.DagsterInstance
    run_id: str
    out: Path
    trading_db: Path

    def status(self) -> dg.DagsterRunStatus:
        run = self.instance.get_run_by_id(self.run_id)
        assert run is not None
        return run.status

    def finished(self) -> bool:
        run = self.instance.get_run_by_id(self.run_id)
        return run is not None and run.is_finished

    def messages(self) -> list[str]:
        return [e.message or "" for e in self.instance.all_logs(self.run_id)]


def _wait(what: str, ok: Callable[[], bool], timeout: float = 45.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture
def launched(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Launched]:
    """``live_session_job`` with the ``until_stopped`` runner, launched by ``dagster job launch``
    on a temporary instance (DefaultRunCoordinator, DefaultRunLauncher): a code server process
    spawns the run worker, as under ``dagster dev``; running once the runner has started."""
    home, out = tmp_path / "dagster_home", tmp_path / "out"
    home.mkdir()
    out.mkdir()
    (home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\nrun_coordinator:\n"
        "  module: dagster._core.run_coordinator.default_run_coordinator\n"
        "  class: DefaultRunCoordinator\n"
    )
    runner, extra = getattr(request, "param", ("until_stopped", {}))
    env = {**os.environ, "DAGSTER_HOME": str(home), "QUANTDAG_TEST_LIVE_DIR": str(out)}
    env["QUANTDAG_DATABASE_URL"] = f"sqlite:///{tmp_path / 'trading.db'}"
    env.pop("QUANTDAG_ENV", None)
    run_id = str(uuid.uuid4())
    tags = live_tags(DAY, 1)
    cli = [sys.executable, "-m", "dagster", "job", "launch", "-m", "tests.dagster.live_fakes"]
    cli += ["-j", "live_session_job", "--run-id", run_id, "--tags", json.dumps(tags)]
    cli += ["--config-json", json.dumps(_config(f"tests.dagster.live_fakes:{runner}", **extra))]
    with (tmp_path / "launch.log").open("wb") as log:
        # Its own session: the code server outlives the CLI (until its run ends) and is
        # cleaned up below by that process group, which holds only what this test started.
        proc = subprocess.Popen(
            cli, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        assert proc.wait(timeout=60) == 0, (tmp_path / "launch.log").read_text()[-3000:]
        run = Launched(instance, run_id, out, tmp_path / "trading.db")
        _wait("the fake runner to start", (out / "started").exists)
        _wait("the run to be STARTED", lambda: run.status() == dg.DagsterRunStatus.STARTED)
        _wait("a first observation", lambda: bool(_observations(instance, "live_positions")))
        yield run
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        instance.dispose()


def test_terminate_stops_the_session_and_the_run_ends_canceled(launched: Launched) -> None:
    run = launched.instance.get_run_by_id(launched.run_id)
    assert run is not None and run.tags[SESSION_TAG] == "2024-07-02" and run.tags[ATTEMPT_TAG]
    # What the UI's Terminate button does.
    assert launched.instance.run_launcher.terminate(launched.run_id)
    _wait("the run to end", launched.finished)
    assert launched.status() == dg.DagsterRunStatus.CANCELED
    stopped = json.loads((launched.out / "stopped").read_text())  # the runner saw the stop
    assert stopped["bars"] >= 1 and stopped["session"] == "2024-07-02"
    messages = launched.messages()
    assert any("termination requested: stopping the session" in m for m in messages)
    assert any("stop received: cancelling working orders (fake)" in m for m in messages)


def test_kill_9_of_the_worker_ends_the_run_failed(launched: Launched) -> None:
    """What Dagster does when the run worker dies (no chance to clean up): the code server that
    spawned it notices and reports the run failed, so the sensor relaunches the session."""
    pid = json.loads((launched.out / "started").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    _wait("the run to end", launched.finished)
    assert launched.status() == dg.DagsterRunStatus.FAILURE
    assert not (launched.out / "stopped").exists()
    crash = f"Run execution process for {launched.run_id} was terminated by signal 9 (SIGKILL)"
    assert any(crash in m for m in launched.messages())


@pytest.mark.parametrize("launched", [("deaf_to_stop", {"stop_timeout_s": 1.0})], indirect=True)
def test_a_session_that_does_not_stop_in_time_trips_the_kill_switch(launched: Launched) -> None:
    """Its working orders are unknown and its process ends under it: nobody may trade on until
    a person has looked at the broker."""
    switch = KillSwitch.from_url(f"sqlite:///{launched.trading_db}")
    assert not switch.tripped()
    assert launched.instance.run_launcher.terminate(launched.run_id)
    _wait("the run to end", launched.finished)
    assert launched.status() == dg.DagsterRunStatus.CANCELED
    status = switch.status()
    assert status.tripped and status.actor.startswith("live_session_job run ")
    assert "did not stop within 1 s of a terminate" in status.reason
    assert any("check the broker for working orders" in m for m in launched.messages())
