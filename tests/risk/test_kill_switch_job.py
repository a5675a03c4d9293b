"""``kill_switch_job``: trips, resets (only with a reason) and reads the switch of the
``trading_db`` resource, logging the status and keeping it as the step's metadata; it is part
of the one Definitions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from jobs.kill_switch import kill_switch_job
from pipelines.risk.killswitch import KillSwitch
from resources import TradingDatabaseResource

pytestmark = pytest.mark.unit


def run(url: str, **config: str) -> dg.ExecuteInProcessResult:
    return kill_switch_job.execute_in_process(
        run_config={"ops": {"kill_switch_op": {"config": config}}},
        resources={"trading_db": TradingDatabaseResource(url=url)},
        raise_on_error=False,
    )


def metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    (output,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    return {k: v.value for k, v in output.event_specific_data.metadata.items()}  # type: ignore[union-attr]


def test_the_job_trips_resets_and_reads_the_switch(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'trading.db'}"
    tripped = run(url, action="trip", reason="drill from the UI", actor="erin")
    assert tripped.success
    meta = metadata(tripped)
    assert meta["tripped"] is True and meta["reason"] == "drill from the UI"
    assert meta["actor"] == "erin" and meta["action"] == "trip"
    assert meta["status"].startswith("kill switch 'global' TRIPPED since ")
    assert meta["trading_database"] == url
    switch = KillSwitch.from_url(url)
    assert switch.status().tripped
    # A reset without a reason fails the run, saying what to do, and changes nothing.
    refused = run(url, action="reset")
    assert not refused.success
    (failure,) = refused.get_step_failure_events()
    error = failure.event_specific_data.error  # type: ignore[union-attr]
    assert error is not None and "reset needs a reason" in error.to_string()
    assert switch.status().tripped
    reset = run(url, action="reset", reason="drill over")
    assert reset.success and metadata(reset)["tripped"] is False
    status = run(url)  # the default action only reads
    assert metadata(status)["action"] == "status" and metadata(status)["tripped"] is False
    actors = [e.actor for e in switch.events()]
    assert actors[0] == "erin" and actors[1] == f"dagster run {reset.run_id}"


def test_the_job_is_in_the_definitions() -> None:
    from quantdag.definitions import defs

    job = defs.resolve_job_def("kill_switch_job")
    assert job.description and "kill switch" in job.description
    assert "trading_db" in job.required_resource_keys
