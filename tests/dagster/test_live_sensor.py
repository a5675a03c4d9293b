"""``live_trading_sensor`` over a temporary Dagster instance and trading database, at fixed
times around real XNYS sessions (2024-07-02 a full day, 2024-07-03 an early close at 13:00,
2024-07-04 Independence Day, 2024-07-06 a Saturday)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

from jobs.live import build_live_session_job
from pipelines.data.tables import alert_log
from pipelines.live.heartbeat import record_heartbeat
from pipelines.risk.killswitch import KillSwitch
from quantdag.project import load_project
from resources import TradingDatabaseResource
from resources.alerts import RecordingAlertsResource
from sensors.live import (
    ATTEMPT_TAG,
    LIVE_TAG,
    MAX_RUNTIME_TAG,
    SESSION_TAG,
    TERMINATED_BY_TAG,
    LiveSensorConfig,
    build_live_trading_sensor,
    live_tags,
)

ROOT = Path(__file__).resolve().parents[2]
NY = ZoneInfo("America/New_York")
DAY = date(2024, 7, 2)


def ny(day: date, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=NY).astimezone(UTC)


@dataclass
class World:
    instance: dg.DagsterInstance
    job: dg.JobDefinition
    db: TradingDatabaseResource
    now: datetime
    alerts: RecordingAlertsResource = field(default_factory=RecordingAlertsResource)

    def evaluate(
        self, config: LiveSensorConfig | None = None, at: datetime | None = None
    ) -> dg.SensorExecutionData:
        if at is not None:
            self.now = at
        sensor = build_live_trading_sensor(self.job, config, clock=lambda: self.now)
        context = dg.build_sensor_context(
            instance=self.instance, resources={"trading_db": self.db, "alerts": self.alerts}
        )
        return sensor.evaluate_tick(context)

    def add_run(
        self,
        session: date,
        attempt: int,
        status: str,
        started: datetime | None,
        requested: datetime | None = None,
    ) -> str:
        """A run of the live job as the sensor's request makes it (at ``requested``, default
        ``started``), started at ``started`` and moved to ``status``."""
        when = requested or started or self.now
        tags = {
            **live_tags(session, attempt, requested_at=when),
            "dagster/run_key": f"live:{session}:{attempt}",
        }
        run = self.instance.create_run_for_job(
            job_def=self.job,
            tags=tags,
            status=dg.DagsterRunStatus.NOT_STARTED,
        )
        if started is not None:
            start = dg.DagsterEvent(event_type_value="PIPELINE_START", job_name=self.job.name)
            self.instance.report_dagster_event(start, run.run_id, timestamp=started.timestamp())
        run = self.instance.get_run_by_id(run.run_id)
        assert run is not None
        if status == "FAILURE":
            self.instance.report_run_failed(run)
        elif status == "CANCELING":
            self.instance.report_run_canceling(run)

        elif status == "CANCELED":
            self.instance.report_run_canceled(run)
        elif status == "SUCCESS":
            done = dg.DagsterEvent(event_type_value="PIPELINE_SUCCESS", job_name=self.job.name)
            self.instance.report_dagster_event(done, run.run_id)
        after = self.instance.get_run_by_id(run.run_id)
        assert after is not None and after.status.value == status
        return run.run_id

    def beat(self, attempt: int, at: datetime, phase: str = "trading") -> None:
        record_heartbeat(
            self.db.store().engine,
            session=DAY,
            attempt=attempt,
            run_id=f"run-{attempt}",
            now=at,
            phase=phase,
            last_bar=None,
            state="ACTIVE",
        )

    def status(self, run_id: str) -> str:
        run = self.instance.get_run_by_id(run_id)
        assert run is not None
        return run.status.value

    def switch(self) -> KillSwitch:
        return KillSwitch(self.db.store().engine)


@pytest.fixture(scope="module")
def job() -> dg.JobDefinition:
    return build_live_session_job(load_project({}))


@pytest.fixture
def world(tmp_path: Path, job: dg.JobDefinition) -> Iterator[World]:
    db = TradingDatabaseResource(url=f"sqlite:///{tmp_path / 'trading.db'}")
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        yield World(instance, job, db, ny(DAY, 10))


@pytest.fixture
def terminable(tmp_path: Path, job: dg.JobDefinition) -> Iterator[World]:
    """A world whose run launcher reaches its workers: a terminate is taken (the run goes
    CANCELING) and the worker decides when it ends, as a real one does."""
    db = TradingDatabaseResource(url=f"sqlite:///{tmp_path / 'trading.db'}")
    (tmp_path / "dagster").mkdir()
    launcher = {"module": "tests.dagster.live_fakes", "class": "TerminableLauncher"}
    with dg.instance_for_test(
        temp_dir=str(tmp_path / "dagster"), overrides={"run_launcher": launcher}
    ) as instance:
        yield World(instance, job, db, ny(DAY, 10))


def _only_request(data: dg.SensorExecutionData) -> dg.RunRequest:
    requests = list(data.run_requests or [])
    assert len(requests) == 1, data.skip_message
    return requests[0]


@pytest.mark.parametrize(
    ("at", "why"),
    [
        (ny(date(2024, 7, 6), 11), "2024-07-06 is not a XNYS session"),  # Saturday
        (ny(date(2024, 7, 4), 11), "2024-07-04 is not a XNYS session"),  # Independence Day
        (ny(DAY, 9, 29, 59), "opens at 09:30 EDT: no live run before the open"),
        (ny(DAY, 16), "closed at 16:00 EDT: no live run after the close"),
        (ny(date(2024, 7, 3), 13, 0), "closed at 13:00 EDT (an early close)"),
        (ny(date(2024, 7, 3), 15, 30), "closed at 13:00 EDT (an early close)"),
    ],
)
def test_no_run_outside_sessions(world: World, at: datetime, why: str) -> None:
    data = world.evaluate(at=at)
    assert not data.run_requests
    assert why in (data.skip_message or "")


def test_one_run_per_session_with_its_tags_and_max_runtime(world: World) -> None:
    request = _only_request(world.evaluate(at=ny(DAY, 9, 30)))
    assert request.run_key == "live:2024-07-02:1"
    assert request.tags[SESSION_TAG] == "2024-07-02" and request.tags[ATTEMPT_TAG] == "1"
    assert request.tags[LIVE_TAG] == "session"
    # 6.5 hours to the 16:00 close plus the 900 s grace.
    assert request.tags[MAX_RUNTIME_TAG] == str(6 * 3600 + 1800 + 900)

    run_id = world.add_run(DAY, 1, "NOT_STARTED", None)  # created, waiting for its launch
    data = world.evaluate(at=ny(DAY, 9, 31))
    assert not data.run_requests and "is NOT_STARTED" in (data.skip_message or "")

    start = dg.DagsterEvent(event_type_value="PIPELINE_START", job_name=world.job.name)
    world.instance.report_dagster_event(start, run_id, timestamp=ny(DAY, 9, 31).timestamp())
    world.beat(1, ny(DAY, 11, 59, 30))
    data = world.evaluate(at=ny(DAY, 12))
    assert not data.run_requests and "is STARTED" in (data.skip_message or "")
    assert world.status(run_id) == "STARTED"
    assert not world.switch().tripped()


def test_early_close_day_runs_until_its_close(world: World) -> None:
    early = date(2024, 7, 3)
    request = _only_request(world.evaluate(at=ny(early, 12, 30)))
    assert request.run_key == "live:2024-07-03:1"
    assert request.tags[MAX_RUNTIME_TAG] == str(1800 + 900)


def test_relaunch_with_the_next_attempt_after_a_failure(world: World) -> None:
    world.add_run(DAY, 1, "FAILURE", ny(DAY, 9, 30))
    request = _only_request(world.evaluate(at=ny(DAY, 10)))
    assert request.run_key == "live:2024-07-02:2"
    assert request.tags[ATTEMPT_TAG] == "2"
    assert request.tags[MAX_RUNTIME_TAG] == str(6 * 3600 + 900)


def test_no_relaunch_after_a_person_cancels(world: World) -> None:
    world.add_run(DAY, 1, "FAILURE", ny(DAY, 9, 30))
    world.add_run(DAY, 2, "CANCELED", ny(DAY, 9, 45))
    data = world.evaluate(at=ny(DAY, 11))
    assert not data.run_requests
    assert "canceled by a person; no relaunch this session" in (data.skip_message or "")
    # The next session starts afresh.
    request = _only_request(world.evaluate(at=ny(date(2024, 7, 3), 9, 30)))
    assert request.run_key == "live:2024-07-03:1"


def test_no_relaunch_after_the_session_succeeded(world: World) -> None:
    world.add_run(DAY, 1, "SUCCESS", ny(DAY, 9, 30))
    data = world.evaluate(at=ny(DAY, 15, 59))
    assert not data.run_requests and "ended" in (data.skip_message or "")


def test_max_attempts_alerts_trips_and_requests_nothing(world: World) -> None:
    config = LiveSensorConfig(max_attempts=2)
    world.add_run(DAY, 1, "FAILURE", ny(DAY, 9, 30))
    assert _only_request(world.evaluate(config, ny(DAY, 9, 40))).run_key == "live:2024-07-02:2"
    world.add_run(DAY, 2, "FAILURE", ny(DAY, 9, 41))
    data = world.evaluate(config, ny(DAY, 9, 50))
    assert not data.run_requests
    message = data.skip_message or ""
    assert message.startswith("ALERT") and "max_attempts" in message and "NOT relaunched" in message
    # Nobody manages the positions: the switch says so until a person has looked.
    status = world.switch().status()
    assert status.tripped and "max_attempts" in status.reason


def test_stale_heartbeat_trips_the_kill_switch_and_relaunches(world: World) -> None:
    run_id = world.add_run(DAY, 1, "STARTED", ny(DAY, 9, 30))
    world.beat(1, ny(DAY, 10, 0))
    request = _only_request(world.evaluate(at=ny(DAY, 10, 10, 30)))  # 630 s of silence
    # The test instance's launcher cannot reach a worker: reported failed, relaunched at once.
    assert world.status(run_id) == "FAILURE"
    assert request.run_key == "live:2024-07-02:2"
    status = world.switch().status()
    assert status.tripped and status.actor == "live_trading_sensor"
    assert "not managed for 630 s" in status.reason

    # People are told, once: the next tick's same condition (its seconds counted up) is not
    # sent again.
    def told() -> list[tuple[str, str]]:
        with world.db.store().engine.connect() as conn:
            rows = conn.execute(sa.select(alert_log.c.summary, alert_log.c.outcome))
            return [(r.summary, r.outcome) for r in rows if "not managed for" in r.summary]

    (sent,) = told()
    assert sent[1] == "sent"
    world.evaluate(at=ny(DAY, 10, 11))
    assert len(told()) == 1
    # Read back by anyone from the database, as the relaunched session will.
    assert KillSwitch.from_url(world.db.url).tripped()


def test_a_person_who_reset_the_switch_is_not_overruled_by_the_same_evidence(
    world: World,
) -> None:
    world.add_run(DAY, 1, "FAILURE", ny(DAY, 9, 30))
    world.beat(1, ny(DAY, 10, 0))
    world.add_run(DAY, 2, "NOT_STARTED", None, requested=ny(DAY, 10, 0, 30))
    data = world.evaluate(at=ny(DAY, 10, 11))
    assert "ALERT" in (data.skip_message or "") and world.switch().tripped()
    world.switch().reset(reason="looked at the broker: flat", actor="alice", now=ny(DAY, 10, 12))
    data = world.evaluate(at=ny(DAY, 10, 13))
    assert "ALERT" in (data.skip_message or "")  # still said
    assert not world.switch().tripped()  # but not tripped again on what she saw


def test_silent_run_is_relaunched_before_the_kill_switch_trips(world: World) -> None:
    run_id = world.add_run(DAY, 1, "STARTED", ny(DAY, 9, 30))
    world.beat(1, ny(DAY, 10, 0))
    data = world.evaluate(at=ny(DAY, 10, 0, 50))  # 50 s: alive
    assert not data.run_requests and world.status(run_id) == "STARTED"
    request = _only_request(world.evaluate(at=ny(DAY, 10, 1, 30)))  # 90 s: dead, not yet stale
    assert request.run_key == "live:2024-07-02:2" and world.status(run_id) == "FAILURE"
    assert not world.switch().tripped()
    # The relaunch starts but never beats: its start-up allowance, then the staleness limit,
    # both counted from its request (not from its predecessor's last beat).
    second = world.add_run(DAY, 2, "STARTED", ny(DAY, 10, 1, 40))
    data = world.evaluate(at=ny(DAY, 10, 6, 30))  # 290 s since its request
    assert not data.run_requests and world.status(second) == "STARTED"
    assert not world.switch().tripped()
    request = _only_request(world.evaluate(at=ny(DAY, 10, 11, 50)))  # 610 s
    assert request.run_key == "live:2024-07-02:3" and world.status(second) == "FAILURE"
    status = world.switch().status()
    assert status.tripped and "not managed for 610 s" in status.reason


def test_a_relaunch_under_way_is_not_taken_for_stale(world: World) -> None:
    world.add_run(DAY, 1, "FAILURE", ny(DAY, 9, 30))
    world.beat(1, ny(DAY, 10, 0))  # its last beat
    world.add_run(DAY, 2, "NOT_STARTED", None, requested=ny(DAY, 10, 8))  # not yet launched
    data = world.evaluate(at=ny(DAY, 10, 12))  # 720 s since the beat, 240 s since the request
    assert not data.run_requests and "is NOT_STARTED" in (data.skip_message or "")
    assert not world.switch().tripped()


def test_run_that_never_beats_is_failed_after_startup(world: World) -> None:
    run_id = world.add_run(DAY, 1, "STARTED", ny(DAY, 9, 30))
    data = world.evaluate(at=ny(DAY, 9, 34))  # 240 s < startup_s: loading
    assert not data.run_requests and world.status(run_id) == "STARTED"
    request = _only_request(world.evaluate(at=ny(DAY, 9, 36)))  # 360 s > 300 s
    assert request.run_key == "live:2024-07-02:2" and world.status(run_id) == "FAILURE"
    assert not world.switch().tripped()  # within staleness_s of the request
    # No attempt ever beats: the session has been unmanaged since its first request.
    world.add_run(DAY, 2, "STARTED", ny(DAY, 9, 36, 10))
    world.evaluate(at=ny(DAY, 9, 46, 20))
    status = world.switch().status()
    assert status.tripped and "no heartbeat ever" in status.reason


def test_a_run_loading_its_model_has_the_startup_allowance(world: World) -> None:
    run_id = world.add_run(DAY, 1, "STARTED", ny(DAY, 9, 30))
    world.beat(1, ny(DAY, 9, 30, 10), phase="starting")
    data = world.evaluate(at=ny(DAY, 9, 32))  # 110 s > relaunch_after_s, < startup_s
    assert not data.run_requests and world.status(run_id) == "STARTED"
    world.beat(1, ny(DAY, 9, 33), phase="trading")
    _only_request(world.evaluate(at=ny(DAY, 9, 34, 10)))  # trading, 70 s silent: relaunched
    assert world.status(run_id) == "FAILURE"


def test_a_hung_run_is_terminated_and_its_relaunch_waits_until_it_stopped(
    terminable: World,
) -> None:
    world = terminable
    run_id = world.add_run(DAY, 1, "STARTED", ny(DAY, 9, 30))
    world.beat(1, ny(DAY, 10, 0))
    data = world.evaluate(at=ny(DAY, 10, 1, 30))  # 90 s silent: asked to stop
    assert not data.run_requests and "is CANCELING" in (data.skip_message or "")
    run = world.instance.get_run_by_id(run_id)
    assert run is not None and run.tags[TERMINATED_BY_TAG] == "live_trading_sensor"
    assert not world.evaluate(at=ny(DAY, 10, 2, 30)).run_requests  # still stopping
    # It wakes, handles its working orders, says it stopped, and its run ends CANCELED.
    world.beat(1, ny(DAY, 10, 2, 40), phase="stopped")
    world.instance.report_run_canceled(world.instance.get_run_by_id(run_id))  # type: ignore[arg-type]
    request = _only_request(world.evaluate(at=ny(DAY, 10, 3)))
    assert request.run_key == "live:2024-07-02:2"  # the sensor's cancel is relaunched
    assert not world.switch().tripped()


def test_a_run_that_never_finishes_stopping_is_given_up_on(terminable: World) -> None:
    world = terminable
    run_id = world.add_run(DAY, 1, "STARTED", ny(DAY, 9, 30))
    world.beat(1, ny(DAY, 10, 0))
    world.evaluate(at=ny(DAY, 10, 1, 30))
    assert world.status(run_id) == "CANCELING"
    # stop_timeout_s + relaunch_after_s = 300 s after it was asked to stop
    assert not world.evaluate(at=ny(DAY, 10, 6, 20)).run_requests
    request = _only_request(world.evaluate(at=ny(DAY, 10, 6, 40)))
    assert request.run_key == "live:2024-07-02:2" and world.status(run_id) == "FAILURE"


def test_a_persons_cancel_that_hangs_is_closed_as_canceled_and_not_relaunched(
    world: World,
) -> None:
    run_id = world.add_run(DAY, 1, "CANCELING", ny(DAY, 9, 30))
    world.beat(1, ny(DAY, 10, 0), phase="stopped")
    assert not world.evaluate(at=ny(DAY, 10, 0, 30)).run_requests
    data = world.evaluate(at=ny(DAY, 10, 1, 30))
    assert world.status(run_id) == "CANCELED"
    assert not data.run_requests and "canceled by a person" in (data.skip_message or "")


def test_a_session_that_said_it_ended_but_whose_run_hangs_is_relaunched(world: World) -> None:
    run_id = world.add_run(DAY, 1, "STARTED", ny(DAY, 9, 30))
    world.beat(1, ny(DAY, 11), phase="stopped")
    data = world.evaluate(at=ny(DAY, 11, 0, 30))
    assert not data.run_requests and world.status(run_id) == "STARTED"
    assert not world.switch().tripped()
    request = _only_request(world.evaluate(at=ny(DAY, 11, 1, 30)))  # it sends nothing more
    assert request.run_key == "live:2024-07-02:2" and world.status(run_id) == "FAILURE"


def test_after_the_close_a_session_that_did_not_close_trips_the_switch(world: World) -> None:
    world.add_run(DAY, 1, "FAILURE", ny(DAY, 9, 30))
    world.beat(1, ny(DAY, 15, 58))  # died two minutes before the close
    data = world.evaluate(at=ny(DAY, 16, 0, 30))
    assert not data.run_requests
    status = world.switch().status()
    assert status.tripped and "without closing the session" in status.reason


def test_after_the_close_a_closed_session_is_left_alone(world: World) -> None:
    world.add_run(DAY, 1, "SUCCESS", ny(DAY, 9, 30))
    world.beat(1, ny(DAY, 16, 0, 5), phase="closed")
    data = world.evaluate(at=ny(DAY, 16, 1))
    assert not data.run_requests and "ALERT" not in (data.skip_message or "")
    assert not world.switch().tripped()


def test_sensor_is_off_by_default_and_in_the_definitions() -> None:
    from quantdag.definitions import defs

    sensor = defs.resolve_sensor_def("live_trading_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert sensor.job_name == "live_session_job"
    assert sensor.minimum_interval_seconds == 30


@pytest.mark.parametrize("name", ["dagster.yaml", "dagster.postgres.yaml"])
def test_deploy_instances_limit_live_runs_and_monitor_them(name: str) -> None:
    config = yaml.safe_load((ROOT / "deploy" / name).read_text())
    limits = config["run_coordinator"]["config"]["tag_concurrency_limits"]
    assert {"key": LIVE_TAG, "limit": 1} in limits
    monitoring = config["run_monitoring"]
    assert monitoring["enabled"] is True
    assert 0 < monitoring["poll_interval_seconds"] <= 60


def test_deploy_instance_loads(tmp_path: Path) -> None:
    (tmp_path / "dagster.yaml").write_text((ROOT / "deploy" / "dagster.yaml").read_text())
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    try:
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_cancel_timeout_seconds == 300
    finally:
        instance.dispose()


def test_a_run_terminated_in_its_startup_has_its_whole_stop_before_a_relaunch(
    terminable: World,
) -> None:
    world = terminable
    run_id = world.add_run(DAY, 1, "STARTED", ny(DAY, 9, 30))  # loading, never beat
    data = world.evaluate(at=ny(DAY, 9, 35, 10))  # 310 s > startup_s: asked to stop
    assert not data.run_requests and world.status(run_id) == "CANCELING"
    data = world.evaluate(at=ny(DAY, 9, 38))  # 170 s into its stop (stop_timeout_s 240)
    assert not data.run_requests and world.status(run_id) == "CANCELING"
    request = _only_request(world.evaluate(at=ny(DAY, 9, 40, 20)))  # 310 s: given up on
    assert request.run_key == "live:2024-07-02:2" and world.status(run_id) == "FAILURE"


def test_after_the_close_a_session_the_sensor_stopped_is_not_a_clean_end(
    terminable: World,
) -> None:
    world = terminable
    run_id = world.add_run(DAY, 1, "STARTED", ny(DAY, 9, 30))
    world.beat(1, ny(DAY, 15, 56))
    world.evaluate(at=ny(DAY, 15, 57, 30))  # silent: asked to stop
    world.beat(1, ny(DAY, 16, 0, 30), phase="stopped")  # it kept its positions
    world.instance.report_run_canceled(world.instance.get_run_by_id(run_id))  # type: ignore[arg-type]
    world.evaluate(at=ny(DAY, 16, 2))
    status = world.switch().status()
    assert status.tripped and "stopped by the sensor" in status.reason


def test_after_the_close_a_persons_cancel_before_any_trading_is_left_alone(world: World) -> None:
    world.add_run(DAY, 1, "CANCELED", None)  # cancelled while queued: never beat
    data = world.evaluate(at=ny(DAY, 16, 1))
    assert "ALERT" not in (data.skip_message or "") and not world.switch().tripped()
