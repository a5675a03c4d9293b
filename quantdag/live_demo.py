"""``make live-demo``: a real session replayed against the local Alpaca server, traded by the
live session exactly as the ``live_session_job`` trades (alpaca-py clients over loopback, the
streamed features, the model from the registry, the one decision path, the risk layer).

The session is 2019-02-15 of the bundled 1-minute sample (24 symbols). The server's clock is
moved bar by bar as soon as the session has decided (``--speed N`` replays at N replay seconds
a wall second instead). The session's record goes to a database of its own
(``.quantdag/live-demo.db``, made afresh from the trading database's stored bars), so the demo
can be run again and never mixes with a real live record. At the end it prints the day's
orders, fills and PnL, and where the run is in the Dagster UI.

The sample's model did not pass the skill gate (it has no champion), and the live session
trades only a champion: the demo names the newest version explicitly
(``QUANTDAG_LIVE_MODEL_VERSION``, allowed in the local environment only) and says so.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import polars as pl

SESSION = date(2019, 2, 15)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--session", type=date.fromisoformat, default=SESSION)
    parser.add_argument(
        "--speed",
        type=float,
        default=0.0,
        help="replay seconds a wall second (0: bar by bar, as fast as the session decides)",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("QUANTDAG_ENV", "local")
    if os.environ["QUANTDAG_ENV"] != "local":
        print("make live-demo runs in the local environment only (QUANTDAG_ENV=local)")
        return 2

    from pipelines.backtest.broker import BrokerConfig, CostModel
    from pipelines.data.store import BarStore
    from pipelines.models.registry import _client
    from quantdag import live
    from quantdag.project import load_project
    from quantdag.resources import _anchored, _per_environment
    from quantdag.testing.alpaca_server import LocalAlpaca, sample_minute_bars
    from quantdag.testing.live import step_buckets

    project = load_project()
    data_dir = Path(_anchored(f"sqlite:///{project.settings.data_dir}").removeprefix("sqlite:///"))
    trading_url = live.database_url(project)
    mlflow_uri = os.environ.get("QUANTDAG_MLFLOW_URI") or _anchored(
        f"sqlite:///{project.settings.data_dir}/mlflow.db"
    )
    name = _per_environment(project)
    if not _has_model(mlflow_uri, name) or not _has_bars(trading_url):
        print("No model or stored bars yet: running `make run` first (about 30 s) ...")
        from quantdag.run import main as run_main

        if run_main([]) != 0:
            return 1

    client = _client(mlflow_uri)
    registered = client.get_registered_model(name)
    if "champion" not in (registered.aliases or {}):
        newest = max(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        os.environ["QUANTDAG_LIVE_MODEL_VERSION"] = str(newest)
        print(
            f"{name} has no champion (the sample's model failed the skill gate): the demo trades "
            f"version {newest} anyway, in the local environment only. Paper and live refuse it."
        )

    # A record of its own, with the stored 15-minute history to warm the features on.
    demo_db = data_dir / "live-demo.db"
    demo_db.unlink(missing_ok=True)
    demo = BarStore(f"sqlite:///{demo_db}")
    demo.migrate()
    source = BarStore(trading_url)
    tf = str(project.universe.base_timeframe)
    open_ = datetime.combine(args.session, datetime.min.time()).replace(tzinfo=UTC)
    history = source.read_bars(
        timeframe=tf,
        start=open_ - timedelta(days=project.settings.live.history_days),
        end=open_,
    )
    demo.upsert_bars(history, timeframe=tf, source="live-demo")
    os.environ["QUANTDAG_DATABASE_URL"] = f"sqlite:///{demo_db}"

    from assets.backtest import BacktestConfig

    b = BacktestConfig()
    fills = BrokerConfig(
        CostModel(
            b.slippage_bps,
            b.half_spread_bps,
            0.0,  # the server knows no per-bar volatility to price impact with
            Decimal(repr(b.commission_per_share)),
            Decimal(repr(b.commission_min)),
            borrow_bps=b.borrow_bps,
        ),
        participation=b.participation,
        max_leverage=1.0,
    )
    minutes = sample_minute_bars(args.session)
    cash = Decimal(repr(b.cash))
    with LocalAlpaca(
        minutes, cash=cash, fill=fills, fill_minutes=project.universe.base_timeframe.minutes
    ) as server:
        os.environ["QUANTDAG_ALPACA_URL"] = server.url
        print(
            f"Local Alpaca on {server.url}: replaying {args.session} "
            f"({minutes['symbol'].n_unique()} symbols, {minutes.height:,} minute bars)"
        )
        started = time.monotonic()
        outcome: dict[str, object] = {}
        runner = threading.Thread(
            target=_run_job, args=(args.session, outcome), name="live-session", daemon=True
        )
        runner.start()
        engine = demo.engine
        _wait_trading(engine, args.session, runner)
        if args.speed > 0:
            server.play(args.speed)
            runner.join()
        else:
            from pipelines.bars.calendar import sessions_between

            w = sessions_between("XNYS", args.session, args.session).window("regular")
            start, end = w["start"][0], w["end"][0]
            step = timedelta(minutes=project.universe.base_timeframe.minutes)
            buckets, t = [], start
            while t < end:
                buckets.append((t, min(t + step, end)))
                t += step
            step_buckets(server, engine, minutes, buckets, alive=runner.is_alive, timeout=120)
            server.advance(end + timedelta(minutes=5))
            runner.join(120)
        if "error" in outcome:
            print(f"the live session failed: {outcome['error']}")
            return 1
        _report(server, cash, outcome, time.monotonic() - started)
    return 0


def _has_model(uri: str, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    from pipelines.models.registry import _client

    try:
        return bool(_client(uri).search_model_versions(f"name='{name}'"))
    except MlflowException:
        return False


def _has_bars(url: str) -> bool:
    from pipelines.data.store import BarStore

    try:
        return BarStore(url).count_bars() > 0
    except Exception:
        return False


def _wait_trading(engine: object, session: date, runner: threading.Thread) -> None:
    from pipelines.live.heartbeat import read_heartbeat

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and runner.is_alive():
        beat = read_heartbeat(engine, session)  # type: ignore[arg-type]
        if beat is not None and beat.phase in ("trading", "halted"):
            time.sleep(0.5)  # the subscriptions complete
            return
        time.sleep(0.1)


def _run_job(session: date, outcome: dict[str, object]) -> None:
    """The live session as the job runs it, in this process, recorded in the Dagster instance
    (``DAGSTER_HOME``) so that ``make dev`` shows the run and the live assets."""
    try:
        import dagster as dg

        from quantdag.definitions import defs
        from sensors.live import ATTEMPT_TAG, SESSION_TAG

        job = defs.get_job_def("live_session_job")
        result = job.execute_in_process(
            instance=dg.DagsterInstance.get(),
            tags={SESSION_TAG: session.isoformat(), ATTEMPT_TAG: "1"},
        )
        outcome["run_id"] = result.run_id
        outcome["success"] = result.success
    except Exception as exc:
        outcome["error"] = f"{type(exc).__name__}: {exc}"


def _report(server: object, cash: Decimal, outcome: dict[str, object], seconds: float) -> None:
    orders = server.orders()  # type: ignore[attr-defined]
    fills = server.fills()  # type: ignore[attr-defined]
    positions = server.positions()  # type: ignore[attr-defined]
    equity_now = Decimal(repr(server.broker.mark()[0]))  # type: ignore[attr-defined]
    frame = pl.DataFrame(
        [
            {
                "client_order_id": o["client_order_id"][:12],
                "symbol": o["symbol"],
                "side": o["side"],
                "qty": int(o["qty"]),
                "filled": int(o["filled_qty"]),
                "status": o["status"],
            }
            for o in orders
        ]
    )
    with pl.Config(tbl_rows=40, tbl_hide_dataframe_shape=True):
        print(f"\nThe day's orders ({len(orders)}):")
        print(frame if frame.height else "(none)")
    traded = sum(abs(f.quantity) * f.price for f in fills)
    costs = sum(f.commission + f.slippage for f in fills)
    equity = equity_now.quantize(Decimal("0.01"))
    print(
        f"\nFills: {len(fills)} ({traded:,.2f} USD traded, {costs:,.2f} USD of costs); "
        f"positions at the close: {positions or 'flat'}"
    )
    print(
        f"PnL: {equity - cash:+,.2f} USD ({(equity / cash - 1):+.4%}) on {cash:,.0f} USD, marked "
        "at the last closes, net of costs: one day of a model that showed no out-of-sample "
        "skill, evidence of nothing but the plumbing"
    )
    run_id = outcome.get("run_id")
    print(f"Replayed in {seconds:.0f} s.")
    if run_id:
        print(
            f"Dagster run {run_id}: `make dev`, then Runs (the session, bar by bar) and the "
            "`live` asset group (live_signals, live_orders, live_positions)."
        )


if __name__ == "__main__":
    sys.exit(main())
