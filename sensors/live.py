"""``live_trading_sensor``: during each exchange session, exactly one ``live_session_job`` run.

Every ``minimum_interval_seconds`` the sensor reads the exchange calendar, the session's runs
(by tag) and the session's heartbeat in the trading database, and decides (:func:`decide_live`,
a pure function of the time):

- outside a session (weekend, holiday, before the open, after the close, early closes
  included) nothing runs;
- no run yet: attempt 1 is requested, with run key ``live:{session}:{attempt}``, the tags
  :data:`SESSION_TAG`, :data:`ATTEMPT_TAG` and :data:`LIVE_TAG` (whose tag concurrency limit
  of 1 in ``deploy/dagster*.yaml`` keeps two sessions from ever trading at once) and
  ``dagster/max_runtime`` = seconds to the close + ``grace_after_close_s``;
- a run queued, starting or started: nothing is requested. A STARTED run whose own heartbeat is
  older than ``relaunch_after_s`` (or that wrote none within ``startup_s`` of its start) is
  asked to terminate (in case it only hangs) and reported failed: its worker died or hangs,
  and Dagster cannot always tell (the code server that spawned a worker reports it failed when
  it dies, but the DefaultRunLauncher has no health check if that server is gone too; see
  ``deploy/dagster.yaml``);
- the newest attempt FAILED: the next attempt is requested (a failed run key cannot be used
  again), up to ``max_attempts``; beyond that an alert and no run;
- the newest attempt CANCELED (a person terminated it) or SUCCEEDED: nothing more that session;
- while the session should be trading (a run in progress or being relaunched), a session
  heartbeat older than ``staleness_s`` alerts and trips the kill switch
  (:class:`pipelines.risk.killswitch.KillSwitch`, actor ``live_trading_sensor``): a person
  resets it once they have looked.

The sensor is STOPPED by default in every environment: live (and paper) trading is an explicit
opt-in, switched on in the UI or with ``dagster sensor start live_trading_sensor``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import dagster as dg

from pipelines.bars.calendar import NEW_YORK, sessions_between
from pipelines.live.heartbeat import Heartbeat, read_heartbeat
from pipelines.risk.killswitch import KillSwitch
from resources import TradingDatabaseResource

SESSION_TAG = "quantdag/live_session"
"""The session (New York date, ISO) a live run trades."""
ATTEMPT_TAG = "quantdag/live_attempt"
"""The attempt (1, 2, ...) of the session's live run."""
LIVE_TAG = "quantdag/live"
"""On every live run; the run coordinator allows one run with it at a time."""
MAX_RUNTIME_TAG = "dagster/max_runtime"
ACTOR = "live_trading_sensor"

_NY = ZoneInfo(NEW_YORK)
_IN_PROGRESS = frozenset({"QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"})


