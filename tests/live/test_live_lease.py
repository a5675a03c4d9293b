"""The session's heartbeat thread and its lease, over the local server: beats go on through a
slow step and stop when the loop hangs (so that a hung session reads as dead), and an attempt
that a relaunch replaced sends nothing more."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from pipelines.live.session import SessionSuperseded
from quantdag.testing.alpaca_server import LocalAlpaca
from quantdag.testing.live import Day, start_session, step_buckets, wait_for, wait_subscribed

pytestmark = pytest.mark.integration


def test_an_attempt_whose_lease_is_gone_sends_nothing_more(
    day: Day, server: LocalAlpaca, tmp_path: Path
) -> None:
    mine = threading.Event()
    mine.set()
    running = start_session(day, server, tmp_path / "live.db", lease=mine.is_set)
    wait_subscribed(server, 0)
    buckets = running.session.agg.buckets
    step_buckets(server, running.engine, day.minutes, buckets[:4], alive=running.alive)
    assert server.orders_received  # it was trading
    sent = len(server.orders_received)
    requests = len(server.requests)
    decided = running.session.result.bars
    mine.clear()  # a newer attempt wrote its heartbeat
    step_buckets(
        server,
        running.engine,
        day.minutes,
        buckets[4:],
        alive=lambda: running.thread.is_alive(),
    )
    running.thread.join(30)
    assert running.error and isinstance(running.error[0], SessionSuperseded)
    # It decided no further bar, sent nothing, cancelled nothing.
    assert running.session.result.bars == decided
    assert len(server.orders_received) == sent
    later = server.requests[requests:]
    assert not [r for r in later if r["method"] in ("POST", "DELETE", "PATCH")], later


class SlowAccount:
    """The broker, whose account read hangs for ``hang_s`` once armed (a wedged connection)."""

    def __init__(self, broker: Any, hang_s: float) -> None:
        self.broker = broker
        self.hang_s = hang_s
        self.armed = threading.Event()
        self.window: tuple[float, float] | None = None

    def account(self) -> Any:
        if self.armed.is_set():
            self.armed.clear()
            start = time.monotonic()
            time.sleep(self.hang_s)
            self.window = (start, time.monotonic())
        return self.broker.account()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.broker, name)


def test_heartbeats_go_on_through_a_slow_step_and_stop_when_the_loop_hangs(
    day: Day, server: LocalAlpaca, tmp_path: Path
) -> None:
    beats: list[tuple[float, str]] = []

    def heartbeat(phase: str, last_bar: datetime | None, state: str) -> None:
        beats.append((time.monotonic(), phase))

    running = start_session(
        day, server, tmp_path / "live.db", heartbeat=heartbeat, heartbeat_s=0.05, hang_s=1.0
    )
    wait_subscribed(server, 0)
    slow = SlowAccount(running.session.broker, hang_s=3.0)
    running.session.broker = slow
    wait_for("heartbeats while waiting for bars", lambda: len(beats) >= 5)
    slow.armed.set()
    buckets = running.session.agg.buckets
    step_buckets(server, running.engine, day.minutes, buckets[:1], alive=running.alive)
    assert slow.window is not None
    start, end = slow.window
    during = [t for t, _ in beats if start < t < end]
    # Beats while the step is young (a slow broker is not a dead session)...
    assert [t for t in during if t < start + 0.8]
    # ...none once the loop has made no progress for hang_s...
    assert not [t for t in during if t > start + 1.0 + 0.2], during
    # ...and again once it moves.
    wait_for("heartbeats after the step", lambda: beats[-1][0] > end)
    running.stop.set()
    running.thread.join(30)
    assert not running.error
    assert beats[-1][1] == "stopped"
    assert beats[0][1] == "reconciling"
