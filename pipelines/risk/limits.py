"""Trading states from limits: ACTIVE, REDUCING (only orders that cut exposure), HALTED (only
cancels), as in nautilus_trader.

The state is the most severe of what holds at the bar: a tripped kill switch, the drawdown's
halt level (which also trips the kill switch, so a restart stays halted until a person resets
it), the daily loss limit (halted for the rest of that session), the drawdown's reduce level
(back to ACTIVE once the drawdown recovers) and stale data (reducing while the newest bar is
older than allowed). Every change of state is a :class:`RiskEvent` with its rule and numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from pipelines.risk.events import RiskEvent, TradingState

SEVERITY = {TradingState.ACTIVE: 0, TradingState.REDUCING: 1, TradingState.HALTED: 2}


@dataclass(frozen=True)
class LimitsConfig:
    """Limits as fractions of equity (None: off). Example: ``LimitsConfig(daily_loss=0.03,
    reduce_drawdown=0.05, halt_drawdown=0.10)`` halts for the day after losing 3% of the
    session's first equity, only cuts exposure from a 5% drawdown off the peak, and halts (and
    trips the kill switch) at 10%. ``max_data_age_s``: seconds between the newest bar's end and
    the decision beyond which the path only reduces."""

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
    """Where the limits stand: the ``state`` since ``since`` and why (``reason``, the rule),
    the ``peak_equity`` (USD) the drawdown is measured from, the current ``session`` and its
    first equity, and the session a daily-loss halt is latched for."""

    state: TradingState = TradingState.ACTIVE
    since: datetime | None = None
    reason: str = ""
    peak_equity: float = 0.0
    session: date | None = None
    session_equity: float = 0.0
    halted_session: date | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "since": None if self.since is None else self.since.isoformat(),
            "reason": self.reason,
            "peak_equity": self.peak_equity,
            "session": None if self.session is None else self.session.isoformat(),
            "session_equity": self.session_equity,
            "halted_session": None
            if self.halted_session is None
            else self.halted_session.isoformat(),
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
        )


def update_status(
    status: RiskStatus,
    limits: LimitsConfig,
    *,
    now: datetime,
    session: date,
    equity: float,
    data_age_s: float | None,
    kill_switch: bool,
) -> tuple[RiskStatus, list[RiskEvent], bool]:
    """The status at ``now`` (UTC) in ``session`` with ``equity`` (USD): the new status, one
    event per change of state, and whether the kill switch must be tripped now (the drawdown
    reached its halt level). Returns ``status`` itself when nothing changed."""
    peak = status.peak_equity if status.peak_equity >= equity else equity
    new_session = status.session != session
    session_equity = equity if new_session else status.session_equity
    drawdown = 1.0 - equity / peak if peak > 0 else 0.0
    loss = 1.0 - equity / session_equity if session_equity > 0 else 0.0
    halted_session = status.halted_session
    trip = False
    daily = limits.daily_loss
    if daily is not None and loss >= daily and halted_session != session:
        halted_session = session
    if limits.halt_drawdown is not None and drawdown >= limits.halt_drawdown and not kill_switch:
        trip = True
    if kill_switch or trip:
        state, rule = TradingState.HALTED, "kill_switch" if kill_switch else "drawdown_halt"
    elif halted_session == session:
        state, rule = TradingState.HALTED, "daily_loss"
    elif limits.reduce_drawdown is not None and drawdown >= limits.reduce_drawdown:
        state, rule = TradingState.REDUCING, "drawdown_reduce"
    elif (
        limits.max_data_age_s is not None
        and data_age_s is not None
        and data_age_s > limits.max_data_age_s
    ):
        state, rule = TradingState.REDUCING, "data_stale"
    else:
        state, rule = TradingState.ACTIVE, ""
    if (
        state is status.state
        and rule == status.reason
        and peak == status.peak_equity
        and not new_session
        and halted_session == status.halted_session
        and not trip
    ):
        return status, [], False
    events: list[RiskEvent] = []
    if state is not status.state or rule != status.reason:
        detail = {
            "kill_switch": "the kill switch is tripped",
            "drawdown_halt": f"drawdown {drawdown:.2%} reached the halt level "
            f"{limits.halt_drawdown}; the kill switch is tripped",
            "daily_loss": f"session loss {loss:.2%} reached the daily limit {daily}",
            "drawdown_reduce": f"drawdown {drawdown:.2%} reached the reduce level "
            f"{limits.reduce_drawdown}",
            "data_stale": f"newest bar {data_age_s}s old, above {limits.max_data_age_s}s",
            "": f"limits clear (drawdown {drawdown:.2%}, session loss {loss:.2%})",
        }[rule]
        events.append(
            RiskEvent(
                now,
                "state",
                rule or "clear",
                f"{status.state.value} -> {state.value}: {detail}",
                state_from=status.state,
                state_to=state,
                values={
                    "equity": equity,
                    "peak_equity": peak,
                    "drawdown": drawdown,
                    "session_loss": loss,
                },
            )
        )
    changed = state is not status.state or rule != status.reason
    return (
        RiskStatus(
            state,
            now if changed else status.since,
            rule,
            peak,
            session,
            session_equity,
            halted_session,
        ),
        events,
        trip,
    )
