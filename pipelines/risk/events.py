"""The risk layer's shared values: the trading state and the risk event.

A :class:`RiskEvent` is one row of the ``risk_events`` table: a refused order (its rule and the
numbers that broke it), a change of trading state, a kill-switch transition or a cancel the
risk layer asked for. The backtest keeps them in memory and reports them; the live session
persists them (:meth:`pipelines.risk.killswitch.KillSwitch.record`).

``kind`` ``refused`` names a pre-trade check in ``rule`` (:data:`pipelines.risk.checks.RULES`);
``state`` a limit (:mod:`pipelines.risk.limits`) with ``state_from``/``state_to``;
``kill_switch`` a ``trip`` or ``reset`` of the persisted switch, whose own states are given as
ACTIVE (not tripped) and HALTED (tripped), with the ``actor`` who did it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Literal

EventKind = Literal["refused", "state", "kill_switch", "cancel", "flatten", "portfolio"]


class TradingState(StrEnum):
    """ACTIVE trades freely; REDUCING sends only orders that cut exposure; HALTED only cancels."""

    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"
    HALTED = "HALTED"


@dataclass(frozen=True)
class RiskEvent:
    """What the risk layer did at ``ts`` (UTC) and why. ``rule`` names the check or limit
    (``max_order_notional``, ``daily_loss``, ``kill_switch`` ...); ``detail`` says it in one
    line with its numbers; ``values`` holds those numbers for tables (USD, shares, fractions)."""

    ts: datetime
    kind: EventKind
    rule: str
    detail: str
    symbol: str | None = None
    client_order_id: str | None = None
    state_from: TradingState | None = None
    state_to: TradingState | None = None
    actor: str = "risk"
    values: dict[str, float | str] = field(default_factory=dict)
