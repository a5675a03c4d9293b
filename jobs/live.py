"""``live_session_job``: one op that runs one exchange session of live trading to its close.

The op runs the session (:func:`quantdag.live.run_live_session`) in a worker thread and, in the
main thread, turns each decided bar into observations of ``live_signals``, ``live_orders`` and
``live_positions`` (the run's event log shows the day bar by bar) and the session's log lines
into the run's log. Terminating the run (the UI's Terminate, ``dagster run terminate``, the run
monitor's ``dagster/max_runtime``) reaches the op as a ``DagsterExecutionInterruptedError`` in
the main thread: the op then sets the session's stop event, waits for it to handle its working
orders and persist everything (up to ``stop_timeout_s``), and re-raises, so that the run ends
CANCELED. A session that does not stop in time trips the kill switch (its working orders are
unknown, and the process is about to end under it). An exception of the session fails the run.
"""

# No `from __future__ import annotations`: Dagster reads the op's config annotation at runtime.
import importlib
import queue
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import dagster as dg

from assets.live import LIVE_ORDERS, LIVE_POSITIONS, LIVE_SIGNALS
from pipelines.bars.calendar import NEW_YORK
from quantdag.project import Project
from sensors.live import ATTEMPT_TAG, LIVE_TAG, SESSION_TAG

DEFAULT_RUNNER = "quantdag.live:run_live_session"

Runner = Callable[..., Any]


class LiveSessionConfig(dg.Config):  # type: ignore[misc]
    """``session``: the New York date to trade (ISO; default: the run's
    ``quantdag/live_session`` tag, else today); ``attempt``: default the run's
    ``quantdag/live_attempt`` tag, else 1; ``stop_timeout_s``: how long a terminate waits for the
    session to stop (cancel or keep its working orders, persist) before the run ends anyway and
    the kill switch is tripped (0: ``settings.live.stop_timeout_s``);
    ``runner``: ``module:function`` that runs the session, for tests and demos only (another
    runner than the default is refused outside the local environment)."""

    session: str = ""
    attempt: int = 0
    stop_timeout_s: float = 0.0
    runner: str = DEFAULT_RUNNER


def resolve_runner(path: str) -> Runner:
    """The function ``module:function`` names."""
    module, sep, name = path.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"runner {path!r} is not 'module:function'")
    fn = getattr(importlib.import_module(module), name, None)
    if not callable(fn):
        raise ValueError(f"runner {path!r}: {module} has no function {name}")
    return fn  # type: ignore[no-any-return]


def _session_and_attempt(config: LiveSessionConfig, tags: dict[str, str]) -> tuple[date, int]:
    raw = config.session or tags.get(SESSION_TAG, "")
    session = (
        date.fromisoformat(raw) if raw else datetime.now(UTC).astimezone(ZoneInfo(NEW_YORK)).date()
    )
    attempt = config.attempt or int(tags.get(ATTEMPT_TAG, "1") or 1)
    if attempt < 1:
        raise ValueError(f"attempts count from 1, got {attempt}")
    return session, attempt


def trip_kill_switch(project: Project, reason: str, run_id: str) -> str:
    """Trip the trading database's kill switch (actor ``live_session_job``); its description."""
    from pipelines.risk.killswitch import KillSwitch
    from quantdag.live import database_url

    switch = KillSwitch.from_url(database_url(project))
    return switch.trip(
        reason=reason, actor=f"live_session_job run {run_id}", now=datetime.now(UTC)
    ).describe()


def _md_table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    if not rows:
        return "(none)"
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join(
        "| " + " | ".join(str(r.get(c, "")) for c in columns) + " |\n" for r in rows
    )


def bar_observations(report: Any) -> list[dg.AssetObservation]:
    """The three observations of one decided bar (a :class:`quantdag.live.LiveBarReport`)."""
    bar = report.bar_ts.isoformat()
    signals, orders, positions = list(report.signals), list(report.orders), report.positions
    common = {"bar_ts": bar, "state": report.state}
    return [
        dg.AssetObservation(
            asset_key=LIVE_SIGNALS,
            metadata={
                **common,
                "signals": len(signals),
                "nonzero": sum(1 for s in signals if s.get("intended")),
                "table": dg.MetadataValue.md(
                    _md_table(signals, ("symbol", "prob", "p0", "intended"))
                ),
            },
        ),
        dg.AssetObservation(
            asset_key=LIVE_ORDERS,
            metadata={
                **common,
                "orders": len(orders),
                "shares": sum(int(o.get("qty", 0)) for o in orders),
                "table": dg.MetadataValue.md(
                    _md_table(orders, ("client_order_id", "symbol", "side", "qty", "intent"))
                ),
            },
        ),
        dg.AssetObservation(
            asset_key=LIVE_POSITIONS,
            metadata={
                **common,
                "equity": float(report.equity),
                "positions": sum(1 for q in positions.values() if q),
                "gross_shares": sum(abs(int(q)) for q in positions.values()),
                "by_symbol": dg.MetadataValue.json({k: int(v) for k, v in positions.items()}),
            },
        ),
    ]


