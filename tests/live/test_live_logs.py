"""The live session's log lines during a replay: JSON, each order's carrying its client order id
beside the run's and the session's ids, and nothing of the broker's keys."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from pipelines.ops.logs import configure_json_logging, log_context
from quantdag.testing.alpaca_server import LocalAlpaca
from quantdag.testing.live import Day, start_session, step_buckets, wait_subscribed

pytestmark = pytest.mark.integration


def test_a_replay_logs_json_lines_with_its_ids(
    day: Day, server: LocalAlpaca, tmp_path: Path
) -> None:
    stream = io.StringIO()
    keys = {"APCA_API_KEY_ID": "test-key", "APCA_API_SECRET_KEY": "test-secret"}
    with configure_json_logging(stream, environ=keys):
        with log_context(run_id="run-42", session=day.session.isoformat(), attempt=1):
            running = start_session(day, server, tmp_path / "live.db")
        wait_subscribed(server, 0)
        buckets = running.session.agg.buckets
        step_buckets(server, running.engine, day.minutes, buckets[:4], alive=running.alive)
        running.stop.set()
        running.thread.join(30)
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    orders = [r for r in records if str(r["msg"]).startswith("order sent")]
    assert orders and len(orders) == running.session.result.orders
    for r in orders:
        assert r["run_id"] == "run-42" and r["session"] == day.session.isoformat()
        assert len(str(r["client_order_id"])) == 32 and r["symbol"] in day.symbols
    text = stream.getvalue()
    assert "test-secret" not in text and "test-key" not in text
