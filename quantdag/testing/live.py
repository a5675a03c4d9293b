"""Replaying real sessions through the live path, for the tests, ``make bench BENCH=live`` and
``make live-demo``.

- :class:`Day`: one session's minute bars, the 15-minute history before it, a model and the
  trading settings; :func:`backtest_of` runs the backtest engine on the same bars with the
  same model, deciding each bar when the live session does.
- :func:`start_session` runs a :class:`~pipelines.live.session.LiveSession` in a thread against
  a :class:`~quantdag.testing.alpaca.server.LocalAlpaca` through real alpaca-py clients.
- :func:`step_buckets` drives them in lockstep: the server's replay clock is moved to a
  bucket's end; once every minute bar of the bucket has reached the session (it persists
  each), the clock is moved ``grace`` further; then it waits for the bar's decision and its
  orders. Each bucket so closes by the session's own rule (at its end when every symbol sent
  its last minute, else at end + grace) and the orders reach the server before the next bucket
  opens, whatever the machine's load: the run is deterministic, and the backtest can be asked
  to decide at the same times (:func:`bucket_decision_times`).
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import sqlalchemy as sa

from pipelines.backtest.broker import BrokerConfig
from pipelines.backtest.engine import BacktestResult
from pipelines.backtest.model_backtest import closing_bars, run_model_strategy, signal_volatility
from pipelines.backtest.strategy import ModelStrategy, SizingConfig
from pipelines.bars.aggregate import aggregate_bars
from pipelines.bars.calendar import sessions_between
from pipelines.data import tables as T
from pipelines.data.store import BarStore
from pipelines.execution.path import PathConfig
from pipelines.features import FeatureConfig
from pipelines.features.build import build_features
from pipelines.features.stream import FeatureStream
from pipelines.labels.triple_barrier import BarrierConfig
from pipelines.live.alpaca import AlpacaBroker, AlpacaConnection, AlpacaFeed
from pipelines.live.session import BarOutcome, LiveSession, SessionConfig, SessionResult
from pipelines.live.signals import ModelSignals
from pipelines.live.store import LiveStore
from pipelines.models.estimators import ModelConfig, train_classifier
from pipelines.models.inference import predict_bar
from pipelines.models.walk_forward import Calibrator, FoldFit
from pipelines.risk.killswitch import KillSwitch
from pipelines.timeframes import Timeframe
from quantdag.testing.alpaca.server import LocalAlpaca

TF = Timeframe.parse("15m")
GRACE_DEFAULT = timedelta(seconds=2)


@dataclass(frozen=True)
class Day:
    """A replayed session: its date, its minute bars, the 15-minute history before it, the
    model, the sizing, path and barrier settings, the fill model of the simulated venue, the
    starting cash and the grace the session waits for a bar's missing last minutes."""

    session: date
    minutes: pl.DataFrame
    history: pl.DataFrame
    fit: FoldFit
    sizing: SizingConfig
    path: PathConfig
    fills: BrokerConfig
    barriers: BarrierConfig
    cash: Decimal = Decimal("1000000")
    grace: timedelta = GRACE_DEFAULT

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(sorted(self.minutes["symbol"].unique().to_list()))

    @property
    def window(self) -> tuple[datetime, datetime]:
        """The session's regular hours (UTC)."""
        w = sessions_between("XNYS", self.session, self.session).window("regular")
        return w["start"][0], w["end"][0]

    def day_bars(self) -> pl.DataFrame:
        """The session's 15-minute bars, built from its minutes by the batch aggregation."""
        return aggregate_bars(
            self.minutes, source=Timeframe.parse("1m"), target=TF, session="regular"
        )


def quick_model(history: pl.DataFrame) -> FoldFit:
    """A small LightGBM on the history's features: does the next bar close higher?"""
    feats = build_features(history, FeatureConfig(TF, "regular", "XNYS"))
    nxt = history.sort("symbol", "ts").with_columns(
        y=(pl.col("close").shift(-1).over("symbol") > pl.col("close")).cast(pl.Int64)
    )
    rows = feats.join(nxt.select("symbol", "ts", "y"), on=["symbol", "ts"]).drop_nulls("y")
    names = [c for c in feats.columns if c not in ("symbol", "ts")][:40]
    model = train_classifier(
        ModelConfig(
            "lightgbm", {"num_leaves": 7, "learning_rate": 0.1}, seed=3, num_boost_round=40
        ),
        rows,
        rows["y"].to_numpy(),
        features=names,
    )
    base_rate = float(rows["y"].mean())  # type: ignore[arg-type]
    return FoldFit(
        model,
        Calibrator("platt", {"a": 1.0, "b": 0.0}),
        None,
        base_rate,
        history["ts"].max(),  # type: ignore[arg-type]
    )


