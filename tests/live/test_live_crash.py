"""``kill -9`` of the session's process in the middle of a session, then a relaunch (attempt
2): the relaunch reconciles with the broker, sends no order twice, and the day ends with the
orders and positions of the uninterrupted run (the backtest engine's, which the replay test
shows equal to the live session's). The session runs as the job runs it: ``python -m
quantdag.live`` built from the project's settings, a champion in an MLflow registry, the
stored history in the trading database and the local server's clock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pipelines.data import tables as T
from pipelines.data.store import BarStore
from quantdag.project import load_project
from quantdag.resources import _per_environment
from quantdag.testing.alpaca_server import LocalAlpaca
from quantdag.testing.live import (
    Day,
    bucket_decision_times,
    register_champion,
    step_buckets,
    wait_subscribed,
)
from tests.conftest import ROOT
from tests.live.conftest import SESSION
from tests.live.test_live_replay import backtest_of_times

pytestmark = pytest.mark.integration


def _environment(tmp_path: Path, server: LocalAlpaca, day: Day) -> dict[str, str]:
    db = tmp_path / "trading.db"
    store = BarStore(f"sqlite:///{db}")
    store.migrate()
    store.upsert_bars(day.history, timeframe="15m", source="test")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    register_champion(day.fit, uri, _per_environment(load_project({"QUANTDAG_ENV": "local"})))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUANTDAG_", "APCA_"))}
    return env | {
        "QUANTDAG_ENV": "local",
        "QUANTDAG_DATABASE_URL": f"sqlite:///{db}",
        "QUANTDAG_MLFLOW_URI": uri,
        "QUANTDAG_ALPACA_URL": server.url,
        "OMP_WAIT_POLICY": "PASSIVE",
    }


def _launch(env: dict[str, str], attempt: int, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "quantdag.live",
            "--session",
            SESSION.isoformat(),
            "--attempt",
            str(attempt),
            "--run-id",
            f"test-{attempt}",
        ],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def test_kill_9_mid_session_then_relaunch_sends_nothing_twice(
    day: Day, server: LocalAlpaca, tmp_path: Path
) -> None:
    env = _environment(tmp_path, server, day)
    engine = sa.create_engine(env["QUANTDAG_DATABASE_URL"])
    buckets = _buckets()
    n = server.data_connections
    first = _launch(env, 1, tmp_path / "attempt1.log")
    killed: list[datetime] = []

    def kill_at_the_sixth_bar(start: datetime) -> None:
        # The decision is written before its orders are sent: the process dies now, with its
        # orders possibly written and not sent, or sent and not acknowledged.
        if start == buckets[5][0]:
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            killed.append(start)

    try:
        wait_subscribed(server, n)
        step_buckets(
            server,
            engine,
            day.minutes,
            buckets[:6],
            alive=lambda: first.poll() is None,
            on_decided=kill_at_the_sixth_bar,
        )
    finally:
        if first.poll() is None:
            first.kill()
    assert killed and first.returncode == -signal.SIGKILL
    n = server.data_connections
    second = _launch(env, 2, tmp_path / "attempt2.log")
    try:
        wait_subscribed(server, n)
        step_buckets(server, engine, day.minutes, buckets[6:], alive=lambda: second.poll() is None)
        server.advance(buckets[-1][1] + timedelta(minutes=5))
        assert second.wait(60) == 0, (tmp_path / "attempt2.log").read_text()[-3000:]
    finally:
        if second.poll() is None:
            second.kill()

    times = bucket_decision_times(day.minutes, buckets)
    expected, _ = backtest_of_times(day, times)
    received = [o["client_order_id"] for o in server.orders()]
    assert len(received) == len(set(received))  # no order twice
    assert sorted(received) == sorted(o.client_order_id for o in expected.orders)
    assert server.positions() == {s: q for s, q in expected.ledger.positions.items() if q}
    with engine.connect() as conn:
        attempts = conn.execute(sa.select(T.live_decisions.c.attempt).distinct()).scalars()
        assert sorted(attempts) == [1, 2]
    # The killed attempt's heartbeat stopped in the middle; the relaunch's ended at the close.
    assert _phase(engine, 1) == "trading"
    assert _phase(engine, 2) == "closed"


def _buckets() -> list[Any]:
    from pipelines.bars.calendar import sessions_between

    w = sessions_between("XNYS", SESSION, SESSION).window("regular")
    start, end = w["start"][0], w["end"][0]
    out, t = [], start
    while t < end:
        out.append((t, min(t + timedelta(minutes=15), end)))
        t += timedelta(minutes=15)
    return out


def _phase(engine: sa.Engine, attempt: int = 1) -> str | None:
    c = T.live_heartbeat.c
    try:
        with engine.connect() as conn:
            return conn.execute(
                sa.select(c.phase).where(c.session == SESSION.isoformat(), c.attempt == attempt)
            ).scalar()
    except sa.exc.OperationalError:
        return None
