"""The live session as the ``live_session_job`` runs it: everything built from the project.

``QUANTDAG_ENV`` picks the broker: ``local`` the project's own Alpaca-compatible server
(``QUANTDAG_ALPACA_URL``, default http://127.0.0.1:8765, whose replay clock is the session's
clock), ``paper`` Alpaca's paper account, ``live`` real money (an explicit opt-in, see
:func:`pipelines.config.selected_environment`). Keys come from ``APCA_API_KEY_ID`` and
``APCA_API_SECRET_KEY`` only. The model is the registry's champion, its files verified against
the SHA-256 its run recorded; ``QUANTDAG_LIVE_MODEL_VERSION`` may name another version in the
``local`` environment only (demos of a sample model that passed no gate), never in paper or
live. ``QUANTDAG_LIVE_DRY_RUN=1`` decides and records without sending.

Run one session by hand: ``python -m quantdag.live --session 2019-02-15``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from pipelines.backtest.strategy import ModelStrategy
from pipelines.data.store import BarStore
from pipelines.execution.path import path_config
from pipelines.features import FeatureConfig
from pipelines.features.stream import FeatureStream
from pipelines.labels.partition import barrier_config
from pipelines.live.alpaca import AlpacaBroker, AlpacaConnection, AlpacaFeed, check_endpoints
from pipelines.live.broker import BrokerPort, FeedPort
from pipelines.live.heartbeat import newest_attempt, record_heartbeat
from pipelines.live.metrics import LiveMetrics
from pipelines.live.session import BarOutcome, LiveSession, SessionConfig
from pipelines.live.signals import ModelSignals
from pipelines.live.store import LiveStore
from pipelines.models.walk_forward import FoldFit
from pipelines.ops.logs import configure_json_logging, log_context
from pipelines.risk.killswitch import KillSwitch
from quantdag.project import Project, load_project
from quantdag.resources import _anchored, _per_environment

LOCAL_URL = "http://127.0.0.1:8765"
STRATEGY = "model"


class LiveConfigError(RuntimeError):
    """The live session is not set up to run (say what to set)."""


@dataclass(frozen=True)
class LiveBarReport:
    """One decided bar, for the run's observations."""

    bar_ts: datetime
    signals: list[dict[str, Any]]
    orders: list[dict[str, Any]]
    positions: dict[str, int]
    equity: float
    state: str


@dataclass(frozen=True)
class LiveSummary:
    """How a session ended (``ended``: ``close`` or ``stopped``)."""

    session: date
    attempt: int
    bars: int
    orders: int
    fills: int
    pnl: float
    state: str
    ended: str
    halted: str | None = None


def connection(project: Project, environ: dict[str, str] | None = None) -> AlpacaConnection:
    """The broker connection of the selected environment (keys from the environment only)."""
    env = dict(os.environ) if environ is None else environ
    data_timeout = project.settings.live.data_timeout_s
    if project.environment == "local":
        url = env.get("QUANTDAG_ALPACA_URL", LOCAL_URL).rstrip("/")
        return _checked(
            project,
            AlpacaConnection(
                env.get("APCA_API_KEY_ID", "test-key"),
                env.get("APCA_API_SECRET_KEY", "test-secret"),
                paper=True,
                trading_url=url,
                data_url=url,
                stream_url=url.replace("http://", "ws://").replace("https://", "wss://"),
                retries=3,
                backoff_s=0.2,
                data_timeout_s=data_timeout,
            ),
        )
    key, secret = env.get("APCA_API_KEY_ID"), env.get("APCA_API_SECRET_KEY")
    if not key or not secret:
        raise LiveConfigError(
            f"QUANTDAG_ENV={project.environment} trades through Alpaca: set APCA_API_KEY_ID and "
            "APCA_API_SECRET_KEY in the environment (never in a settings file)"
        )
    return _checked(
        project,
        AlpacaConnection(
            key,
            secret,
            paper=project.environment == "paper",
            trading_url=env.get("APCA_API_BASE_URL"),
            data_url=env.get("APCA_DATA_URL"),
            stream_url=env.get("APCA_STREAM_URL"),
            data_timeout_s=data_timeout,
        ),
    )


def _checked(project: Project, conn: AlpacaConnection) -> AlpacaConnection:
    try:
        check_endpoints(project.environment, conn)
    except ValueError as exc:
        raise LiveConfigError(str(exc)) from None
    return conn


def database_url(project: Project, environ: dict[str, str] | None = None) -> str:
    env = dict(os.environ) if environ is None else environ
    return env.get("QUANTDAG_DATABASE_URL") or _anchored(project.env.database_url)


