"""Drive a live session against the local Alpaca server in lockstep, bucket by bucket.

The server's replay clock is moved to a bucket's end; once every minute bar of the bucket has
reached the session (it persists each), the clock is moved ``grace`` further; then the harness
waits for the bar's decision to be recorded. So each bucket closes the way the session's rule
says (at its end when every symbol sent its last minute, else at end + grace) and the orders
reach the server before the next bucket opens, whatever the machine's load: the run is
deterministic, and the backtest engine can be asked to decide at the same times.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import sqlalchemy as sa

from pipelines.backtest.strategy import ModelStrategy
from pipelines.config import load_settings
from pipelines.data import tables as T
from pipelines.data.store import BarStore
from pipelines.features import FeatureConfig
from pipelines.features.stream import FeatureStream
from pipelines.labels.partition import barrier_config
from pipelines.live.alpaca import AlpacaBroker, AlpacaConnection, AlpacaFeed
from pipelines.live.session import BarOutcome, LiveSession, SessionConfig, SessionResult
from pipelines.live.signals import ModelSignals
from pipelines.live.store import LiveStore
from pipelines.risk.killswitch import KillSwitch
from quantdag.testing.alpaca_server import LocalAlpaca
from tests.conftest import SAMPLE_SETTINGS
from tests.live.conftest import GRACE, SESSION, TF, Day, backtest_of


def wait_for(what: str, ok: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.005)


def minutes_recorded(engine: sa.Engine, before: datetime) -> int:
    c = T.live_minute_bars.c
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).where(c.ts < before, c.late.is_(False))
            ).scalar()
        )


def decided(engine: sa.Engine) -> set[datetime]:
    with engine.connect() as conn:
        return set(conn.execute(sa.select(T.live_decisions.c.bar_ts)).scalars())


def wait_subscribed(server: object, connections_before: int) -> None:
    """Until a market-data connection opened after ``connections_before`` has subscribed."""
    wait_for(
        "the session's bar subscription",
        lambda: (
            server.data_connections > connections_before  # type: ignore[attr-defined]
            and any(sub.get("bars") for sub in server.subscriptions())
        ),  # type: ignore[attr-defined]
        120,
    )


def pending_orders(engine: sa.Engine) -> int:
    c = T.live_orders.c
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).where(c.status == "pending")).scalar())


def bucket_decision_times(
    minutes: pl.DataFrame, buckets: list[tuple[datetime, datetime]], grace: timedelta = GRACE
) -> dict[datetime, datetime]:
    """Bar start -> when the session decides it: its end if every symbol has its last minute,
    else end + grace."""
    symbols = set(minutes["symbol"].unique().to_list())
    out = {}
    for start, end in buckets:
        last = set(minutes.filter(pl.col("ts") == end - timedelta(minutes=1))["symbol"].to_list())
        out[start] = end if last >= symbols else end + grace
    return out


def step_buckets(
    server: object,
    engine: sa.Engine,
    minutes: pl.DataFrame,
    buckets: list[tuple[datetime, datetime]],
    *,
    until: datetime | None = None,
    grace: timedelta = GRACE,
    alive: Callable[[], bool] = lambda: True,
    on_decided: Callable[[datetime], None] | None = None,
    withheld: Callable[[datetime], int] = lambda end: 0,
) -> None:
    """Advance ``server`` (a LocalAlpaca) bucket by bucket until ``until`` (default: all);
    ``withheld(end)`` minutes before ``end`` are not expected to reach the session in time."""
    for start, end in buckets:
        if until is not None and end > until:
            return
        expected = minutes.filter(pl.col("ts") < end).height - withheld(end)
        server.advance(end)  # type: ignore[attr-defined]
        wait_for(
            f"the minute bars before {end:%H:%M}",
            lambda e=end, n=expected: not alive() or minutes_recorded(engine, e) >= n,
        )
        if start not in decided(engine):
            server.advance(end + grace)  # type: ignore[attr-defined]
        if minutes.filter((pl.col("ts") >= start) & (pl.col("ts") < end)).height:
            wait_for(
                f"the decision of the {start:%H:%M} bar",
                lambda s=start: not alive() or s in decided(engine),
            )
            if on_decided is not None:
                on_decided(start)
            # The orders decided are written before they are sent: wait until each is sent.
            wait_for("the orders to be sent", lambda: not alive() or not pending_orders(engine))


@dataclass
class Running:
    session: LiveSession
    thread: threading.Thread
    stop: threading.Event
    engine: sa.Engine
    outcomes: list[BarOutcome] = field(default_factory=list)
    result: list[SessionResult] = field(default_factory=list)
    error: list[BaseException] = field(default_factory=list)

    def alive(self) -> bool:
        if self.error:
            raise self.error[0]
        if self.session.result.halted:
            raise AssertionError(f"the session halted: {self.session.result.halted}")
        return self.thread.is_alive()


def connection(server: LocalAlpaca) -> AlpacaConnection:
    return AlpacaConnection(
        "test-key",
        "test-secret",
        trading_url=server.url,
        data_url=server.url,
        stream_url=server.stream_url,
        retries=3,
        backoff_s=0.05,
        data_timeout_s=30.0,
    )


def start_session(
    day: Day, server: LocalAlpaca, db: Path, *, attempt: int = 1, **config: Any
) -> Running:
    settings, _ = load_settings(SAMPLE_SETTINGS)
    store = BarStore(f"sqlite:///{db}")
    store.migrate()
    conn = connection(server)
    stream = FeatureStream(FeatureConfig(TF, "regular", "XNYS"), day.symbols)
    signals = ModelSignals(
        day.fit, stream, sizing=day.sizing, barriers=barrier_config(settings.labels)
    )
    live = LiveSession(
        SessionConfig(
            session=SESSION,
            attempt=attempt,
            symbols=day.symbols,
            minutes=15,
            grace_s=GRACE.total_seconds(),
            flat_at_close=day.sizing.flat_at_close,
            **config,
        ),
        path=day.path,
        strategy=ModelStrategy(day.sizing, name="model"),
        signals=signals,
        broker=AlpacaBroker(conn),
        feed=AlpacaFeed(conn),
        store=LiveStore(store.engine, "model"),
        switch=KillSwitch(store.engine),
        clock=server.now,
        history=day.history.select("symbol", "ts", "open", "high", "low", "close", "volume"),
    )
    stop = threading.Event()
    running = Running(live, threading.Thread(target=lambda: None), stop, store.engine)
    live._observe = running.outcomes.append

    def work() -> None:
        try:
            running.result.append(live.run(stop))
        except BaseException as exc:
            running.error.append(exc)

    running.thread = threading.Thread(target=work, daemon=True)
    running.thread.start()
    return running


def live_orders(engine: sa.Engine) -> dict[datetime, list[tuple[Any, ...]]]:
    out: dict[datetime, list[tuple[Any, ...]]] = {}
    for d in LiveStore(engine, "model").decisions(SESSION):
        out[d["bar_ts"]] = sorted(
            (o["client_order_id"], o["symbol"], o["side"], o["qty"], o["intent"])
            for o in d["orders"]
        )
    return {k: v for k, v in out.items() if v}


def backtest_of_times(day: Day, times: dict[datetime, datetime]) -> tuple[Any, pl.DataFrame]:
    """The backtest engine deciding each bar when the live session did."""
    return backtest_of(day, times.__getitem__)