_DONE = object()


def build_live_session_job(project: Project) -> dg.JobDefinition:
    """``live_session_job``: one session of live trading with ``project``'s settings."""

    @dg.op(out=dg.Out(dg.Nothing))
    def live_session_op(
        context: dg.OpExecutionContext, config: LiveSessionConfig
    ) -> dg.Output[None]:
        """Run one session to its close (or a terminate), observing each decided bar."""
        session, attempt = _session_and_attempt(config, dict(context.run.tags))
        stop_timeout_s = config.stop_timeout_s or project.settings.live.stop_timeout_s
        if config.runner != DEFAULT_RUNNER and project.environment != "local":
            raise ValueError(
                f"runner {config.runner!r} is for tests and demos: refused in the "
                f"{project.environment} environment (leave ops.live_session_op.config.runner "
                "unset)"
            )
        runner = resolve_runner(config.runner)
        stop = threading.Event()
        inbox: queue.Queue[Any] = queue.Queue()
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["summary"] = runner(
                    project,
                    session=session,
                    attempt=attempt,
                    run_id=context.run_id,
                    stop=stop,
                    observe=inbox.put,
                    log=lambda line: inbox.put(str(line)),
                )
            except BaseException as exc:  # handed to the main thread, which raises it
                outcome["error"] = exc
            finally:
                inbox.put(_DONE)

        def pump(until: float | None = None) -> bool:
            """Handle the worker's messages until it is done (True) or ``until`` passes."""
            while True:
                wait = 1.0 if until is None else min(1.0, until - time.monotonic())
                if wait <= 0:
                    return False
                try:
                    item = inbox.get(timeout=wait)
                except queue.Empty:
                    continue
                if item is _DONE:
                    return True
                if isinstance(item, str):
                    context.log.info(item)
                else:
                    for obs in bar_observations(item):
                        context.log_event(obs)

        context.log.info(f"live session {session}, attempt {attempt} ({project.environment})")
        worker = threading.Thread(target=work, name=f"live-session-{session}", daemon=True)
        worker.start()
        try:
            pump()
        except (dg.DagsterExecutionInterruptedError, KeyboardInterrupt):
            context.log.warning(
                "termination requested: stopping the session (working orders are handled as "
                f"configured; waiting up to {stop_timeout_s:.0f} s)"
            )
            stop.set()
            deadline = time.monotonic() + stop_timeout_s
            while True:
                try:
                    done = pump(deadline)
                    break
                except (dg.DagsterExecutionInterruptedError, KeyboardInterrupt):
                    context.log.warning("another termination request: still stopping")
            if not done:
                reason = (
                    f"live session {session} attempt {attempt} did not stop within "
                    f"{stop_timeout_s:.0f} s of a terminate; its run ended without it: check the "
                    "broker for working orders and positions"
                )
                status = trip_kill_switch(project, reason, context.run_id)
                context.log.error(f"{reason}. {status}")
            elif "error" in outcome:
                context.log.error(f"the session failed while stopping: {outcome['error']!r}")
            raise
        worker.join()
        if "error" in outcome:
            raise outcome["error"]
        s = outcome["summary"]
        line = (
            f"session {s.session} attempt {s.attempt} ended ({s.ended}): {s.bars} bars, "
            f"{s.orders} orders, {s.fills} fills, PnL {s.pnl:+,.2f} USD, state {s.state}"
        )
        halted = getattr(s, "halted", None)
        (context.log.warning if halted else context.log.info)(line)
        return dg.Output(
            None,
            metadata={
                "session": str(s.session),
                "attempt": int(s.attempt),
                "ended": str(s.ended),
                "bars": int(s.bars),
                "orders": int(s.orders),
                "fills": int(s.fills),
                "pnl_usd": float(s.pnl),
                "state": str(s.state),
                "halted": str(halted or ""),
            },
        )

    @dg.job(
        name="live_session_job",
        executor_def=dg.in_process_executor,
        tags={LIVE_TAG: "session"},
        description="One session of live trading (bar → features → predict → signal → risk → "
        "order) until the close; started by live_trading_sensor. Terminate stops it cleanly "
        "(working orders handled as settings.live.on_stop says). Run config "
        "ops.live_session_op.config.session (ISO date) when launched by hand.",
    )
    def live_session_job() -> None:
        live_session_op()

    return live_session_job