def load_model(
    project: Project, into: Path, environ: dict[str, str] | None = None
) -> tuple[str, FoldFit]:
    """The champion (or, locally, the version ``QUANTDAG_LIVE_MODEL_VERSION`` names), verified
    against the checksums its run recorded."""
    from pipelines.models.registry import _client, load_champion, load_version

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    env = dict(os.environ) if environ is None else environ
    uri = env.get("QUANTDAG_MLFLOW_URI") or _anchored(
        f"sqlite:///{project.settings.data_dir}/mlflow.db"
    )
    name = _per_environment(project)
    version = env.get("QUANTDAG_LIVE_MODEL_VERSION")
    if version:
        if project.environment != "local":
            raise LiveConfigError(
                "QUANTDAG_LIVE_MODEL_VERSION names a model that is not the champion: allowed "
                f"in the local environment only, not in {project.environment}"
            )
        client = _client(uri)
        mv = client.get_model_version(name, version)
        logging.getLogger(__name__).warning(
            "trading model version %s of %s, which is not the champion (local only)",
            version,
            name,
        )
        return version, load_version(client, mv.source, mv.run_id, into)
    return load_champion(uri, name, into)


def build_session(
    project: Project,
    *,
    session: date,
    attempt: int,
    run_id: str,
    fit: FoldFit,
    broker: BrokerPort,
    feed: FeedPort,
    db: BarStore,
    clock: Callable[[], datetime],
    observe: Callable[[BarOutcome], None] | None = None,
    wall_now: Callable[[], datetime] = lambda: datetime.now(UTC),
    dry_run: bool | None = None,
) -> LiveSession:
    """A :class:`LiveSession` for ``session`` with the project's settings."""
    from assets.backtest import BacktestConfig, configurations

    engine = db.engine
    settings, universe = project.settings, project.universe
    live = settings.live
    tf = universe.base_timeframe
    if tf.is_daily or tf.minutes < 1:
        raise LiveConfigError(f"the live session trades intraday bars, not {tf}")
    grid, selected = configurations(BacktestConfig(), settings)
    sizing = grid[selected]
    symbols = tuple(sorted(s.symbol for s in universe.symbols))
    path = path_config(
        settings.trading, strategy=STRATEGY, bar_minutes=tf.minutes, calendar=universe.calendar
    )
    if path.limits.max_data_age_s is None:
        # A relaunch catching up on bars that closed while it was down decides them late: only
        # exposure cuts are sent for a bar that ended more than one bar (plus the grace) ago.
        # A backtest decides every bar on time, so this never binds there.
        path = replace(
            path,
            limits=replace(path.limits, max_data_age_s=tf.minutes * 60 + live.grace_s + 5),
        )
    config = SessionConfig(
        session=session,
        attempt=attempt,
        symbols=symbols,
        minutes=tf.minutes,
        calendar=universe.calendar,
        session_kind=universe.session,
        grace_s=live.grace_s,
        data_timeout_s=live.data_timeout_s,
        reconcile_every=live.reconcile_every,
        cancel_timeout_s=live.cancel_timeout_s,
        on_stop=live.on_stop,
        dry_run=live.dry_run if dry_run is None else dry_run,
        flat_at_close=sizing.flat_at_close,
        heartbeat_s=live.heartbeat_s,
        hang_s=live.hang_s,
    )
    start = datetime.combine(session - timedelta(days=live.history_days), datetime.min.time(), UTC)
    end = datetime.combine(session, datetime.min.time(), UTC)
    bars = db.read_bars(timeframe=str(tf), start=start, end=end, symbols=symbols)
    if bars.height == 0:
        raise LiveConfigError(
            f"the trading database holds no {tf} bars of the universe in the {live.history_days} "
            f"days before {session}: the features would start cold. Store them first (make run "
            "locally, or the nightly's market_data_job), or raise live.history_days"
        )
    stream = FeatureStream(FeatureConfig(tf, universe.session, universe.calendar), symbols)
    signals = ModelSignals(fit, stream, sizing=sizing, barriers=barrier_config(settings.labels))

    def heartbeat(phase: str, last_bar: datetime | None, state: str) -> None:
        record_heartbeat(
            engine,
            session=session,
            attempt=attempt,
            run_id=run_id,
            now=wall_now(),
            phase=phase,
            last_bar=last_bar,
            state=state,
        )

    def lease() -> bool:
        newest = newest_attempt(engine, session)
        return newest is None or newest <= attempt

    return LiveSession(
        config,
        path=path,
        strategy=ModelStrategy(sizing, name=STRATEGY),
        signals=signals,
        broker=broker,
        feed=feed,
        store=LiveStore(engine, STRATEGY),
        switch=KillSwitch(engine),
        clock=clock,
        history=bars.select("symbol", "ts", "open", "high", "low", "close", "volume"),
        heartbeat=heartbeat,
        observe=observe,
        lease=lease,
    )


class BrokerClock:
    """The local server's replay clock, read over REST at most every ``every_s`` wall seconds
    and advanced in between by the wall time elapsed (at the server's pace, when known)."""

    def __init__(self, broker: AlpacaBroker, every_s: float = 0.1) -> None:
        self.broker = broker
        self.every_s = every_s
        self._last = (-1e18, datetime.min.replace(tzinfo=UTC))

    def __call__(self) -> datetime:
        t = time.monotonic()
        if t - self._last[0] >= self.every_s:
            self._last = (t, self.broker.clock())
        return self._last[1]


