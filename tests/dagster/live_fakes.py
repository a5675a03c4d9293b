"""Hand-written fake live-session runners (``module:function`` for the ``runner`` config of
``live_session_job``) and a code location holding the job, for the tests of
``jobs/live.py``, in process and in a real run worker launched through the instance.

``until_stopped`` writes into the directory ``QUANTDAG_TEST_LIVE_DIR`` names: ``started`` once
it runs and ``stopped`` (what it saw) when it returns after its stop event was set.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.launcher import RunLauncher
from dagster._serdes import ConfigurableClass, ConfigurableClassData

from assets.live import live_assets
from jobs.live import build_live_session_job
from quantdag.live import LiveBarReport, LiveSummary
from quantdag.project import load_project

FIRST_BAR = datetime(2024, 7, 2, 13, 30, tzinfo=UTC)
SYMBOLS = ("AAA", "BBB")


def report(i: int) -> LiveBarReport:
    """The ``i``-th bar's report: AAA bought on bar 1, BBB sold short on bar 2."""
    bar = FIRST_BAR + timedelta(minutes=15 * i)
    intended = {"AAA": 100 if i >= 1 else 0, "BBB": -50 if i >= 2 else 0}
    orders = []
    if i == 1:
        orders.append({"client_order_id": "m-AAA-1", "symbol": "AAA", "side": "buy", "qty": 100})
    if i == 2:
        orders.append({"client_order_id": "m-BBB-2", "symbol": "BBB", "side": "sell", "qty": 50})
    for o in orders:
        o["intent"] = "open"
    return LiveBarReport(
        bar_ts=bar,
        signals=[
            {"symbol": s, "prob": 0.5 + 0.1 * i, "p0": 0.55, "intended": intended[s]}
            for s in SYMBOLS
        ],
        orders=orders,
        positions=intended,
        equity=100_000.0 + i,
        state="ACTIVE",
    )


def three_bars(
    project: Any,
    *,
    session: date,
    attempt: int,
    run_id: str,
    stop: threading.Event,
    observe: Callable[[LiveBarReport], None],
    log: Callable[[str], None],
) -> LiveSummary:
    """A session of three bars that ends at the close."""
    log(f"fake session {session} attempt {attempt} run {run_id}")
    for i in range(3):
        observe(report(i))
    return LiveSummary(session, attempt, 3, 2, 2, 12.5, "ACTIVE", "close")


def broken(project: Any, *, observe: Callable[[LiveBarReport], None], **_: Any) -> LiveSummary:
    """A session that decides one bar and then loses its broker."""
    observe(report(0))
    raise ConnectionError("broker unreachable after 3 retries (fake)")


def _started(run_id: str) -> Path:
    """Write ``started`` (this process and run) into ``QUANTDAG_TEST_LIVE_DIR``; that dir."""
    out = Path(os.environ["QUANTDAG_TEST_LIVE_DIR"])
    (out / "started").write_text(json.dumps({"pid": os.getpid(), "run_id": run_id}))
    return out


def until_stopped(
    project: Any,
    *,
    session: date,
    attempt: int,
    run_id: str,
    stop: threading.Event,
    observe: Callable[[LiveBarReport], None],
    log: Callable[[str], None],
) -> LiveSummary:
    """A session that decides a bar every 0.2 s until its stop event is set."""
    out = _started(run_id)
    bars = 0
    while not stop.wait(0.2):
        observe(report(bars % 3))
        bars += 1
    log("stop received: cancelling working orders (fake)")
    time.sleep(0.5)  # the real session cancels its working orders and persists here
    (out / "stopped").write_text(
        json.dumps({"bars": bars, "session": session.isoformat(), "attempt": attempt})
    )
    return LiveSummary(session, attempt, bars, 0, 0, 0.0, "ACTIVE", "stopped")


def deaf_to_stop(
    project: Any,
    *,
    session: date,
    attempt: int,
    run_id: str,
    stop: threading.Event,
    observe: Callable[[LiveBarReport], None],
    log: Callable[[str], None],
) -> LiveSummary:
    """A session whose loop hangs: it decides bars but never looks at its stop event."""
    _started(run_id)
    bars = 0
    while True:
        observe(report(bars % 3))
        bars += 1
        time.sleep(0.2)


defs = dg.Definitions(assets=live_assets, jobs=[build_live_session_job(load_project({}))])


class TerminableLauncher(RunLauncher, ConfigurableClass):
    """A run launcher whose ``terminate`` reaches the worker, as the DefaultRunLauncher's does
    through a live code server: the run goes CANCELING and the test decides when it ends."""

    def __init__(self, inst_data: ConfigurableClassData | None = None) -> None:
        self._inst_data = inst_data

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: dict[str, Any]
    ) -> TerminableLauncher:
        return cls(inst_data)

    def launch_run(self, context: Any) -> None:
        raise NotImplementedError("the sensor tests create their runs by hand")

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return False
        self._instance.report_run_canceling(run)
        return True
