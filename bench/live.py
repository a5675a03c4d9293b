"""The live path's figures (`make bench BENCH=live`).

One real session of the shared IBKR 1-minute set (31 symbols, with 19 of them also traded
under a second name, ``<SYM>.C``, to make 50 symbols: the load is what is measured) replayed
by the local Alpaca server to the live session through real alpaca-py clients over loopback,
bar by bar (:mod:`quantdag.testing.live`); the model is a small LightGBM trained on the 15-minute
bars of the sessions before it.

- ``live.bar_to_order_p50_ms`` / ``_p99_ms``: for every order, from the moment its bar could
  close to the server receiving the order: the server sending the bar's last minute (when
  every symbol had one), else the clock reaching the bar's end plus the grace (the session waits
  that long for symbols that did not trade in the last minute). It spans the websocket, the
  aggregation, the features, the model, the account reads over REST, the decision path with its
  risk checks, the persistence of the decision, and the order's POST.
- ``live.compute_p99_ms``: the in-process part (signals and decision, without the REST calls).
- ``live.decisions_equal_backtest``: every order of the session equals the backtest engine's on
  the same bars with the same model, deciding at the same times.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import polars as pl

from pipelines.backtest.broker import BrokerConfig, CostModel
from pipelines.bars.aggregate import aggregate_bars
from pipelines.bars.validate import validate_bars
from pipelines.config import ColumnMap, FileSourceConfig, load_settings
from pipelines.data.sources import FileBarSource
from pipelines.execution.path import path_config
from pipelines.labels.partition import barrier_config
from pipelines.timeframes import Timeframe
from quantdag.project import DEFAULT_SETTINGS
from quantdag.testing.alpaca_server import LocalAlpaca
from quantdag.testing.live import (
    Day,
    backtest_of_times,
    bucket_decision_times,
    decided,
    minutes_recorded,
    pending_orders,
    quick_model,
    start_session,
    wait_for,
    wait_subscribed,
)

ONE = Timeframe.parse("1m")
FIFTEEN = Timeframe.parse("15m")
N_SYMBOLS = 50


def _minutes(shared: Path) -> pl.DataFrame:
    path = shared / "us_equities_1min_2025_2026_ibkr.parquet"
    cfg = FileSourceConfig(
        path=str(shared),
        pattern=path.name,
        format="parquet",
        columns=ColumnMap(symbol="symbol"),
        label="start",
    )
    raw = FileBarSource(cfg, ONE).read_file(path, None)
    return validate_bars(
        raw, universe=raw["symbol"].unique().to_list(), timeframe=ONE, session="regular"
    ).bars


def _fifty(frame: pl.DataFrame) -> pl.DataFrame:
    symbols = sorted(frame["symbol"].unique().to_list())
    extra = symbols[: N_SYMBOLS - len(symbols)]
    clones = frame.filter(pl.col("symbol").is_in(extra)).with_columns(
        symbol=pl.col("symbol") + ".C"
    )
    return pl.concat([frame, clones])


def build_day(shared: Path, session: date, history_sessions: int = 20) -> Day:
    minutes = _minutes(shared)
    days = minutes.select(
        pl.col("ts").dt.convert_time_zone("America/New_York").dt.date().alias("d")
    )["d"]
    minutes = minutes.with_columns(day=days)
    sessions = sorted(set(days.to_list()))
    before = [d for d in sessions if d < session][-history_sessions:]
    today = _fifty(minutes.filter(pl.col("day") == session).drop("day"))
    past = _fifty(minutes.filter(pl.col("day").is_in(before)).drop("day"))
    history = aggregate_bars(past, source=ONE, target=FIFTEEN, session="regular")
    today = today.filter(pl.col("symbol").is_in(history["symbol"].unique().to_list()))
    settings, _ = load_settings(DEFAULT_SETTINGS)
    from assets.backtest import BacktestConfig, configurations

    grid, selected = configurations(BacktestConfig(), settings)
    return Day(
        session,
        today,
        history,
        quick_model(history),
        grid[selected],
        path_config(settings.trading, strategy="model", bar_minutes=15, calendar="XNYS"),
        BrokerConfig(
            CostModel(slippage_bps=1.0, half_spread_bps=1.0, commission_bps=0.5),
            participation=0.05,
            max_leverage=1.0,
        ),
        barrier_config(settings.labels),
        Decimal("1000000"),
    )


def replay(day: Day) -> dict[str, object]:
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalAlpaca(
            day.minutes.select("symbol", "ts", "open", "high", "low", "close", "volume"),
            cash=day.cash,
            fill=day.fills,
            fill_minutes=15,
        ) as server,
    ):
        running = start_session(day, server, Path(tmp) / "live.db")
        wait_subscribed(server, 0)
        engine = running.engine
        buckets = running.session.agg.buckets
        symbols = set(day.symbols)
        closeable: dict[object, int] = {}
        for start, end in buckets:
            inside = day.minutes.filter((pl.col("ts") >= start) & (pl.col("ts") < end))
            if inside.height == 0:
                continue
            # Minute by minute, as they come in a session (the session persists each minute
            # while it waits for the next); the bar's last minute then closes it.
            m = start + timedelta(minutes=1)
            while m < end:
                server.advance(m)
                before = day.minutes.filter(pl.col("ts") < m).height
                wait_for(
                    "a minute's bars",
                    lambda e=m, n=before: minutes_recorded(engine, e) >= n,
                    120,
                )
                m += timedelta(minutes=1)
            expected = day.minutes.filter(pl.col("ts") < end).height
            server.advance(end)
            wait_for(
                "the bucket's minutes",
                lambda e=end, n=expected: minutes_recorded(engine, e) >= n,
                120,
            )
            last = set(inside.filter(pl.col("ts") == end - timedelta(minutes=1))["symbol"])
            if last >= symbols:
                closeable[start] = server.bar_sent_ns[end]
            else:
                closeable[start] = time.perf_counter_ns()
                server.advance(end + day.grace)
            wait_for("the decision", lambda s=start: s in decided(engine), 120)
            wait_for("the orders", lambda: not pending_orders(engine), 120)
        server.advance(buckets[-1][1] + timedelta(minutes=5))
        running.thread.join(60)
        if running.error:
            raise running.error[0]
        by_cid = {
            o["client_order_id"]: d["bar_ts"]
            for d in running.session.store.decisions(day.session)
            for o in d["orders"]
        }
        latencies = [
            (r["ns"] - closeable[by_cid[r["client_order_id"]]]) / 1e6
            for r in server.orders_received
            if r["client_order_id"] in by_cid
        ]
        backtest, _ = backtest_of_times(day, bucket_decision_times(day.minutes, buckets))
        live = sorted(by_cid)
        equal = live == sorted(o.client_order_id for o in backtest.orders)
        compute = running.session.result.compute_ms
    return {
        "live.symbols": len(day.symbols),
        "live.bars": len(compute),
        "live.orders": len(latencies),
        "live.bar_to_order_p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "live.bar_to_order_p99_ms": round(float(np.percentile(latencies, 99)), 2),
        "live.compute_p50_ms": round(float(np.percentile(compute, 50)), 2),
        "live.compute_p99_ms": round(float(np.percentile(compute, 99)), 2),
        "live.decisions_equal_backtest": equal,
        "live.session": day.session.isoformat(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, required=True)
    parser.add_argument("--session", type=date.fromisoformat, default=date(2026, 2, 18))
    args = parser.parse_args()
    day = build_day(args.shared, args.session)
    print(json.dumps(replay(day)))


if __name__ == "__main__":
    main()