def backtest_of(
    day: Day, decided_at: Callable[[datetime], datetime] | None = None
) -> tuple[BacktestResult, pl.DataFrame]:
    """The backtest engine on the same bars with the same model, deciding each bar at
    ``decided_at(bar start)`` (default: its end plus the grace, when the live session decides
    a bar some symbol's last minute is missing from); and the predictions it read."""
    bars = day.day_bars()
    every = pl.concat([day.history.select(bars.columns), bars]).sort("symbol", "ts")
    feats = build_features(every, FeatureConfig(TF, "regular", "XNYS"))
    open_, close = day.window
    today = feats.filter(pl.col("ts") >= open_).sort("symbol", "ts")
    prob = predict_bar(
        day.fit.model, today, transform=day.fit.transform, calibrator=day.fit.calibrator
    )
    vol = signal_volatility(every, day.barriers)
    predictions = (
        today.select("symbol", "ts")
        .with_columns(prob=pl.Series(prob, dtype=pl.Float64), base_rate=day.fit.base_rate)
        .join(vol, on=["symbol", "ts"], how="left")
    )
    step = timedelta(minutes=15)
    closing = closing_bars(bars["ts"], 15, "XNYS") if day.sizing.flat_at_close else frozenset()
    result = run_model_strategy(
        bars,
        predictions,
        day.sizing,
        cash=day.cash,
        config=day.fills,
        path=replace(day.path, strategy="model"),
        closing=closing,
        clock=decided_at or (lambda ts: min(ts + step, close) + day.grace),
    )
    return result, predictions


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
    minutes: pl.DataFrame,
    buckets: list[tuple[datetime, datetime]],
    grace: timedelta = GRACE_DEFAULT,
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
    grace: timedelta = GRACE_DEFAULT,
    alive: Callable[[], bool] = lambda: True,
    on_decided: Callable[[datetime], None] | None = None,
    withheld: Callable[[datetime], int] = lambda end: 0,
    timeout: float = 30.0,
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
            timeout,
        )
        if start not in decided(engine):
            server.advance(end + grace)  # type: ignore[attr-defined]
        if minutes.filter((pl.col("ts") >= start) & (pl.col("ts") < end)).height:
            wait_for(
                f"the decision of the {start:%H:%M} bar",
                lambda s=start: not alive() or s in decided(engine),
                timeout,
            )
            if on_decided is not None:
                on_decided(start)
            # The orders decided are written before they are sent: wait until each is sent.
            wait_for(
                "the orders to be sent",
                lambda: not alive() or not pending_orders(engine),
                timeout,
            )


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
    day: Day,
    server: LocalAlpaca,
    db: Path,
    *,
    attempt: int = 1,
    heartbeat: Callable[[str, datetime | None, str], None] | None = None,
    lease: Callable[[], bool] | None = None,
    **config: Any,
) -> Running:
    """The live session of ``day`` on ``server`` (its replay clock) in a thread, recording in
    the SQLite database ``db``; ``config`` overrides :class:`SessionConfig` fields;
    ``heartbeat`` and ``lease`` as :class:`LiveSession` takes them."""
    store = BarStore(f"sqlite:///{db}")
    store.migrate()
    conn = connection(server)
    stream = FeatureStream(FeatureConfig(TF, "regular", "XNYS"), day.symbols)
    signals = ModelSignals(day.fit, stream, sizing=day.sizing, barriers=day.barriers)
    live = LiveSession(
        SessionConfig(
            session=day.session,
            attempt=attempt,
            symbols=day.symbols,
            minutes=15,
            grace_s=day.grace.total_seconds(),
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
        heartbeat=heartbeat,
        lease=lease,
    )
    stop = threading.Event()
    running = Running(live, threading.Thread(target=lambda: None), stop, store.engine)
    live._observe = running.outcomes.append

    def work() -> None:
        try:
            running.result.append(live.run(stop))
        except BaseException as exc:
            running.error.append(exc)

    # The caller's log context (run, session ids) follows the session into its thread.
    running.thread = threading.Thread(
        target=contextvars.copy_context().run, args=(work,), daemon=True
    )
    running.thread.start()
    return running


def live_orders(engine: sa.Engine, session: date) -> dict[datetime, list[tuple[Any, ...]]]:
    """The orders the live session decided, by bar (sorted; bars without orders left out)."""
    out: dict[datetime, list[tuple[Any, ...]]] = {}
    for d in LiveStore(engine, "model").decisions(session):
        out[d["bar_ts"]] = sorted(
            (o["client_order_id"], o["symbol"], o["side"], o["qty"], o["intent"])
            for o in d["orders"]
        )
    return {k: v for k, v in out.items() if v}


def backtest_of_times(
    day: Day, times: dict[datetime, datetime]
) -> tuple[BacktestResult, pl.DataFrame]:
    """The backtest engine deciding each bar when the live session did."""
    return backtest_of(day, times.__getitem__)


def register_champion(fit: FoldFit, uri: str, name: str) -> str:
    """Register ``fit`` as ``name``'s champion in the MLflow store at ``uri`` the way the
    training asset does (native files, SHA-256 of each recorded on its run); its version."""
    import json
    import tempfile

    import mlflow

    from pipelines.models.registry import ARTIFACTS_TAG, CHAMPION, _digests, experiment_id

    client = mlflow.MlflowClient(uri)
    exp = experiment_id(client, uri, name)
    run = client.create_run(exp)
    run_id = run.info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        fit.model.save(model_dir)
        (model_dir / "features.json").write_text(json.dumps(list(fit.model.features)))
        (model_dir / "calibration.json").write_text(
            json.dumps({"method": fit.calibrator.method, "params": fit.calibrator.params})
        )
        (model_dir / "base_rate.json").write_text(json.dumps(fit.base_rate))
        client.log_artifacts(run_id, str(model_dir), artifact_path="model")
        client.set_tag(run_id, ARTIFACTS_TAG, json.dumps(_digests(model_dir)))
    client.set_tag(run_id, "trained_through", fit.trained_through.isoformat())
    client.set_terminated(run_id)
    client.create_registered_model(name)
    mv = client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run_id)
    client.set_registered_model_alias(name, CHAMPION, str(mv.version))
    return str(mv.version)