@dataclass(frozen=True)
class LiveSensorConfig:
    """What the sensor tolerates, in seconds.

    ``staleness_s``: a session heartbeat older than this while the session should be trading
    alerts and trips the kill switch (e.g. 300: longer than a relaunch takes).
    ``relaunch_after_s``: a STARTED run whose own heartbeat is this old is reported failed so
    that it is relaunched (e.g. 60).
    ``startup_s``: how long a STARTED run may take to write its first heartbeat (loading the
    model, connecting to the broker) before it counts as silent. ``max_attempts``: runs a
    session may start (first + relaunches). ``grace_after_close_s``: added to the seconds left
    to the close in the run's ``dagster/max_runtime`` (the session's own shutdown, cancelling
    or flattening at the close, takes time). ``minimum_interval_seconds``: between evaluations.
    """

    staleness_s: float = 300.0
    relaunch_after_s: float = 60.0
    startup_s: float = 300.0
    max_attempts: int = 5
    grace_after_close_s: float = 900.0
    minimum_interval_seconds: int = 30

    def __post_init__(self) -> None:
        for name in ("staleness_s", "relaunch_after_s", "startup_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"LiveSensorConfig.{name} must be positive")
        if self.max_attempts < 1:
            raise ValueError("LiveSensorConfig.max_attempts must be at least 1")
        if self.grace_after_close_s < 0:
            raise ValueError("LiveSensorConfig.grace_after_close_s must not be negative")
        if self.minimum_interval_seconds < 1:
            raise ValueError("LiveSensorConfig.minimum_interval_seconds must be at least 1")

    @classmethod
    def from_settings(cls, live: Any) -> LiveSensorConfig:
        """From the settings file's ``live`` section (fields of the same names; those it lacks
        keep their defaults)."""
        names = (
            "staleness_s",
            "relaunch_after_s",
            "startup_s",
            "max_attempts",
            "grace_after_close_s",
            "minimum_interval_seconds",
        )
        return cls(**{n: getattr(live, n) for n in names if hasattr(live, n)})


@dataclass(frozen=True)
class SessionWindow:
    """One exchange session's tradable window (UTC)."""

    session: date
    start: datetime
    end: datetime
    early_close: bool


@dataclass(frozen=True)
class LiveRun:
    """What the decision needs of one run of the session: its status (a DagsterRunStatus
    value), attempt, when it was created and started (UTC; None before its start)."""

    run_id: str
    attempt: int
    status: str
    created_at: datetime
    started_at: datetime | None


@dataclass(frozen=True)
class LiveDecision:
    """What to do now: report ``fail`` runs failed, trip the kill switch for ``trip``, log the
    ``alerts``, and request ``attempt`` (with ``max_runtime_s``) or skip saying ``message``."""

    message: str
    session: date | None = None
    attempt: int | None = None
    max_runtime_s: int | None = None
    fail: tuple[tuple[str, str], ...] = ()
    trip: str | None = None
    alerts: tuple[str, ...] = field(default=())


def session_window(calendar: str, session_kind: str, now: datetime) -> SessionWindow | None:
    """The session of ``calendar`` on ``now``'s New York date (the configured regular or
    extended hours), or None if that date is not a session."""
    day = now.astimezone(_NY).date()
    window = sessions_between(calendar, day, day).window(session_kind)  # type: ignore[arg-type]
    if window.height == 0:
        return None
    return SessionWindow(day, window["start"][0], window["end"][0], bool(window["early_close"][0]))


def _ny(t: datetime) -> str:
    return t.astimezone(_NY).strftime("%H:%M %Z")


def decide_live(
    now: datetime,
    *,
    day: date,
    window: SessionWindow | None,
    runs: Sequence[LiveRun],
    heartbeat: Heartbeat | None,
    config: LiveSensorConfig,
    calendar: str = "XNYS",
) -> LiveDecision:
    """The sensor's decision at ``now`` (UTC) for the New York date ``day``: its ``window``
    (None: not a session), the session's ``runs`` (any order) and its newest ``heartbeat``."""
    if window is None:
        return LiveDecision(f"{day} is not a {calendar} session (weekend or holiday): no trading")
    session = window.session
    if now < window.start:
        return LiveDecision(
            f"session {session} opens at {_ny(window.start)}: no live run before the open",
            session,
        )
    if now >= window.end:
        early = " (an early close)" if window.early_close else ""
        return LiveDecision(
            f"session {session} closed at {_ny(window.end)}{early}: no live run after the close",
            session,
        )
    runs = sorted(runs, key=lambda r: r.created_at, reverse=True)
    fail: list[tuple[str, str]] = []
    alerts: list[str] = []
    for run in runs:
        if run.status != "STARTED":
            continue
        own = heartbeat if heartbeat is not None and heartbeat.attempt == run.attempt else None
        if own is not None:
            if own.ended:
                continue  # the session ended (closed or stopped); its run is finishing
            silent = (now - own.beat_at).total_seconds()
            if silent > config.relaunch_after_s:
                fail.append(
                    (
                        run.run_id,
                        f"live session {session} attempt {run.attempt}: no heartbeat for "
                        f"{silent:.0f} s (last {own.phase} at {own.beat_at.isoformat()}; limit "
                        f"{config.relaunch_after_s:.0f} s): its worker is taken for dead",
                    )
                )
        else:
            since = (now - (run.started_at or run.created_at)).total_seconds()
            if since > config.startup_s:
                fail.append(
                    (
                        run.run_id,
                        f"live session {session} attempt {run.attempt}: started {since:.0f} s "
                        f"ago and wrote no heartbeat (limit {config.startup_s:.0f} s): its "
                        "worker is taken for dead",
                    )
                )
    failed = {run_id for run_id, _ in fail}
    status = {r.run_id: ("FAILURE" if r.run_id in failed else r.status) for r in runs}
    live = [r for r in runs if status[r.run_id] in _IN_PROGRESS]
    trip = None
    should_trade = any(status[r.run_id] != "CANCELING" for r in live) or bool(failed)
    if heartbeat is not None and not heartbeat.ended and should_trade:
        silent = (now - heartbeat.beat_at).total_seconds()
        if silent > config.staleness_s:
            trip = (
                f"live session {session}: no heartbeat for {silent:.0f} s (attempt "
                f"{heartbeat.attempt}, last {heartbeat.phase} at {heartbeat.beat_at.isoformat()}, "
                f"limit {config.staleness_s:.0f} s); positions are not being managed"
            )
            alerts.append(trip)
    alerts.extend(reason for _, reason in fail)
    common: dict[str, Any] = {"session": session, "fail": tuple(fail), "trip": trip}
    if live:
        r = live[0]
        return LiveDecision(
            f"session {session}: run {r.run_id} (attempt {r.attempt}) is {r.status}",
            alerts=tuple(alerts),
            **common,
        )
    attempts = max((r.attempt for r in runs), default=0)
    if runs:
        newest = runs[0]
        newest_status = status[newest.run_id]
        if newest_status == "CANCELED":
            return LiveDecision(
                f"session {session}: run {newest.run_id} (attempt {newest.attempt}) was "
                "canceled by a person; no relaunch this session",
                alerts=tuple(alerts),
                **common,
            )
        if newest_status == "SUCCESS":
            return LiveDecision(
                f"session {session}: run {newest.run_id} (attempt {newest.attempt}) ended",
                alerts=tuple(alerts),
                **common,
            )
        if attempts >= config.max_attempts:
            alerts.append(
                f"live session {session}: attempt {attempts} ended {newest_status} and the "
                f"session may start {config.max_attempts} runs (max_attempts): NOT relaunched; "
                "nobody manages the positions until a person acts"
            )
            return LiveDecision(
                f"session {session}: no run (attempt {attempts} of {config.max_attempts} "
                "ended and the session may start no more)",
                alerts=tuple(alerts),
                **common,
            )
    runtime = int((window.end - now).total_seconds() + config.grace_after_close_s)
    return LiveDecision(
        f"session {session}: starting attempt {attempts + 1}",
        attempt=attempts + 1,
        max_runtime_s=runtime,
        alerts=tuple(alerts),
        **common,
    )


def live_run_key(session: date, attempt: int) -> str:
    return f"live:{session.isoformat()}:{attempt}"


def live_tags(session: date, attempt: int, max_runtime_s: int | None = None) -> dict[str, str]:
    tags = {SESSION_TAG: session.isoformat(), ATTEMPT_TAG: str(attempt), LIVE_TAG: "session"}
    if max_runtime_s is not None:
        tags[MAX_RUNTIME_TAG] = str(max_runtime_s)
    return tags


def session_runs(instance: dg.DagsterInstance, job_name: str, session: date) -> list[LiveRun]:
    """The runs of ``job_name`` tagged with ``session`` (any status)."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(job_name=job_name, tags={SESSION_TAG: session.isoformat()})
    )
    out = []
    for rec in records:
        run = rec.dagster_run
        started = rec.start_time
        out.append(
            LiveRun(
                run_id=run.run_id,
                attempt=int(run.tags.get(ATTEMPT_TAG, "0") or 0),
                status=run.status.value,
                created_at=rec.create_timestamp.astimezone(UTC),
                started_at=None if started is None else datetime.fromtimestamp(started, UTC),
            )
        )
    return out


def build_live_trading_sensor(
    job: dg.JobDefinition,
    config: LiveSensorConfig | None = None,
    *,
    calendar: str = "XNYS",
    session_kind: str = "regular",
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
) -> dg.SensorDefinition:
    """``live_trading_sensor`` for ``job`` (the ``live_session_job``). ``clock`` gives the
    evaluation time (UTC; tests pass a fixed one); ``session_kind``: regular or extended
    hours of ``calendar``. STOPPED by default: trading is switched on by a person."""
    cfg = config or LiveSensorConfig()

    @dg.sensor(
        name="live_trading_sensor",
        job=job,
        minimum_interval_seconds=cfg.minimum_interval_seconds,
        default_status=default_status,
        description=f"During each {calendar} session: keeps exactly one live_session_job run "
        f"going (relaunched after a failure, up to {cfg.max_attempts} attempts; not after a "
        f"person cancels it); a heartbeat older than {cfg.staleness_s:.0f} s trips the kill "
        "switch. Off by default: turning it on starts trading.",
    )
    def live_trading_sensor(
        context: dg.SensorEvaluationContext, trading_db: TradingDatabaseResource
    ) -> dg.RunRequest | dg.SkipReason:
        now = clock()
        if now.tzinfo is None:
            raise ValueError(f"the sensor's clock gave {now} without a time zone")
        window = session_window(calendar, session_kind, now)
        day = now.astimezone(_NY).date()
        if window is None or not (window.start <= now < window.end):
            decision = decide_live(
                now, day=day, window=window, runs=(), heartbeat=None, config=cfg, calendar=calendar
            )
            return dg.SkipReason(decision.message)
        instance = context.instance
        engine = trading_db.store().engine
        decision = decide_live(
            now,
            day=day,
            window=window,
            runs=session_runs(instance, job.name, window.session),
            heartbeat=read_heartbeat(engine, window.session),
            config=cfg,
            calendar=calendar,
        )
        for run_id, reason in decision.fail:
            run = instance.get_run_by_id(run_id)
            if run is None or run.is_finished:
                continue
            # A worker that only hangs is asked to stop too (it then cancels its working
            # orders), so that it does not trade beside the relaunch; a dead one cannot answer.
            try:
                instance.run_launcher.terminate(run_id)
            except dg.DagsterError as exc:
                context.log.warning(f"could not ask run {run_id} to stop ({exc}); it is dead")
            instance.report_run_failed(run, f"{reason} (reported by {ACTOR})")
        if decision.trip is not None:
            status = KillSwitch(engine).trip(reason=decision.trip, actor=ACTOR, now=now)
            context.log.error(status.describe())
        for alert in decision.alerts:
            context.log.error(f"ALERT {alert}")
        if decision.attempt is None:
            text = decision.message
            if decision.alerts:
                text = "ALERT " + " | ".join(decision.alerts) + " -- " + text
            return dg.SkipReason(text)
        assert decision.session is not None
        context.log.info(decision.message)
        return dg.RunRequest(
            run_key=live_run_key(decision.session, decision.attempt),
            tags=live_tags(decision.session, decision.attempt, decision.max_runtime_s),
        )

    return live_trading_sensor
