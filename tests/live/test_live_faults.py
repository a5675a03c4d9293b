"""Faults of the broker and the streams, survived with nothing lost: the first bars of the
session are replayed with the fault injected, and their decisions still equal the backtest's
order for order, each order reaches the broker once, and every fault was met."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pipelines.data import tables as T
from quantdag.testing.alpaca_server import Fault, LocalAlpaca
from quantdag.testing.live import (
    Day,
    Running,
    backtest_of_times,
    bucket_decision_times,
    live_orders,
    start_session,
    step_buckets,
    wait_subscribed,
)

pytestmark = pytest.mark.integration
BARS = 6


def _run(
    day: Day,
    server: LocalAlpaca,
    tmp_path: Path,
    withheld: Callable[[datetime], int] = lambda end: 0,
    **config: Any,
) -> Running:
    running = start_session(day, server, tmp_path / "live.db", **config)
    wait_subscribed(server, 0)
    buckets = running.session.agg.buckets[:BARS]
    step_buckets(
        server, running.engine, day.minutes, buckets, alive=running.alive, withheld=withheld
    )
    running.stop.set()
    running.thread.join(30)
    assert not running.thread.is_alive() and not running.error, running.error
    # A stop (a terminate) cancels what was working (live.on_stop: cancel).
    working = [o for o in server.orders() if o["status"] in ("new", "partially_filled")]
    assert working == [] and running.session.result.ended == "stopped"
    return running


def _assert_as_backtested(day: Day, running: Running, server: LocalAlpaca) -> None:
    buckets = running.session.agg.buckets
    backtest, _ = backtest_of_times(day, bucket_decision_times(day.minutes, buckets))
    decided = {s for s, _ in buckets[:BARS]}
    expected: dict[datetime, list[tuple[object, ...]]] = {}
    for o in backtest.orders:
        if o.bar_ts in decided:
            expected.setdefault(o.bar_ts, []).append(
                (o.client_order_id, o.symbol, o.side, o.quantity, o.intent)
            )
    live = live_orders(running.engine, running.session.config.session)
    assert sum(map(len, expected.values())) >= 5
    assert live == {k: sorted(v) for k, v in expected.items()}
    received = [o["client_order_id"] for o in server.orders()]
    assert len(received) == len(set(received))
    assert set(received) == {c for v in live.values() for c, *_ in v}


def test_rest_errors_timeouts_and_a_post_taken_then_failed(
    day: Day, server: LocalAlpaca, tmp_path: Path
) -> None:
    server.faults.extend(
        [
            Fault("status", 503, method="GET", path="/v2/account"),
            Fault("status", 429, headers={"Retry-After": "1"}, method="GET", path="/v2/positions"),
            Fault("hang", seconds=3.0, method="GET", path="/v2/orders"),
            # Taken, then 504: alpaca-py retries the POST itself and meets 422 "client_order_id
            # must be unique"; the session looks the order up instead of sending it again.
            Fault("apply_then_fail", 504, method="POST", path="/v2/orders"),
            # Taken, then the connection drops: the session cannot know, looks, finds it.
            Fault("apply_then_fail", 0, method="POST", path="/v2/orders"),
            Fault("status", 502, method="POST", path="/v2/orders"),
        ]
    )
    running = _run(day, server, tmp_path)
    assert server.faults == []  # every fault was met
    _assert_as_backtested(day, running, server)
    # Every failed attempt is counted (quantdag_live_broker_errors_total{cause}).
    errors = running.session.result.broker_errors
    # A lookup's 404 (not taken) and a resend's 422 (taken before) are answers, not errors.
    assert errors == {"503": 1, "502": 1, "ChunkedEncodingError": 1}, errors


def test_dropped_and_stalled_data_stream_is_detected_and_backfilled(
    day: Day, server: LocalAlpaca, tmp_path: Path
) -> None:
    buckets: list[tuple[datetime, datetime]] = []

    def faults(start: datetime) -> None:
        if not buckets:
            buckets.extend(running_session[0].session.agg.buckets)
        if start == buckets[1][0]:
            server.drop_data_socket()
        if start == buckets[3][0]:
            server.stall_data(replay_seconds=20 * 60)

    running_session: list[Running] = []
    running = start_session(day, server, tmp_path / "live.db", data_timeout_s=1.0)
    running_session.append(running)
    wait_subscribed(server, 0)
    step_buckets(
        server,
        running.engine,
        day.minutes,
        running.session.agg.buckets[:BARS],
        alive=running.alive,
        on_decided=faults,
    )
    running.stop.set()
    running.thread.join(30)
    result = running.session.result
    assert server.bars_missed  # the stall and the drop lost bars on the stream ...
    with running.engine.connect() as conn:
        sources = dict(
            conn.execute(
                sa.select(T.live_minute_bars.c.source, sa.func.count()).group_by(
                    T.live_minute_bars.c.source
                )
            ).all()
        )
    assert sources.get("backfill", 0) >= len(server.bars_missed)  # ... REST brought them back
    assert result.reconnects >= 1
    # Detected within data_timeout (1 s) of silence, plus one poll of the loop.
    assert all(silent < 1.0 + 0.5 for silent, _ in result.stalls)
    _assert_as_backtested(day, running, server)


def test_duplicate_and_late_bars_and_a_silent_trade_stream(
    day: Day, server: LocalAlpaca, tmp_path: Path
) -> None:
    first = day.minutes["ts"].min()
    symbol = "AAPL"
    server.duplicate_bar(symbol, first + timedelta(minutes=3))
    server.late_bar(symbol, first + timedelta(minutes=4), minutes=2)  # late inside its bucket
    server.stall_trades(wall_seconds=600)  # fills must be learnt over REST
    running = _run(day, server, tmp_path)
    assert running.session.result.duplicates >= 1
    fills = {f["source"] for f in running.session.store.fills()}
    assert fills == {"rest"}
    _assert_as_backtested(day, running, server)


def test_a_bar_later_than_its_bucket_is_kept_but_not_decided_on(
    day: Day, server: LocalAlpaca, tmp_path: Path
) -> None:
    first = day.minutes["ts"].min()
    late = first + timedelta(minutes=14)  # the first bucket's last minute ...
    server.late_bar("AAPL", late, minutes=20)  # ... arrives in the middle of the second
    running = _run(day, server, tmp_path, withheld=lambda end: int(end > late))
    with running.engine.connect() as conn:
        row = conn.execute(
            sa.select(T.live_minute_bars.c.late).where(
                T.live_minute_bars.c.symbol == "AAPL", T.live_minute_bars.c.ts == late
            )
        ).one()
    assert row.late is True
    assert running.session.result.late == 1
