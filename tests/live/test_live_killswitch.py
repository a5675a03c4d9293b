"""The kill switch in a live session: tripped by a limit or by a person's command, the session
cancels what is working, closes every position (``flatten_on_trip``) and sends nothing else;
a relaunch on the same record stays HALTED."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest

from pipelines.risk.killswitch import KillSwitch
from pipelines.risk.limits import LimitsConfig
from quantdag.testing.alpaca_server import LocalAlpaca
from quantdag.testing.live import Day, start_session, step_buckets, wait_subscribed
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def _orders_after(running: object, when: datetime) -> list[dict[str, object]]:
    return [
        o
        for d in running.session.store.decisions(running.session.config.session)  # type: ignore[attr-defined]
        if d["bar_ts"] >= when
        for o in d["orders"]
    ]


def test_a_person_trips_the_switch_mid_session_and_a_relaunch_stays_halted(
    day: Day, server: LocalAlpaca, tmp_path: Path
) -> None:
    db = tmp_path / "live.db"
    running = start_session(day, server, db)
    wait_subscribed(server, 0)
    buckets = running.session.agg.buckets
    tripped_at: list[datetime] = []

    def trip(start: datetime) -> None:
        if start == buckets[4][0]:
            # The command a person runs (or the UI's kill_switch_job), in its own process.
            env = {**os.environ, "QUANTDAG_DATABASE_URL": f"sqlite:///{db}"}
            done = subprocess.run(
                [sys.executable, "-m", "quantdag.killswitch", "trip", "--reason", "test: stop"],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stderr
            tripped_at.append(start)

    step_buckets(
        server, running.engine, day.minutes, buckets[:9], alive=running.alive, on_decided=trip
    )
    assert KillSwitch(running.engine).tripped()
    held_at_trip = dict(running.session.broker.positions())
    assert held_at_trip  # there is something to close
    after = _orders_after(running, buckets[5][0])
    assert after and all(o["intent"] == "flatten" for o in after)
    assert running.session.state.risk.state.value == "HALTED"
    running.stop.set()
    running.thread.join(30)
    assert not running.error

    # A relaunch (attempt 2) on the same record: HALTED from its first bar, nothing but closes.
    second = start_session(day, server, db, attempt=2)
    wait_subscribed(server, server.data_connections - 1)
    step_buckets(server, second.engine, day.minutes, buckets[9:12], alive=second.alive)
    assert second.session.state.risk.state.value == "HALTED"
    assert all(o["intent"] == "flatten" for o in _orders_after(second, buckets[9][0]))
    second.stop.set()
    second.thread.join(30)
    for symbol, qty in server.positions().items():
        assert abs(qty) <= abs(held_at_trip.get(symbol, 0)), symbol  # only ever reduced


def test_a_drawdown_limit_trips_the_switch_and_the_book_is_closed(
    day: Day, server: LocalAlpaca, tmp_path: Path
) -> None:
    tight = replace(
        day,
        path=replace(
            day.path,
            limits=LimitsConfig(daily_loss=None, reduce_drawdown=0.0002, halt_drawdown=0.0004),
        ),
    )
    running = start_session(tight, server, tmp_path / "live.db")
    wait_subscribed(server, 0)
    buckets = running.session.agg.buckets
    step_buckets(server, running.engine, day.minutes, buckets[:14], alive=running.alive)
    switch = KillSwitch(running.engine)
    assert switch.tripped()
    assert switch.status().actor == "live_session"
    decisions = running.session.store.decisions(running.session.config.session)
    halted = next(d["bar_ts"] for d in decisions if d["state"] == "HALTED")
    later = [o for d in decisions if d["bar_ts"] > halted for o in d["orders"]]
    assert all(o["intent"] == "flatten" for o in later)
    assert any(e.rule == "drawdown_halt" for e in switch.events())
    running.stop.set()
    running.thread.join(30)
