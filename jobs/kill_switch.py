"""``kill_switch_job``: trip, reset or read the trading database's kill switch from the UI."""

# No `from __future__ import annotations`: Dagster reads the op's config annotation at runtime.
from datetime import UTC, datetime
from typing import Literal

import dagster as dg

from pipelines.risk.killswitch import KillSwitch
from pipelines.secrets import redact_uri
from resources import TradingDatabaseResource


class KillSwitchConfig(dg.Config):  # type: ignore[misc]
    """``action``: trip, reset or status; ``reason``: why (required to reset: what was checked
    and why trading may resume); ``actor``: who (default: this run); ``name``: the switch."""

    action: Literal["trip", "reset", "status"] = "status"
    reason: str = ""
    actor: str = ""
    name: str = "global"


@dg.op(out=dg.Out(dg.Nothing))
def kill_switch_op(
    context: dg.OpExecutionContext, config: KillSwitchConfig, trading_db: TradingDatabaseResource
) -> dg.Output[None]:
    """Trip, reset or read the kill switch; its status is logged and kept as metadata."""
    switch = KillSwitch(trading_db.store().engine, config.name)
    actor = config.actor.strip() or f"dagster run {context.run_id}"
    now = datetime.now(UTC)
    if config.action == "trip":
        status = switch.trip(reason=config.reason, actor=actor, now=now)
    elif config.action == "reset":
        status = switch.reset(reason=config.reason, actor=actor, now=now)
    else:
        status = switch.status()
    line = status.describe(config.name)
    context.log.info(line)
    return dg.Output(
        None,
        metadata={
            "status": line,
            "tripped": status.tripped,
            "reason": status.reason,
            "actor": status.actor,
            "since": status.since.isoformat() if status.since else "never",
            "action": config.action,
            "trading_database": redact_uri(trading_db.url),
        },
    )


@dg.job(
    description="Trip, reset (with a reason) or read the kill switch of the trading database: a "
    "tripped switch halts trading until reset. Run config: ops.kill_switch_op.config.action "
    "(trip | reset | status) and reason."
)
def kill_switch_job() -> None:
    kill_switch_op()
