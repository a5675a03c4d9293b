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
- a run queued, starting, started or canceling: nothing is requested. A STARTED run whose own
  heartbeat is older than ``relaunch_after_s`` (``startup_s`` while it says ``starting``, or
  if it wrote none since its start) is terminated, tagged :data:`TERMINATED_BY_TAG`: a worker
  that only hangs then handles its working orders and ends CANCELED, and the relaunch waits
  for it; one that cannot be asked (its code server is gone) is reported failed at once. A run
  stuck in CANCELING, silent past ``stop_timeout_s`` + ``relaunch_after_s``, is given up on
  (failed if the sensor stopped it, canceled if a person did). An attempt that a relaunch
  replaced and that wakes up finds its lease gone (a newer attempt's heartbeat) and stops
  without sending or cancelling anything;
- the newest attempt FAILED, or CANCELED by the sensor: the next attempt is requested (a run
  key cannot be used again), up to ``max_attempts``; beyond that an alert, the kill switch
  tripped, and no run;
- the newest attempt CANCELED by a person, or SUCCEEDED: nothing more that session;
- while the session should be trading, no heartbeat of any attempt for ``staleness_s`` (counted
  from the newest run's request at the earliest, so that a relaunch has its time) alerts and
  trips the kill switch (:class:`pipelines.risk.killswitch.KillSwitch`, actor
  ``live_trading_sensor``): a person resets it once they have looked, and the same evidence
  does not trip it again;
- after the close, a session whose newest attempt neither closed nor was stopped by a person
  (it died near the close, or its run outlived ``dagster/max_runtime``) alerts and trips the
  switch: positions may be held past the close unwatched.

The sensor is STOPPED by default in every environment: live (and paper) trading is an explicit
opt-in, switched on in the UI or with ``dagster sensor start live_trading_sensor``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import dagster as dg

from pipelines.bars.calendar import NEW_YORK, sessions_between
from pipelines.live.heartbeat import STARTUP_PHASES, Heartbeat, read_heartbeats
from pipelines.ops.alerts import Alert, AlertError
from pipelines.risk.killswitch import KillSwitch, KillSwitchStatus
from resources import TradingDatabaseResource
from resources.alerts import AlertsResource

SESSION_TAG = "quantdag/live_session"
"""The session (New York date, ISO) a live run trades."""
ATTEMPT_TAG = "quantdag/live_attempt"
"""The attempt (1, 2, ...) of the session's live run."""
LIVE_TAG = "quantdag/live"
"""On every live run; the run coordinator allows one run with it at a time."""
REQUESTED_TAG = "quantdag/live_requested_at"
"""When the sensor requested the run (UTC ISO, by the sensor's clock: the times it compares)."""
TERMINATED_BY_TAG = "quantdag/live_terminated_by"
"""Set (to :data:`ACTOR`) on a run the sensor terminated: its CANCELED end is relaunched."""
TERMINATED_AT_TAG = "quantdag/live_terminated_at"
"""When the sensor asked the run to stop (UTC ISO, the sensor's clock): its stop is timed
from then."""
MAX_RUNTIME_TAG = "dagster/max_runtime"
ACTOR = "live_trading_sensor"

_NY = ZoneInfo(NEW_YORK)
_IN_PROGRESS = frozenset({"QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"})


@dataclass(frozen=True)
class LiveSensorConfig:
    """What the sensor tolerates, in seconds.

    ``staleness_s``: while the session should be trading, no heartbeat of any attempt for this
    long (counted from the newest run's request at the earliest) alerts and trips the kill
    switch (e.g. 600: longer than a relaunch takes, a hung worker's stop included).
    ``stop_timeout_s``: how long a terminated session may take to stop (as the job's).
    ``relaunch_after_s``: a STARTED run whose own heartbeat is this old is reported failed so
    that it is relaunched (e.g. 60).
    ``startup_s``: how long a STARTED run may take to write its first heartbeat (loading the
    model, connecting to the broker) before it counts as silent. ``max_attempts``: runs a
    session may start (first + relaunches). ``grace_after_close_s``: added to the seconds left
    to the close in the run's ``dagster/max_runtime`` (the session's own shutdown, cancelling
    or flattening at the close, takes time). ``minimum_interval_seconds``: between evaluations.
    """

    staleness_s: float = 600.0
    relaunch_after_s: float = 60.0
    startup_s: float = 300.0
    max_attempts: int = 5
    grace_after_close_s: float = 900.0
    minimum_interval_seconds: int = 30
    stop_timeout_s: float = 240.0

    def __post_init__(self) -> None:
        for name in ("staleness_s", "relaunch_after_s", "startup_s", "stop_timeout_s"):
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
            "stop_timeout_s",
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
    value), attempt, when it was created, started and ended (UTC; None if not yet), and whether
    the sensor terminated it (``by_sensor``: a relaunch follows; a person's cancel is final)."""

    run_id: str
    attempt: int
    status: str
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None = None
    by_sensor: bool = False
    terminated_at: datetime | None = None


@dataclass(frozen=True)
class LiveDecision:
    """What to do now: ``terminate`` runs (tagged as the sensor's, so that their CANCELED end
    is relaunched), report ``fail`` runs failed and ``cancel`` runs canceled (stuck in
    stopping), trip the kill switch for ``trip``, log the ``alerts``, and request ``attempt``
    (with ``max_runtime_s``) or skip saying ``message``."""

    message: str
    session: date | None = None
    attempt: int | None = None
    max_runtime_s: int | None = None
    terminate: tuple[tuple[str, str], ...] = ()
    fail: tuple[tuple[str, str], ...] = ()
    cancel: tuple[tuple[str, str], ...] = ()
    trip: str | None = None
    alerts: tuple[str, ...] = field(default=())

    @property
    def acts(self) -> bool:
        """Whether runs change status by this decision (the sensor then decides again)."""
        return bool(self.terminate or self.fail or self.cancel)


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


def _may_trip(switch: KillSwitchStatus | None, evidence: datetime) -> bool:
    """Trip only a switch that is not tripped and that no one has reset since ``evidence`` (a
    person who looked and reset it is not overruled by the same old evidence each tick)."""
    if switch is None:
        return True
    if switch.tripped:
        return False
    return switch.since is None or switch.since < evidence


def _watch_runs(
    now: datetime,
    session: date,
    runs: Sequence[LiveRun],
    heartbeats: Mapping[int, Heartbeat],
    config: LiveSensorConfig,
) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[tuple[str, str]]]:
    """Runs in progress whose worker is dead, hangs, or will not finish stopping."""
    terminate: list[tuple[str, str]] = []
    fail: list[tuple[str, str]] = []
    cancel: list[tuple[str, str]] = []
    for run in runs:
        own = heartbeats.get(run.attempt)
        name = f"live session {session} attempt {run.attempt}"
        age = None if own is None else (now - own.beat_at).total_seconds()
        if run.status == "STARTED":
            if own is None:
                since = (now - (run.started_at or run.created_at)).total_seconds()
                if since > config.startup_s:
                    terminate.append(
                        (
                            run.run_id,
                            f"{name}: started {since:.0f} s ago and wrote no heartbeat (limit "
                            f"{config.startup_s:.0f} s): its worker is taken for dead or hung",
                        )
                    )
            elif own.ended:
                assert age is not None
                if age > config.relaunch_after_s:
                    # It said it ended and sends nothing more: safe to mark it failed at once.
                    fail.append(
                        (
                            run.run_id,
                            f"{name}: its session ended ({own.phase}) {age:.0f} s ago but the "
                            "run did not finish",
                        )
                    )
            else:
                assert age is not None
                limit = config.startup_s if own.phase in STARTUP_PHASES else config.relaunch_after_s
                if age > limit:
                    terminate.append(
                        (
                            run.run_id,
                            f"{name}: no heartbeat for {age:.0f} s (last {own.phase} at "
                            f"{own.beat_at.isoformat()}; limit {limit:.0f} s): its worker is "
                            "taken for dead or hung",
                        )
                    )
        elif run.status == "CANCELING":
            # Asked to stop: the session handles its working orders (up to stop_timeout_s,
            # beating meanwhile), then the run ends CANCELED. One that stopped beating and
            # did not end is given up on, so that the session's slot is free for a relaunch.
            if own is not None and own.ended:
                assert age is not None
                limit, what = config.relaunch_after_s, f"stopped ({own.phase})"
            else:
                # Timed from the later of its last sign of life and the request to stop: a run
                # terminated for a long silence still has its whole stop_timeout_s.
                signs = [own.beat_at if own is not None else (run.started_at or run.created_at)]
                if run.terminated_at is not None:
                    signs.append(run.terminated_at)
                age = (now - max(signs)).total_seconds()
                limit, what = config.stop_timeout_s + config.relaunch_after_s, "was stopping"
            if age > limit:
                reason = (
                    f"{name}: {what}, silent for {age:.0f} s, and its run did not end (limit "
                    f"{limit:.0f} s)"
                )
                (fail if run.by_sensor else cancel).append((run.run_id, reason))
    return terminate, fail, cancel


def decide_live(
    now: datetime,
    *,
    day: date,
    window: SessionWindow | None,
    runs: Sequence[LiveRun],
    heartbeats: Mapping[int, Heartbeat],
    config: LiveSensorConfig,
    switch: KillSwitchStatus | None = None,
    calendar: str = "XNYS",
) -> LiveDecision:
    """The sensor's decision at ``now`` (UTC) for the New York date ``day``: its ``window``
    (None: not a session), the session's ``runs`` (any order), the heartbeat of each attempt
    and the kill switch as stored (None: never set)."""
    if window is None:
        return LiveDecision(f"{day} is not a {calendar} session (weekend or holiday): no trading")
    session = window.session
    if now < window.start:
        return LiveDecision(
            f"session {session} opens at {_ny(window.start)}: no live run before the open",
            session,
        )
    runs = sorted(runs, key=lambda r: r.created_at, reverse=True)
    if now >= window.end:
        return _after_close(now, window, runs, heartbeats, config, switch)
    terminate, fail, cancel = _watch_runs(now, session, runs, heartbeats, config)
    status = {r.run_id: r.status for r in runs}
    status.update({run_id: "CANCELING" for run_id, _ in terminate})
    status.update({run_id: "FAILURE" for run_id, _ in fail})
    status.update({run_id: "CANCELED" for run_id, _ in cancel})
    alerts = [reason for _, reason in terminate + fail + cancel]
    common: dict[str, Any] = {
        "session": session,
        "terminate": tuple(terminate),
        "fail": tuple(fail),
        "cancel": tuple(cancel),
    }
    trips: list[tuple[str, datetime]] = []
    live = [r for r in runs if status[r.run_id] in _IN_PROGRESS]
    newest = runs[0] if runs else None
    over = newest is not None and (
        status[newest.run_id] == "SUCCESS"
        or (status[newest.run_id] == "CANCELED" and not newest.by_sensor)
    )
    if newest is not None and not over:
        # Managed when a session last beat, or since the newest run was requested (a
        # relaunch under way gets the time it needs, not the time its predecessor lost).
        beats = [h.beat_at for h in heartbeats.values()]
        managed = max([newest.created_at, *beats])
        silent = (now - managed).total_seconds()
        if silent > config.staleness_s:
            last = max(heartbeats.values(), key=lambda h: h.beat_at, default=None)
            seen = (
                f"last heartbeat: attempt {last.attempt} {last.phase} at {last.beat_at.isoformat()}"
                if last is not None
                else "no heartbeat ever"
            )
            trips.append(
                (
                    f"live session {session}: not managed for {silent:.0f} s ({seen}; newest "
                    f"run attempt {newest.attempt} {status[newest.run_id]}; limit "
                    f"{config.staleness_s:.0f} s); positions are not being managed",
                    managed,
                )
            )
    decision: LiveDecision
    if live:
        r = live[0]
        decision = LiveDecision(
            f"session {session}: run {r.run_id} (attempt {r.attempt}) is {status[r.run_id]}",
            **common,
        )
    elif newest is not None and status[newest.run_id] == "CANCELED" and not newest.by_sensor:
        decision = LiveDecision(
            f"session {session}: run {newest.run_id} (attempt {newest.attempt}) was "
            "canceled by a person; no relaunch this session",
            **common,
        )
    elif newest is not None and status[newest.run_id] == "SUCCESS":
        decision = LiveDecision(
            f"session {session}: run {newest.run_id} (attempt {newest.attempt}) ended", **common
        )
    elif newest is not None and newest.attempt >= config.max_attempts:
        reason = (
            f"live session {session}: attempt {newest.attempt} ended "
            f"{status[newest.run_id]} and the session may start {config.max_attempts} runs "
            "(max_attempts): NOT relaunched; nobody manages the positions until a person acts"
        )
        trips.append((reason, newest.ended_at or newest.created_at))
        decision = LiveDecision(
            f"session {session}: no run (attempt {newest.attempt} of {config.max_attempts} "
            "ended and the session may start no more)",
            **common,
        )
    else:
        attempt = 1 if newest is None else max(r.attempt for r in runs) + 1
        runtime = int((window.end - now).total_seconds() + config.grace_after_close_s)
        decision = LiveDecision(
            f"session {session}: starting attempt {attempt}"
            + (
                ""
                if newest is None
                else f" (attempt {newest.attempt} ended {status[newest.run_id]})"
            ),
            attempt=attempt,
            max_runtime_s=runtime,
            **common,
        )
    alerts.extend(reason for reason, _ in trips)
    trip = next((reason for reason, at in trips if _may_trip(switch, at)), None)
    return replace(decision, trip=trip, alerts=tuple(alerts))


def _after_close(
    now: datetime,
    window: SessionWindow,
    runs: Sequence[LiveRun],
    heartbeats: Mapping[int, Heartbeat],
    config: LiveSensorConfig,
    switch: KillSwitchStatus | None,
) -> LiveDecision:
    """After the close: did the session end as it should (its newest attempt beat ``closed``,
    or a person stopped it)? If not, positions may be held past the close unwatched."""
    session = window.session
    early = " (an early close)" if window.early_close else ""
    message = f"session {session} closed at {_ny(window.end)}{early}: no live run after the close"
    if not runs:
        return LiveDecision(message, session)
    newest = runs[0]
    own = heartbeats.get(newest.attempt)
    if newest.status in _IN_PROGRESS:
        overdue = (now - window.end).total_seconds() - config.grace_after_close_s
        if overdue > config.relaunch_after_s:
            alert = (
                f"live session {session}: run {newest.run_id} (attempt {newest.attempt}) is "
                f"still {newest.status} {overdue:.0f} s past the close and its grace "
                f"({config.grace_after_close_s:.0f} s): its dagster/max_runtime should have "
                "ended it; check the worker and the broker"
            )
            return LiveDecision(message, session, alerts=(alert,))
        return LiveDecision(message, session)
    if newest.status == "CANCELED" and not newest.by_sensor:
        return LiveDecision(message, session)  # a person stopped it (a stop that hung trips)
    if own is not None and (own.phase == "closed" or (own.ended and not newest.by_sensor)):
        return LiveDecision(message, session)
    seen = "no heartbeat" if own is None else f"last heartbeat {own.phase} at {own.beat_at}"
    reason = (
        f"live session {session}: attempt {newest.attempt} ended {newest.status}"
        + (" (stopped by the sensor)" if newest.by_sensor else "")
        + f" without closing the session ({seen}); positions may be held past the close "
        "unwatched"
    )
    evidence = newest.ended_at or (own.beat_at if own is not None else window.end)
    trip = reason if _may_trip(switch, evidence) else None
    return LiveDecision(message, session, trip=trip, alerts=(reason,))


def live_alert(text: str) -> Alert:
    """One of the sensor's alert lines as an :class:`Alert`. Its key is the text before its
    first parenthesis (the details: statuses, times) with every number blanked: the same
    condition, raised at every tick with its seconds counting up, is one alert (sent again
    only after the alerts' ``dedup_s``)."""
    key = "live_sensor:" + re.sub(r"\d+(\.\d+)?", "#", text.split(" (", 1)[0])
    return Alert("live_session", key[:500], text.split(":", 1)[-1].strip()[:200], text)


def live_run_key(session: date, attempt: int) -> str:
    return f"live:{session.isoformat()}:{attempt}"


def live_tags(
    session: date,
    attempt: int,
    max_runtime_s: int | None = None,
    requested_at: datetime | None = None,
) -> dict[str, str]:
    """The tags of a live run: session, attempt, the live concurrency tag, its
    ``dagster/max_runtime`` and when the sensor requested it (by the sensor's clock)."""
    tags = {SESSION_TAG: session.isoformat(), ATTEMPT_TAG: str(attempt), LIVE_TAG: "session"}
    if max_runtime_s is not None:
        tags[MAX_RUNTIME_TAG] = str(max_runtime_s)
    if requested_at is not None:
        tags[REQUESTED_TAG] = requested_at.astimezone(UTC).isoformat()
    return tags


def session_runs(instance: dg.DagsterInstance, job_name: str, session: date) -> list[LiveRun]:
    """The runs of ``job_name`` tagged with ``session`` (any status)."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(job_name=job_name, tags={SESSION_TAG: session.isoformat()})
    )
    out = []
    for rec in records:
        run = rec.dagster_run
        started, ended = rec.start_time, rec.end_time
        out.append(
            LiveRun(
                run_id=run.run_id,
                attempt=int(run.tags.get(ATTEMPT_TAG, "0") or 0),
                status=run.status.value,
                created_at=(
                    datetime.fromisoformat(run.tags[REQUESTED_TAG])
                    if run.tags.get(REQUESTED_TAG)
                    else rec.create_timestamp.astimezone(UTC)
                ),
                started_at=None if started is None else datetime.fromtimestamp(started, UTC),
                ended_at=None if ended is None else datetime.fromtimestamp(ended, UTC),
                by_sensor=run.tags.get(TERMINATED_BY_TAG) == ACTOR,
                terminated_at=(
                    datetime.fromisoformat(run.tags[TERMINATED_AT_TAG])
                    if run.tags.get(TERMINATED_AT_TAG)
                    else None
                ),
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
        context: dg.SensorEvaluationContext,
        trading_db: TradingDatabaseResource,
        alerts: AlertsResource,
    ) -> dg.RunRequest | dg.SkipReason:
        now = clock()
        if now.tzinfo is None:
            raise ValueError(f"the sensor's clock gave {now} without a time zone")
        window = session_window(calendar, session_kind, now)
        day = now.astimezone(_NY).date()
        if window is None or now < window.start:
            decision = decide_live(
                now, day=day, window=window, runs=(), heartbeats={}, config=cfg, calendar=calendar
            )
            return dg.SkipReason(decision.message)
        instance = context.instance
        engine = trading_db.store().engine
        switch = KillSwitch(engine)

        def decide() -> LiveDecision:
            assert window is not None
            return decide_live(
                now,
                day=day,
                window=window,
                runs=session_runs(instance, job.name, window.session),
                heartbeats=read_heartbeats(engine, window.session),
                config=cfg,
                switch=switch.status(),
                calendar=calendar,
            )

        decision = decide()
        told = list(decision.alerts)
        if decision.acts:
            _act(context, decision, now)
            decision = decide()  # on the runs as they are now (a terminate may have failed)
            told += [a for a in decision.alerts if a not in told]
            if decision.acts:
                # More to do on the runs than one tick does: no request until it is done.
                _act(context, decision, now)
                decision = replace(
                    decision,
                    attempt=None,
                    message=decision.message + " "
                    "(runs changed status this tick: a relaunch waits for the "
                    "next)",
                )
        if decision.trip is not None:
            status = switch.trip(reason=decision.trip, actor=ACTOR, now=now)
            context.log.error(status.describe())
        alerter = alerts.alerter(engine)
        for alert in told:
            context.log.error(f"ALERT {alert}")
            try:
                alerter.raise_alert(live_alert(alert), now)
            except AlertError as exc:  # telling people must not stop the relaunch
                context.log.error(f"the alert could not be delivered: {exc}")
        if decision.attempt is None:
            text = decision.message
            if decision.alerts:
                text = "ALERT " + " | ".join(decision.alerts) + " -- " + text
            return dg.SkipReason(text)
        assert decision.session is not None
        context.log.info(decision.message)
        return dg.RunRequest(
            run_key=live_run_key(decision.session, decision.attempt),
            tags=live_tags(decision.session, decision.attempt, decision.max_runtime_s, now),
        )

    return live_trading_sensor


def _act(context: dg.SensorEvaluationContext, decision: LiveDecision, now: datetime) -> None:
    """Terminate, fail or cancel the runs the decision names (each only if still unfinished)."""
    instance = context.instance
    for run_id, reason in decision.terminate:
        run = instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            continue
        context.log.error(f"terminating run {run_id}: {reason}")
        instance.add_run_tags(
            run_id, {TERMINATED_BY_TAG: ACTOR, TERMINATED_AT_TAG: now.astimezone(UTC).isoformat()}
        )
        # A worker that only hangs is asked to stop (it then handles its working orders as
        # configured, and a relaunch waits for it); one that cannot be reached is dead or
        # unreachable, and is failed at once: a zombie that wakes finds its lease gone.
        try:
            asked = instance.run_launcher.terminate(run_id)
        except dg.DagsterError as exc:
            context.log.warning(f"could not ask run {run_id} to stop: {exc}")
            asked = False
        if not asked:
            run = instance.get_run_by_id(run_id)
            if run is not None and not run.is_finished:
                instance.report_run_failed(
                    run, f"{reason}; it could not be asked to stop (reported by {ACTOR})"
                )
    for run_id, reason in decision.fail:
        run = instance.get_run_by_id(run_id)
        if run is not None and not run.is_finished:
            instance.report_run_failed(run, f"{reason} (reported by {ACTOR})")
    for run_id, reason in decision.cancel:
        run = instance.get_run_by_id(run_id)
        if run is not None and not run.is_finished:
            instance.report_run_canceled(run, f"{reason} (reported by {ACTOR})")
