"""The live session's heartbeat: one row per session attempt in ``live_heartbeat``.

The session writes it every few seconds and at each phase change (reconciling, warming,
trading, halted, closed, stopped); the ``live_trading_sensor`` reads it to tell a session that
is alive from one whose worker died or hangs. Times are UTC instants (the table's
:class:`pipelines.data.tables.UtcInstant` columns store them as integer microseconds on
SQLite and ``timestamptz`` on PostgreSQL).

Example::

    record_heartbeat(engine, session=date(2024, 7, 3), attempt=1, run_id="abc",
                     now=now, phase="trading", last_bar=bar_ts, state="ACTIVE")
    read_heartbeat(engine, date(2024, 7, 3)).age(now)  # timedelta since the last beat
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from pipelines.data.tables import live_heartbeat

ENDED_PHASES = frozenset({"closed", "stopped", "superseded"})
"""Phases after which a session writes no more heartbeats (its run is finishing)."""
STARTUP_PHASES = frozenset({"starting"})
"""Written before the session exists (loading and verifying the model, reading history)."""

_INSERTS: dict[str, Callable[[sa.Table], Any]] = {
    "postgresql": postgresql.insert,
    "sqlite": sqlite.insert,
}


@dataclass(frozen=True)
class Heartbeat:
    """The last sign of life of one session attempt: ``beat_at`` (UTC, wall clock of the
    session's process) in ``phase``, the newest decided bar ``last_bar`` (UTC start, None before
    the first) and the trading ``state`` (ACTIVE | REDUCING | HALTED)."""

    session: date
    attempt: int
    run_id: str
    beat_at: datetime
    phase: str
    last_bar: datetime | None
    state: str

    def age(self, now: datetime) -> timedelta:
        """Time from the last beat to ``now`` (UTC)."""
        return now - self.beat_at

    @property
    def ended(self) -> bool:
        """Whether the session said it ended (closed or stopped)."""
        return self.phase in ENDED_PHASES


def record_heartbeat(
    engine: sa.Engine,
    *,
    session: date,
    attempt: int,
    run_id: str,
    now: datetime,
    phase: str,
    last_bar: datetime | None,
    state: str,
) -> None:
    """Write (insert or replace) the heartbeat of ``session``'s ``attempt`` at ``now`` (UTC)."""
    if now.tzinfo is None:
        raise ValueError(f"heartbeat time {now} has no time zone: pass a UTC instant")
    if attempt < 1:
        raise ValueError(f"attempts count from 1, got {attempt}")
    dialect = engine.dialect.name
    if dialect not in _INSERTS:
        raise ValueError(f"the heartbeat lives in SQLite or PostgreSQL, not {dialect}")
    values = {
        "session": session.isoformat(),
        "attempt": attempt,
        "run_id": run_id,
        "beat_at": now,
        "phase": phase,
        "last_bar": last_bar,
        "state": state,
    }
    stmt = _INSERTS[dialect](live_heartbeat).values(**values)
    stmt = stmt.on_conflict_do_update(
        index_elements=["session", "attempt"],
        set_={k: stmt.excluded[k] for k in ("run_id", "beat_at", "phase", "last_bar", "state")},
    )
    with engine.begin() as conn:
        conn.execute(stmt)


def read_heartbeats(engine: sa.Engine, session: date) -> dict[int, Heartbeat]:
    """The heartbeat of each attempt of ``session`` (by attempt)."""
    c = live_heartbeat.c
    query = sa.select(live_heartbeat).where(c.session == session.isoformat())
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return {int(row.attempt): _heartbeat(row) for row in rows}


def newest_attempt(engine: sa.Engine, session: date) -> int | None:
    """The highest attempt of ``session`` that wrote a heartbeat (None: none did)."""
    c = live_heartbeat.c
    query = sa.select(sa.func.max(c.attempt)).where(c.session == session.isoformat())
    with engine.connect() as conn:
        value = conn.execute(query).scalar()
    return None if value is None else int(value)


def read_heartbeat(engine: sa.Engine, session: date) -> Heartbeat | None:
    """The heartbeat of ``session``'s newest attempt, or None if none was recorded."""
    c = live_heartbeat.c
    query = (
        sa.select(live_heartbeat)
        .where(c.session == session.isoformat())
        .order_by(c.attempt.desc())
        .limit(1)
    )
    with engine.connect() as conn:
        row = conn.execute(query).first()
    return None if row is None else _heartbeat(row)


def _heartbeat(row: Any) -> Heartbeat:
    return Heartbeat(
        session=date.fromisoformat(row.session),
        attempt=int(row.attempt),
        run_id=row.run_id,
        beat_at=row.beat_at,
        phase=row.phase,
        last_bar=row.last_bar,
        state=row.state,
    )
