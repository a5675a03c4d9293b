"""``python -m quantdag.backup dump|restore``: the trading database round-trips through
pg_dump/pg_restore on the real PostgreSQL, and through SQLite's backup API."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipelines.data.store import BarStore
from pipelines.data.tables import kill_switch, live_heartbeat
from pipelines.live.heartbeat import record_heartbeat
from pipelines.risk.killswitch import KillSwitch
from tests.conftest import ROOT

pytestmark = pytest.mark.integration
T0 = datetime(2024, 7, 2, 14, 0, tzinfo=UTC)


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "QUANTDAG_DATABASE_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "quantdag.backup", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _state(engine: sa.Engine) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    with engine.connect() as conn:
        switch = [tuple(r) for r in conn.execute(sa.select(kill_switch))]
        beats = [tuple(r) for r in conn.execute(sa.select(live_heartbeat))]
    return switch, beats


def _round_trip(url: str, backup: Path) -> None:
    store = BarStore(url)
    store.migrate()
    engine = store.engine
    KillSwitch(engine).trip(reason="before the backup", actor="alice", now=T0)
    record_heartbeat(
        engine,
        session=date(2024, 7, 2),
        attempt=1,
        run_id="r1",
        now=T0,
        phase="trading",
        last_bar=T0,
        state="ACTIVE",
    )
    before = _state(engine)
    done = _cli(url, "dump", str(backup))
    assert done.returncode == 0, done.stderr
    assert backup.stat().st_size > 0 and "->" in done.stdout
    # Life goes on, then the database is lost to a bad change: restore the backup.
    KillSwitch(engine).reset(reason="after the backup", actor="bob", now=T0)
    with engine.begin() as conn:
        conn.execute(sa.delete(live_heartbeat))
        conn.execute(sa.text("CREATE TABLE created_later (x integer)"))  # a newer migration's
    assert _state(engine) != before
    engine.dispose()
    done = _cli(url, "restore", str(backup))
    assert done.returncode == 0, done.stderr
    restored = BarStore(url).engine
    assert _state(restored) == before
    assert "created_later" not in sa.inspect(restored).get_table_names()


def test_postgres_round_trip_through_pg_dump(pg_database: str, tmp_path: Path) -> None:
    _round_trip(pg_database, tmp_path / "trading.dump")


def test_sqlite_round_trip(tmp_path: Path) -> None:
    _round_trip(f"sqlite:///{tmp_path / 'trading.db'}", tmp_path / "trading.backup.db")


def test_a_missing_backup_is_refused_saying_so(tmp_path: Path) -> None:
    done = _cli(f"sqlite:///{tmp_path / 'trading.db'}", "restore", str(tmp_path / "nope.db"))
    assert done.returncode == 2 and "nope.db does not exist" in done.stderr
