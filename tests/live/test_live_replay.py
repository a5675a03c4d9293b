"""A real session replayed through the local Alpaca server and real alpaca-py clients: the live
decisions equal the backtest engine's on the same bars with the same model, order for order,
and the day ends with the backtest's positions."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from quantdag.testing.alpaca_server import LocalAlpaca
from quantdag.testing.live import (
    Day,
    backtest_of_times,
    bucket_decision_times,
    live_orders,
    start_session,
    step_buckets,
    wait_subscribed,
)

pytestmark = pytest.mark.integration


def test_live_decisions_equal_the_backtest_order_for_order(
    day: Day, server: LocalAlpaca, tmp_path: Path
) -> None:
    running = start_session(day, server, tmp_path / "live.db")
    wait_subscribed(server, 0)
    buckets = running.session.agg.buckets
    step_buckets(server, running.engine, day.minutes, buckets, alive=running.alive)
    server.advance(buckets[-1][1] + timedelta(minutes=5))
    running.thread.join(30)
    assert not running.thread.is_alive() and not running.error
    (result,) = running.result
    assert result.ended == "close" and result.halted is None

    times = bucket_decision_times(day.minutes, buckets)
    backtest, _ = backtest_of_times(day, times)
    expected: dict[datetime, list[tuple[Any, ...]]] = {}
    for o in backtest.orders:
        expected.setdefault(o.bar_ts, []).append(
            (o.client_order_id, o.symbol, o.side, o.quantity, o.intent)
        )
    expected = {k: sorted(v) for k, v in expected.items()}
    live = live_orders(running.engine, running.session.config.session)
    assert sum(map(len, expected.values())) >= 20  # the day trades: the comparison means it
    assert live == expected
    # Fills: the venue's fill model is the backtest's (SimulatedBroker), at the next bar's open
    # under the participation cap; the positions at the close are the backtest's.
    assert server.positions() == {s: q for s, q in backtest.ledger.positions.items() if q}
    assert result.bars == 26
