"""Alerts from Dagster: ``kill_switch_alert_sensor`` (the trading database's kill switch,
whoever tripped it: a person, the live session, a limit, the live sensor) and
``run_failure_alert_sensor`` (any run of this code location that fails, blocking checks and
live sessions included), and ``alert_retry_sensor`` (sends again what no sink delivered). All
are on by default: they only tell people. Where alerts go is the ``alerts`` resource
(:class:`resources.alerts.AlertsResource`)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import dagster as dg

from pipelines.ops.alerts import Alert, AlertError
from pipelines.risk.killswitch import KillSwitch, KillSwitchStatus
from resources import TradingDatabaseResource
from resources.alerts import AlertsResource


def kill_switch_alert(status: KillSwitchStatus) -> Alert | None:
    """The alert for a :class:`~pipelines.risk.killswitch.KillSwitchStatus` (None: not
    tripped). One per trip: its key is the trip's time."""
    since = status.since
    if not status.tripped or since is None:
        return None
    return Alert(
        "kill_switch",
        f"kill_switch:{since.isoformat()}",
        f"kill switch tripped by {status.actor}",
        f"{status.reason}\nSince {since.isoformat()}. Nothing new is opened until "
        "a person resets it: python -m quantdag.killswitch reset --reason '...'",
    )


def build_kill_switch_alert_sensor(
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> dg.SensorDefinition:
    """``kill_switch_alert_sensor``: every 30 s, an alert while the kill switch is tripped
    (once per trip, again after the alerts' ``dedup_s`` if it stays tripped)."""

    @dg.sensor(
        name="kill_switch_alert_sensor",
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Alerts (webhook, mail) when the kill switch is tripped, whoever tripped it.",
    )
    def kill_switch_alert_sensor(
        context: dg.SensorEvaluationContext,
        trading_db: TradingDatabaseResource,
        alerts: AlertsResource,
    ) -> dg.SkipReason:
        engine = trading_db.store().engine
        status = KillSwitch(engine).status()
        alert = kill_switch_alert(status)
        if alert is None:
            return dg.SkipReason(status.describe())
        try:
            result = alerts.alerter(engine).raise_alert(alert, clock())
        except AlertError as exc:  # logged as failed: the next tick tries again
            context.log.error(f"the kill-switch alert could not be delivered: {exc}")
            return dg.SkipReason(f"{status.describe()} (alert NOT delivered: {exc})")
        return dg.SkipReason(f"{status.describe()} (alert {result.outcome})")

    return kill_switch_alert_sensor


def build_run_failure_alert_sensor(
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> dg.SensorDefinition:
    """``run_failure_alert_sensor``: an alert for each failed run of this code location."""

    @dg.run_failure_sensor(
        name="run_failure_alert_sensor",
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Alerts (webhook, mail) when a run fails (failed checks that block, live "
        "sessions, training, data).",
    )
    def run_failure_alert_sensor(
        context: dg.RunFailureSensorContext,
        trading_db: TradingDatabaseResource,
        alerts: AlertsResource,
    ) -> None:
        run = context.dagster_run
        why = context.failure_event.message or "no message"
        alert = Alert(
            "run_failed",
            f"run_failed:{run.run_id}",
            f"{run.job_name} run {run.run_id[:8]} failed",
            f"{why}\nTags: {dict(run.tags)}",
            "page" if run.job_name == "live_session_job" else "warn",
        )
        try:
            alerts.alerter(trading_db.store().engine).raise_alert(alert, clock())
        except AlertError as exc:
            # The cursor moves past this run: the failure is in alert_log (outcome failed)
            # and in this error, not lost silently.
            context.log.error(f"the alert for run {run.run_id} could not be delivered: {exc}")

    return run_failure_alert_sensor


def build_alert_retry_sensor(
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> dg.SensorDefinition:
    """``alert_retry_sensor``: every minute, alerts that no sink delivered (a webhook down, a
    mail server refusing) are sent again, up to 5 attempts within 6 hours."""

    @dg.sensor(
        name="alert_retry_sensor",
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Sends again the alerts no sink delivered (up to 5 attempts in 6 hours).",
    )
    def alert_retry_sensor(
        context: dg.SensorEvaluationContext,
        trading_db: TradingDatabaseResource,
        alerts: AlertsResource,
    ) -> dg.SkipReason:
        results = alerts.alerter(trading_db.store().engine).retry_failed(clock())
        if not results:
            return dg.SkipReason("no undelivered alert to send again")
        outcomes = ", ".join(sorted({r.outcome for r in results}))
        return dg.SkipReason(f"{len(results)} undelivered alerts sent again: {outcomes}")

    return alert_retry_sensor
