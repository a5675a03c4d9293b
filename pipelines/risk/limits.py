"""Trading states from limits: ACTIVE, REDUCING (only orders that cut exposure), HALTED (only
cancels), as in nautilus_trader.

The state at a bar is the most severe of what holds then, each named by its rule:

=================  ========  ==========================================================
rule               state     when
=================  ========  ==========================================================
``kill_switch``    HALTED    the persisted kill switch is tripped (until a person resets it)
``drawdown_halt``  HALTED    the drawdown from the peak equity reached ``halt_drawdown``;
                             the kill switch must be tripped (so a restart stays halted)
``daily_loss``     HALTED    the loss since the previous session's last equity (overnight gaps
                             count) reached ``daily_loss`` (latched for the rest of that
                             session, cleared at the next)
``drawdown_reduce`` REDUCING the drawdown from the reduce level's peak reached
                             ``reduce_drawdown`` (ACTIVE once it recovers)
``data_stale``     REDUCING  the newest bar ended more than ``max_data_age_s`` seconds ago
``clear``          ACTIVE    none of the above
=================  ========  ==========================================================

The update after a ``drawdown_halt`` that sees the switch tripped turns the rule into
``kill_switch`` without another event (the halt was that bar's event). When the switch is reset
(``kill_switch`` False after a ``kill_switch`` halt) the peak is re-based to the equity at the
reset: a person who resumes trading after reviewing a 10% drawdown is not halted again by the
same drawdown at the next bar. A caller that does not trip the switch when told is told again
at every bar while the drawdown stays at the halt level.

A book that is flat cannot recover a drawdown, so REDUCING would never end once it has cut
everything: when a session starts with the state REDUCING by ``drawdown_reduce`` and the book
flat, the reduce level's peak (``reduce_peak``) is re-based to the equity then, with an event.
The halt level keeps measuring from the all-time ``peak_equity``, so the halt still bounds the
total loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from pipelines.risk.events import RiskEvent, TradingState


@dataclass(frozen=True)
class LimitsConfig:
    """Limits as fractions of equity (None: off).

    - ``daily_loss``: loss since the previous session's last equity (overnight gaps count)
      that halts trading for the rest of the session.
    - ``reduce_drawdown``: drawdown from the peak equity from which only exposure cuts are
      sent (ACTIVE again once the drawdown is back below it).
    - ``halt_drawdown``: drawdown that halts trading and trips the kill switch (latched until a
      person resets it).
    - ``max_data_age_s``: seconds between the newest bar's end and the decision beyond which
      only exposure cuts are sent, while the data stays that stale.

    Example: ``LimitsConfig(daily_loss=0.03, reduce_drawdown=0.05, halt_drawdown=0.10,
    max_data_age_s=120)`` halts for the day after losing 3% since the previous session's last
    equity, only cuts exposure from a 5% drawdown off the peak, halts and trips the kill switch
    at 10%,
    and only cuts exposure while the newest bar is more than two minutes old.
    """

    daily_loss: float | None = 0.03
    reduce_drawdown: float | None = 0.05
    halt_drawdown: float | None = 0.10
    max_data_age_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("daily_loss", "reduce_drawdown", "halt_drawdown"):
            value = getattr(self, name)
            if value is not None and not 0 < value < 1:
                raise ValueError(f"{name} is a fraction of equity in (0, 1), got {value}")
        r, h = self.reduce_drawdown, self.halt_drawdown
        if r is not None and h is not None and r >= h:
            raise ValueError(f"reduce_drawdown {r} must be below halt_drawdown {h}")
        if self.max_data_age_s is not None and not self.max_data_age_s > 0:
            raise ValueError(f"max_data_age_s must be positive seconds, got {self.max_data_age_s}")


@dataclass(frozen=True)
class RiskStatus:
    """Where the limits stand: the ``state`` since ``since`` (UTC) and why (``reason``, the
    rule; ``""`` before the first update), the ``peak_equity`` (USD) the drawdown is measured
    from, the current ``session`` and the equity its loss is measured from
    (``session_equity``, USD), the session a daily-loss halt is latched for
    (``halted_session``), the last equity seen and the reduce level's peak. A plain value:
    :meth:`to_dict` is JSON-safe and :meth:`from_dict` reads it back equal."""

    state: TradingState = TradingState.ACTIVE
    since: datetime | None = None
    reason: str = ""
    peak_equity: float = 0.0
    session: date | None = None
    session_equity: float = 0.0
    halted_session: date | None = None
    last_equity: float = 0.0
    reduce_peak: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "since": None if self.since is None else self.since.isoformat(),
            "reason": self.reason,
            "peak_equity": self.peak_equity,
            "session": _iso(self.session),
            "session_equity": self.session_equity,
            "halted_session": _iso(self.halted_session),
            "last_equity": self.last_equity,
            "reduce_peak": self.reduce_peak,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RiskStatus:
        def day(v: str | None) -> date | None:
            return None if v is None else date.fromisoformat(v)

        return cls(
            TradingState(d["state"]),
            None if d["since"] is None else datetime.fromisoformat(d["since"]),
            str(d["reason"]),
            float(d["peak_equity"]),
            day(d["session"]),
            float(d["session_equity"]),
            day(d["halted_session"]),
            float(d.get("last_equity", 0.0)),
            float(d.get("reduce_peak", d["peak_equity"])),
        )


def _iso(d: date | None) -> str | None:
    return None if d is None else d.isoformat()


def update_status(
    status: RiskStatus,
    limits: LimitsConfig,
    *,
    now: datetime,
    session: date,
    equity: float,
    data_age_s: float | None,
    kill_switch: bool,
    flat: bool = False,
) -> tuple[RiskStatus, list[RiskEvent], bool]:
    """The limits at ``now`` (UTC) in ``session`` with ``equity`` (USD), ``data_age_s``
    (seconds since the newest bar ended; None: unknown, not checked), whether the persisted
    ``kill_switch`` is tripped and whether the book is ``flat`` (no position, no working
    order).

    Returns the new status, one ``state`` :class:`RiskEvent` per change of state or of its
    rule (``state_from``, ``state_to``, ``rule``, the numbers in ``detail`` and ``values``), and
    whether the kill switch must be tripped now (the drawdown reached ``halt_drawdown`` and the
    switch is not tripped yet). When nothing changed it returns ``status`` itself and an empty
    list without allocating.

    Example: from ``RiskStatus(peak_equity=100_000, ...)`` an equity of 94,000 gives REDUCING
    (``drawdown_reduce``, 6%), 89,000 gives HALTED (``drawdown_halt``) and ``True``.
    """
    if not math.isfinite(equity):
        raise ValueError(f"equity {equity} is not a finite USD amount")
    reset = not kill_switch and status.reason == "kill_switch"
    peak = status.peak_equity
    if equity > peak or reset:
        peak = equity
    new_session = status.session != session
    reduce_peak = status.reduce_peak
    rebased = new_session and flat and status.reason == "drawdown_reduce"
    if equity > reduce_peak or reset or rebased:
        reduce_peak = equity
    if new_session:
        session_equity = status.last_equity if status.last_equity > 0 else equity
    else:
        session_equity = status.session_equity
    drawdown = 1.0 - equity / peak if peak > 0 else 0.0
    reduce_drawdown = 1.0 - equity / reduce_peak if reduce_peak > 0 else 0.0
    loss = 1.0 - equity / session_equity if session_equity > 0 else 0.0
    halted_session = status.halted_session
    daily = limits.daily_loss
    if daily is not None and loss >= daily:
        halted_session = session
    halt = limits.halt_drawdown
    trip = halt is not None and drawdown >= halt and not kill_switch
    if kill_switch:
        state, rule = TradingState.HALTED, "kill_switch"
    elif trip:
        state, rule = TradingState.HALTED, "drawdown_halt"
    elif halted_session == session:
        state, rule = TradingState.HALTED, "daily_loss"
    elif limits.reduce_drawdown is not None and reduce_drawdown >= limits.reduce_drawdown:
        state, rule = TradingState.REDUCING, "drawdown_reduce"
    elif (
        limits.max_data_age_s is not None
        and data_age_s is not None
        and data_age_s > limits.max_data_age_s
    ):
        state, rule = TradingState.REDUCING, "data_stale"
    else:
        state, rule = TradingState.ACTIVE, "clear"
    changed = state is not status.state or rule != status.reason
    if (
        not changed
        and not trip
        and not new_session
        and peak == status.peak_equity
        and reduce_peak == status.reduce_peak
        and equity == status.last_equity
        and halted_session == status.halted_session
    ):
        return status, [], False
    events: list[RiskEvent] = []
    # No event for the first update in ACTIVE (nothing changed), nor for the kill switch
    # confirming the trip that the drawdown asked for (the trip was that bar's event).
    confirmed = status.reason == "drawdown_halt" and rule == "kill_switch"
    if changed and not confirmed and (status.reason or state is not TradingState.ACTIVE):
        event = _transition(
            status,
            state,
            rule,
            limits,
            now,
            equity,
            reduce_peak if rule == "drawdown_reduce" else peak,
            reduce_drawdown if rule == "drawdown_reduce" else drawdown,
            loss,
            data_age_s,
            reset,
        )
        if rebased:
            event = RiskEvent(
                event.ts,
                event.kind,
                event.rule,
                event.detail + f"; the book was flat at the session's start: the reduce "
                f"level now measures from {reduce_peak:,.2f} USD (the halt level from the peak "
                f"{peak:,.2f} USD)",
                state_from=event.state_from,
                state_to=event.state_to,
                values={**event.values, "reduce_peak": reduce_peak},
            )
        events.append(event)
    new = RiskStatus(
        state,
        now if changed else status.since,
        rule,
        peak,
        session,
        session_equity,
        halted_session,
        equity,
        reduce_peak,
    )
    return new, events, trip


def _transition(
    status: RiskStatus,
    state: TradingState,
    rule: str,
    limits: LimitsConfig,
    now: datetime,
    equity: float,
    peak: float,
    drawdown: float,
    loss: float,
    data_age_s: float | None,
    reset: bool,
) -> RiskEvent:
    values: dict[str, float | str] = {
        "equity": equity,
        "peak_equity": peak,
        "drawdown": drawdown,
        "session_loss": loss,
    }
    if data_age_s is not None:
        values["data_age_s"] = data_age_s
    limit = {
        "drawdown_halt": limits.halt_drawdown,
        "daily_loss": limits.daily_loss,
        "drawdown_reduce": limits.reduce_drawdown,
        "data_stale": limits.max_data_age_s,
    }.get(rule)
    if limit is not None:
        values["limit"] = limit
    if rule == "kill_switch":
        detail = "the kill switch is tripped"
    elif rule == "drawdown_halt":
        detail = (
            f"drawdown {drawdown:.2%} from the peak {peak:,.2f} USD reached the halt level "
            f"{limit:.2%}: the kill switch is tripped"
        )
    elif rule == "daily_loss":
        detail = (
            f"session loss {loss:.2%} from {equity / (1 - loss):,.2f} USD reached the daily "
            f"limit {limit:.2%}; halted for the rest of the session"
        )
    elif rule == "drawdown_reduce":
        detail = (
            f"drawdown {drawdown:.2%} from the peak {peak:,.2f} USD reached the reduce level "
            f"{limit:.2%}: only exposure cuts"
        )
    elif rule == "data_stale":
        detail = (
            f"the newest bar ended {data_age_s:,.0f} s ago, more than {limit:,.0f} s: only "
            "exposure cuts"
        )
    else:
        detail = f"limits clear (drawdown {drawdown:.2%}, session loss {loss:.2%})"
    if reset:
        detail += f"; the kill switch was reset, drawdown measured from {peak:,.2f} USD"
    return RiskEvent(
        now,
        "state",
        rule,
        f"{status.state.value} -> {state.value}: {detail}",
        state_from=status.state,
        state_to=state,
        values=values,
    )
