"""The kill switch persisted in the trading database: tripped in one process and read in
another, reset only with a reason, every transition a row of ``risk_events``; the command line
prints one line and never a password; the same on the real PostgreSQL."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig

from pipelines.data.store import MIGRATIONS, BarStore
from pipelines.risk.events import RiskEvent, TradingState
from pipelines.risk.killswitch import KillSwitch
from quantdag.killswitch import main
from quantdag.project import PROJECT_ROOT
from tests.conftest import SCHEMA_HEAD

T0 = datetime(2024, 3, 1, 14, 2, tzinfo=UTC)


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m quantdag.killswitch ARGS`` in a process of its own, on the database ``url``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTDAG_")}
    env["QUANTDAG_DATABASE_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "quantdag.killswitch", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def kill_switch_rows(switch: KillSwitch) -> list[tuple[str, str, TradingState | None, str]]:
    return [
        (e.rule, e.actor, e.state_to, e.detail) for e in switch.events() if e.kind == "kill_switch"
    ]


def survives_a_restart(url: str) -> None:
    """Trip in a child process; the switch is seen tripped here, and the transitions are rows."""
    done = cli(url, "trip", "--reason", "fills the broker cannot explain", "--actor", "alice")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1 and "TRIPPED" in done.stdout and "alice" in done.stdout
    assert "hunter2" not in done.stdout + done.stderr
    switch = KillSwitch.from_url(url)
    status = switch.status()
    assert status.tripped and status.actor == "alice"
    assert status.reason == "fills the broker cannot explain"
    assert status.since is not None and status.since.tzinfo is not None
    assert kill_switch_rows(switch) == [
        ("trip", "alice", TradingState.HALTED, "kill switch 'global' tripped: " + status.reason)
    ]
    # Tripping a tripped switch records nothing and keeps who tripped it first.
    again = switch.trip(reason="me too", actor="bob", now=T0)
    assert again == status and len(kill_switch_rows(switch)) == 1
    with pytest.raises(ValueError, match="needs a reason"):
        switch.reset(reason="  ", actor="bob", now=T0)
    assert switch.status().tripped
    reset = switch.reset(reason="fills reconciled", actor="bob", now=T0 + timedelta(hours=1))
    assert not reset.tripped and reset.since == T0 + timedelta(hours=1)
    assert not switch.reset(reason="again", actor="bob", now=T0).tripped  # nothing to reset
    rows = switch.events()
    assert [(e.rule, e.state_from, e.state_to, e.actor) for e in rows] == [
        ("trip", TradingState.ACTIVE, TradingState.HALTED, "alice"),
        ("reset", TradingState.HALTED, TradingState.ACTIVE, "bob"),
    ]
    assert rows[1].detail == "kill switch 'global' reset: fills reconciled"
    assert rows[1].values == {"switch": "global"}


@pytest.mark.unit
def test_kill_switch_survives_a_process_restart(tmp_path: Path) -> None:
    survives_a_restart(f"sqlite:///{tmp_path / 'trading.db'}")


@pytest.mark.integration
def test_kill_switch_survives_a_process_restart_on_postgres(pg_database: str) -> None:
    # The server trusts local connections: the password is there to be kept out of the output.
    url = sa.make_url(pg_database).set(password="hunter2")
    survives_a_restart(url.render_as_string(hide_password=False))


@pytest.mark.integration
def test_concurrent_trips_record_one_transition_on_postgres(pg_database: str) -> None:
    switches = [KillSwitch.from_url(pg_database) for _ in range(4)]
    barrier = threading.Barrier(len(switches))

    def trip(switch: KillSwitch, who: str) -> None:
        barrier.wait()
        switch.trip(reason="race", actor=who, now=T0)

    threads = [threading.Thread(target=trip, args=(s, f"actor{i}")) for i, s in enumerate(switches)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert switches[0].status().tripped
    assert len(kill_switch_rows(switches[0])) == 1


@pytest.fixture
def switch(tmp_path: Path) -> KillSwitch:
    return KillSwitch.from_url(f"sqlite:///{tmp_path / 'trading.db'}")


@pytest.mark.unit
def test_switches_of_other_names_are_independent(switch: KillSwitch) -> None:
    desk = KillSwitch(switch.engine, "desk_b")
    desk.trip(reason="desk b only", actor="carol", now=T0)
    assert desk.status().tripped and not switch.status().tripped
    assert switch.status().since is None  # never tripped
    assert desk.events()[0].values == {"switch": "desk_b"}


@pytest.mark.unit
def test_risk_events_are_recorded_with_their_numbers(switch: KillSwitch) -> None:
    events = [
        RiskEvent(
            T0,
            "refused",
            "max_gross",
            "buy 500 AAA: gross exposure would be ...",
            symbol="AAA",
            client_order_id="abc",
            values={"exposure": 150_000.0, "limit": 0.149, "nan": math.nan},
        ),
        RiskEvent(
            T0 + timedelta(minutes=15),
            "state",
            "drawdown_reduce",
            "ACTIVE -> REDUCING: ...",
            state_from=TradingState.ACTIVE,
            state_to=TradingState.REDUCING,
        ),
    ]
    switch.record(events)
    switch.record([])
    back = switch.events()
    assert back[1] == events[1]
    assert math.isnan(float(back[0].values.pop("nan")))
    assert back[0] == replace(events[0], values=back[0].values)
    assert back[0].values == {"exposure": 150_000.0, "limit": 0.149}
    assert switch.events(limit=1) == [events[1]]  # the newest
    with pytest.raises(ValueError, match="no time zone"):
        switch.record([RiskEvent(T0.replace(tzinfo=None), "state", "clear", "")])


@pytest.mark.unit
def test_trip_and_reset_need_an_actor_and_a_utc_time(switch: KillSwitch) -> None:
    with pytest.raises(ValueError, match="actor"):
        switch.trip(reason="x", actor=" ", now=T0)
    with pytest.raises(ValueError, match="time zone"):
        switch.trip(reason="x", actor="a", now=T0.replace(tzinfo=None))
    assert switch.trip(reason=" ", actor="a", now=T0).reason == "no reason given"


@pytest.mark.unit
def test_an_unmigrated_database_is_refused_with_what_to_do(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(ValueError, match="migrate it first"):
        KillSwitch(engine)


@pytest.mark.unit
def test_migration_0003_upgrades_and_downgrades(tmp_path: Path) -> None:
    store = BarStore(f"sqlite:///{tmp_path / 'trading.db'}")
    assert store.migrate() == SCHEMA_HEAD
    with store.engine.begin() as conn:
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0002")
        tables = set(sa.inspect(conn).get_table_names())
        assert "kill_switch" not in tables and "risk_events" not in tables
        command.upgrade(cfg, "head")
    assert store.schema_version() == SCHEMA_HEAD
    assert KillSwitch(store.engine).status().tripped is False


@pytest.mark.unit
def test_cli_refuses_a_reset_without_reason_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'trading.db'}"
    monkeypatch.setenv("QUANTDAG_DATABASE_URL", url)
    assert main(["trip", "--reason", "drill"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("kill switch 'global' TRIPPED since ") and url in out
    assert main(["reset"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--reason" in err and "Traceback" not in err
    assert main(["reset", "--reason", "   "]) == 2
    assert main(["status"]) == 0 and "TRIPPED" in capsys.readouterr().out
    assert KillSwitch.from_url(url).status().tripped
    assert main(["reset", "--reason", "drill over", "--actor", "dave"]) == 0
    assert "is not tripped (reset" in capsys.readouterr().out


@pytest.mark.unit
@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("not a url", "is not a database URL"),
        ("mysql://u:hunter2@127.0.0.1/db", "not supported"),
        ("postgresql+psycopg://quant:hunter2@127.0.0.1:1/trading", "cannot connect"),
    ],
)
def test_cli_errors_are_one_line_without_the_password(
    url: str, says: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QUANTDAG_DATABASE_URL", url)
    assert main(["status"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert says in captured.err and "hunter2" not in captured.err
