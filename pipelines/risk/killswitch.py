"""The kill switch persisted in the trading database, and the ``risk_events`` table.

A tripped switch halts the trading path (HALTED: working orders are cancelled, no new order is
sent) until a person resets it with a reason. It is tripped by a limit (the drawdown's halt
level, see :func:`pipelines.risk.limits.update_status`), by a person
(``python -m quantdag.killswitch trip --reason ...`` or the ``kill_switch_job`` in the Dagster
UI) or by the live session. Because it lives in the database (table ``kill_switch``, one row
per name), it survives restarts and every process reading that database sees it.

Every trip and every reset is a row of ``risk_events`` (kind ``kill_switch``): ``state_from``
and ``state_to`` are the switch's own states (ACTIVE: not tripped, HALTED: tripped), ``rule``
is ``trip`` or ``reset``, ``actor`` who did it and ``detail`` why. Tripping a tripped switch
and resetting a switch that is not tripped change nothing and record nothing.

Example::

    switch = KillSwitch.from_url("sqlite:///.quantdag/trading.db")
    switch.trip(reason="broker reports unknown fills", actor="alice", now=now)
    switch.status().tripped  # True, in this process and any other
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from pipelines.data.store import BarStore
from pipelines.data.tables import kill_switch as switch_table
from pipelines.data.tables import risk_events as events_table
from pipelines.risk.events import RiskEvent, TradingState

_INSERTS: dict[str, Callable[[sa.Table], postgresql.Insert | sqlite.Insert]] = {
    "postgresql": postgresql.insert,
    "sqlite": sqlite.insert,
}


@dataclass(frozen=True)
class KillSwitchStatus:
    """The switch as last set: ``tripped`` or not, the ``reason`` and ``actor`` of the last
    trip or reset and ``since`` when (UTC; None and blanks if it was never tripped)."""

    tripped: bool
    reason: str
    actor: str
    since: datetime | None

    def describe(self, name: str = "global") -> str:
        """One line for people, e.g. ``kill switch 'global' TRIPPED since 2024-03-01T14:02:00
        +00:00 by alice: broker reports unknown fills``."""
        if self.since is None:
            return f"kill switch {name!r} is not tripped (never tripped)"
        when = self.since.isoformat()
        if self.tripped:
            return f"kill switch {name!r} TRIPPED since {when} by {self.actor}: {self.reason}"
        return f"kill switch {name!r} is not tripped (reset {when} by {self.actor}: {self.reason})"


_NEVER = KillSwitchStatus(False, "", "", None)


class KillSwitch:
    """The persisted kill switch of one trading database (table ``kill_switch``, one row per
    ``name``), and the ``risk_events`` table.

    ``engine`` is a migrated trading database's (:meth:`from_url` opens and migrates one the
    way :class:`pipelines.data.store.BarStore` does). :meth:`status` is one primary-key read
    (well under a millisecond on a local database): the live session calls it before every
    order it sends. Trips and resets are atomic and safe between concurrent processes: of two
    simultaneous trips one records the transition and the other finds the switch tripped.
    """

    def __init__(self, engine: sa.Engine, name: str = "global") -> None:
        if not name.strip():
            raise ValueError("the kill switch needs a name (default 'global')")
        dialect = engine.dialect.name
        if dialect not in _INSERTS:
            raise ValueError(
                f"the kill switch lives in the trading database, SQLite or PostgreSQL; "
                f"got a {dialect} engine"
            )
        self.engine = engine
        self.name = name
        self._insert = _INSERTS[dialect]
        if not sa.inspect(engine).has_table(switch_table.name):
            raise ValueError(
                f"the trading database at {engine.url.render_as_string(hide_password=True)} "
                "has no kill_switch table: migrate it first (KillSwitch.from_url does, as "
                "does BarStore(url).migrate())"
            )

    @classmethod
    def from_url(
        cls,
        url: str,
        name: str = "global",
        *,
        connect_timeout: int = 10,
        busy_timeout: float = 60.0,
    ) -> KillSwitch:
        """The switch ``name`` of the trading database at ``url`` (SQLAlchemy URL), opened with
        the store's engine settings (timeouts, error messages that name the server) and
        migrated to the newest schema. Raises :class:`pipelines.data.store.StoreError` when the
        database cannot be reached or created, ``sqlalchemy.exc.ArgumentError`` for a URL that
        does not parse."""
        store = BarStore(url, connect_timeout=connect_timeout, busy_timeout=busy_timeout)
        store.migrate()
        return cls(store.engine, name)

    # -- the switch ------------------------------------------------------------------------
    def status(self) -> KillSwitchStatus:
        """The switch as stored now."""
        with self.engine.connect() as conn:
            return self._read(conn)

    def tripped(self) -> bool:
        """Whether the switch is tripped now (the read before each live order)."""
        return self.status().tripped

    def trip(self, *, reason: str, actor: str, now: datetime) -> KillSwitchStatus:
        """Trip the switch at ``now`` (UTC) because of ``reason`` (blank: recorded as "no
        reason given"), by ``actor`` (a person's or a component's name). Tripping a tripped
        switch changes and records nothing. Returns the status after the call."""
        reason = reason.strip() or "no reason given"
        return self._set(True, reason=reason, actor=actor, now=now)

    def reset(self, *, reason: str, actor: str, now: datetime) -> KillSwitchStatus:
        """Reset the switch at ``now`` (UTC), saying why (``reason`` is required: what was
        checked, what was fixed), by ``actor``. Resetting a switch that is not tripped changes
        and records nothing. Returns the status after the call."""
        if not reason.strip():
            raise ValueError(
                "a kill-switch reset needs a reason: say what was checked and why trading may "
                "resume"
            )
        return self._set(False, reason=reason.strip(), actor=actor, now=now)

    def _set(self, tripped: bool, *, reason: str, actor: str, now: datetime) -> KillSwitchStatus:
        if not actor.strip():
            raise ValueError("a kill-switch trip or reset needs an actor: who (or what) did it")
        if now.tzinfo is None:
            raise ValueError(f"now {now} has no time zone: pass a UTC instant")
        t = switch_table
        with self.engine.begin() as conn:
            # A write first: on SQLite it takes the write lock at once (no deferred read lock
            # to upgrade); on PostgreSQL the UPDATE below then serialises concurrent callers.
            conn.execute(
                self._insert(t)
                .values(name=self.name, tripped=False, reason="", actor="", since=None)
                .on_conflict_do_nothing(index_elements=["name"])
            )
            changed = conn.execute(
                t.update()
                .where(t.c.name == self.name, t.c.tripped == (not tripped))
                .values(tripped=tripped, reason=reason, actor=actor.strip(), since=now)
            ).rowcount
            if changed:
                off, on = TradingState.ACTIVE, TradingState.HALTED
                event = RiskEvent(
                    now,
                    "kill_switch",
                    "trip" if tripped else "reset",
                    f"kill switch {self.name!r} {'tripped' if tripped else 'reset'}: {reason}",
                    state_from=off if tripped else on,
                    state_to=on if tripped else off,
                    actor=actor.strip(),
                    values={"switch": self.name},
                )
                conn.execute(events_table.insert(), [_row(event)])
            return self._read(conn)

    def _read(self, conn: sa.Connection) -> KillSwitchStatus:
        t = switch_table
        row = conn.execute(
            sa.select(t.c.tripped, t.c.reason, t.c.actor, t.c.since).where(t.c.name == self.name)
        ).first()
        if row is None:
            return _NEVER
        return KillSwitchStatus(bool(row.tripped), row.reason, row.actor, row.since)

    # -- risk events -----------------------------------------------------------------------
    def record(self, events: Sequence[RiskEvent]) -> None:
        """Append ``events`` to ``risk_events``, in one transaction."""
        if not events:
            return
        rows = [_row(e) for e in events]
        with self.engine.begin() as conn:
            conn.execute(events_table.insert(), rows)

    def events(self, limit: int = 100) -> list[RiskEvent]:
        """The newest ``limit`` risk events of the database, oldest first."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        t = events_table
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t).order_by(t.c.id.desc()).limit(limit)).all()
        return [_event(r) for r in reversed(rows)]


def _row(event: RiskEvent) -> dict[str, Any]:
    if event.ts.tzinfo is None:
        raise ValueError(f"risk event {event.rule!r} at {event.ts} has no time zone: use UTC")
    return {
        "ts": event.ts,
        "kind": event.kind,
        "rule": event.rule,
        "detail": event.detail,
        "symbol": event.symbol,
        "client_order_id": event.client_order_id,
        "state_from": None if event.state_from is None else event.state_from.value,
        "state_to": None if event.state_to is None else event.state_to.value,
        "actor": event.actor,
        # NaN and infinities are kept (as JSON's NaN/Infinity extension) rather than lost.
        "values_json": json.dumps(event.values, sort_keys=True),
    }


def _event(row: sa.Row[Any]) -> RiskEvent:
    return RiskEvent(
        row.ts,
        row.kind,
        row.rule,
        row.detail,
        symbol=row.symbol,
        client_order_id=row.client_order_id,
        state_from=None if row.state_from is None else TradingState(row.state_from),
        state_to=None if row.state_to is None else TradingState(row.state_to),
        actor=row.actor,
        values=json.loads(row.values_json),
    )
