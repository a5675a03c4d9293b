"""``kill_switch_alert_sensor`` and ``run_failure_alert_sensor`` over a temporary instance and
trading database, with the in-memory alerts resource (the sinks themselves are tested against
local receivers in tests/integration/test_alerts.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from pipelines.data.tables import alert_log
from pipelines.risk.killswitch import KillSwitch
from quantdag.resources import alerts_resource
from resources import TradingDatabaseResource
from resources.alerts import RecordingAlertsResource
from sensors.alerts import (
    build_alert_retry_sensor,
    build_kill_switch_alert_sensor,
    build_run_failure_alert_sensor,
)

T0 = datetime(2024, 7, 2, 14, 0, tzinfo=UTC)


@pytest.fixture
def db(tmp_path: Path) -> TradingDatabaseResource:
    return TradingDatabaseResource(url=f"sqlite:///{tmp_path / 'trading.db'}")


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        yield instance


def _log(db: TradingDatabaseResource) -> list[tuple[str, str, str]]:
    with db.store().engine.connect() as conn:
        rows = conn.execute(
            sa.select(alert_log.c.kind, alert_log.c.summary, alert_log.c.outcome).order_by("id")
        )
        return [(r.kind, r.summary, r.outcome) for r in rows]


def test_a_tripped_kill_switch_is_told_once_per_trip(
    db: TradingDatabaseResource, instance: dg.DagsterInstance
) -> None:
    now = [T0]
    sensor = build_kill_switch_alert_sensor(clock=lambda: now[0])
    alerts = RecordingAlertsResource()

    def tick() -> str:
        context = dg.build_sensor_context(
            instance=instance, resources={"trading_db": db, "alerts": alerts}
        )
        return sensor.evaluate_tick(context).skip_message or ""

    assert "not tripped" in tick() and _log(db) == []
    switch = KillSwitch(db.store().engine)
    switch.trip(reason="reconciliation: AAA broker 7, record 0", actor="live_session", now=T0)
    now[0] = T0 + timedelta(seconds=30)
    assert tick().endswith("(alert sent)")
    now[0] = T0 + timedelta(seconds=60)
    assert tick().endswith("(alert duplicate)")
    switch.reset(reason="reconciled by hand", actor="alice", now=T0 + timedelta(minutes=2))
    switch.trip(reason="daily loss limit", actor="live_session", now=T0 + timedelta(minutes=3))
    now[0] = T0 + timedelta(minutes=3, seconds=30)
    assert tick().endswith("(alert sent)")  # a new trip is a new alert
    assert _log(db) == [
        ("kill_switch", "kill switch tripped by live_session", "sent"),
        ("kill_switch", "kill switch tripped by live_session", "sent"),
    ]


@dg.op
def broken_op() -> None:
    raise RuntimeError("broker unreachable after 3 retries (test)")


@dg.job
def broken_job() -> None:
    broken_op()


def test_a_failed_run_is_told_with_its_error(
    db: TradingDatabaseResource, instance: dg.DagsterInstance
) -> None:
    result = broken_job.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    run = instance.get_run_by_id(result.run_id)
    assert run is not None
    failure = next(
        e
        for e in instance.all_logs(result.run_id)
        if e.dagster_event is not None and e.dagster_event.event_type_value == "PIPELINE_FAILURE"
    )
    assert failure.dagster_event is not None
    sensor = build_run_failure_alert_sensor(clock=lambda: T0)
    context = dg.build_run_status_sensor_context(
        sensor_name="run_failure_alert_sensor",
        dagster_event=failure.dagster_event,
        dagster_instance=instance,
        dagster_run=run,
        resources={"trading_db": db, "alerts": RecordingAlertsResource()},
    ).for_run_failure()
    sensor(context)
    ((kind, summary, outcome),) = _log(db)
    assert (kind, outcome) == ("run_failed", "sent")
    assert summary == f"broken_job run {run.run_id[:8]} failed"


def test_alert_settings_come_from_the_environment_only() -> None:
    resource = alerts_resource(
        {
            "QUANTDAG_ALERT_SMTP_HOST": "mail.example.com",
            "QUANTDAG_ALERT_SMTP_TO": "ops@example.com, risk@example.com",
        }
    )
    assert resource.smtp_recipients == ["ops@example.com", "risk@example.com"]
    assert [s.name for s in resource.sinks()] == ["smtp"]
    assert alerts_resource({}).sinks() == []
    with pytest.raises(ValueError, match="smtp_recipients is empty"):
        alerts_resource({"QUANTDAG_ALERT_SMTP_HOST": "mail.example.com"}).sinks()


def test_the_retry_sensor_sends_again_what_no_sink_delivered(
    db: TradingDatabaseResource, instance: dg.DagsterInstance
) -> None:
    from pipelines.ops.alerts import Alert, Alerter, AlertError, WebhookSink

    closed = WebhookSink("http://127.0.0.1:9/hook", retries=1, sleep=lambda s: None)
    alert = Alert("run_failed", "run_failed:r1", "training_job run r1 failed", "why")
    with pytest.raises(AlertError):
        Alerter([closed], db.store().engine).raise_alert(alert, T0)
    sensor = build_alert_retry_sensor(clock=lambda: T0 + timedelta(minutes=1))
    alerts = RecordingAlertsResource()

    def tick() -> str:
        context = dg.build_sensor_context(
            instance=instance, resources={"trading_db": db, "alerts": alerts}
        )
        return sensor.evaluate_tick(context).skip_message or ""

    assert tick() == "1 undelivered alerts sent again: sent"
    assert tick() == "no undelivered alert to send again"
    assert [(k, o) for k, _, o in _log(db)] == [("run_failed", "failed"), ("run_failed", "sent")]