@contextmanager
def serve_metrics(metrics: LiveMetrics, settings: Any, log: Callable[[str], None]) -> Iterator[int]:
    """Serve ``metrics`` on ``settings.metrics_addr:metrics_port`` (0: not served; the
    environment's ``QUANTDAG_METRICS_ADDR`` / ``QUANTDAG_METRICS_PORT`` override them, e.g. in
    a container) while the block runs; yields the port (0 when not served)."""
    from prometheus_client import start_http_server

    wanted = int(os.environ.get("QUANTDAG_METRICS_PORT") or settings.metrics_port)
    addr = os.environ.get("QUANTDAG_METRICS_ADDR") or settings.metrics_addr
    if not wanted:
        yield 0
        return
    try:
        server, thread = start_http_server(wanted, addr=addr, registry=metrics.registry)
    except OSError as exc:
        # Metrics must not stop trading (a predecessor that has not yet let go of the port).
        log(
            f"METRICS NOT SERVED: cannot serve them on {addr}:{wanted} ({exc}); the session "
            "trades without them: free the port or choose another live.metrics_port"
        )
        yield 0
        return
    port = int(server.server_port)
    log(f"metrics on http://{addr}:{port}/metrics")
    try:
        yield port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def run_live_session(
    project: Project,
    *,
    session: date,
    attempt: int,
    run_id: str,
    stop: threading.Event,
    observe: Callable[[LiveBarReport], None],
    log: Callable[[str], None],
) -> LiveSummary:
    """Reconcile, warm, stream and trade ``session`` until its close or ``stop``."""
    json_logs = project.environment != "local" or os.environ.get("QUANTDAG_LOG_JSON") == "1"
    with (
        log_context(run_id=run_id, session=session.isoformat(), attempt=attempt),
        configure_json_logging(sys.stderr) if json_logs else nullcontext(),
    ):
        return _run_live_session(
            project,
            session=session,
            attempt=attempt,
            run_id=run_id,
            stop=stop,
            observe=observe,
            log=log,
        )


def _run_live_session(
    project: Project,
    *,
    session: date,
    attempt: int,
    run_id: str,
    stop: threading.Event,
    observe: Callable[[LiveBarReport], None],
    log: Callable[[str], None],
) -> LiveSummary:
    conn = connection(project)
    url = database_url(project)
    db = BarStore(url)
    db.migrate()
    # Seen by the sensor (start-up allowance) and by an older attempt (its lease ends here).
    record_heartbeat(
        db.engine,
        session=session,
        attempt=attempt,
        run_id=run_id,
        now=datetime.now(UTC),
        phase="starting",
        last_bar=None,
        state="ACTIVE",
    )
    broker = AlpacaBroker(conn)
    feed = AlpacaFeed(conn)
    clock: Callable[[], datetime] = (
        BrokerClock(broker) if project.environment == "local" else (lambda: datetime.now(UTC))
    )
    dry = os.environ.get("QUANTDAG_LIVE_DRY_RUN", "").strip().lower() in ("1", "true", "yes")
    with tempfile.TemporaryDirectory(prefix="quantdag-live-model-") as tmp:
        version, fit = load_model(project, Path(tmp))
        log(f"model version {version} loaded and verified; trained through {fit.trained_through}")

        def report(o: BarOutcome) -> None:
            metrics.on_bar(o, live.config.minutes)
            metrics.on_result(live.result)
            observe(LiveBarReport(o.bar_ts, o.signals, o.orders, o.positions, o.equity, o.state))

        live = build_session(
            project,
            session=session,
            attempt=attempt,
            run_id=run_id,
            fit=fit,
            broker=broker,
            feed=feed,
            db=db,
            clock=clock,
            observe=report,
            dry_run=dry or None,
        )
        log(
            f"session {session} attempt {attempt}: {len(live.symbols)} symbols, "
            f"{live.config.minutes}-minute bars, {project.environment} broker"
            + (" (dry run: nothing is sent)" if live.config.dry_run else "")
        )
        metrics = LiveMetrics(minute_ages=live.minute_ages, result=lambda: live.result)
        with serve_metrics(metrics, project.settings.live, log):
            try:
                result = live.run(stop)
            finally:
                metrics.on_result(live.result)
    if result.halted:
        log(f"HALTED: {result.halted}")
    log(
        f"session {session} ended ({result.ended}): {result.bars} bars decided, "
        f"{result.orders} orders sent, {result.fills} fills, PnL {result.pnl:+,.2f} USD"
    )
    return LiveSummary(
        session,
        attempt,
        result.bars,
        result.orders,
        result.fills,
        result.pnl,
        result.state,
        result.ended,
        result.halted,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--session", type=date.fromisoformat, required=True)
    parser.add_argument("--attempt", type=int, default=1)
    parser.add_argument("--run-id", default="manual")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()
    summary = run_live_session(
        load_project(),
        session=args.session,
        attempt=args.attempt,
        run_id=args.run_id,
        stop=stop,
        observe=lambda r: None,
        log=print,
    )
    return 0 if summary.halted is None else 2


if __name__ == "__main__":
    sys.exit(main())
