"""The live session's Prometheus metrics: fed bar by bar during a replay on the local server
and scraped over HTTP as Prometheus would, parsed with the reference client's parser."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from pipelines.live.metrics import LiveMetrics
from quantdag.live import serve_metrics
from quantdag.testing.alpaca_server import LocalAlpaca
from quantdag.testing.live import Day, start_session, step_buckets, wait_subscribed

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class _Serve:
    metrics_port: int
    metrics_addr: str = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> dict[str, list[Any]]:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _value(samples: list[Any], name: str, **labels: str) -> float:
    (value,) = [s.value for s in samples if s.name == name and s.labels == labels]
    return float(value)


def test_a_replayed_session_is_scraped_with_its_metrics(
    day: Day, server: LocalAlpaca, tmp_path: Path
) -> None:
    running = start_session(day, server, tmp_path / "live.db")
    metrics = LiveMetrics(minute_ages=running.session.minute_ages)
    keep = running.session._observe

    def observe(outcome: Any) -> None:
        metrics.on_bar(outcome, 15)
        metrics.on_result(running.session.result)
        assert keep is not None
        keep(outcome)

    running.session._observe = observe
    logged: list[str] = []
    with serve_metrics(metrics, _Serve(_free_port()), logged.append) as port:
        wait_subscribed(server, 0)
        buckets = running.session.agg.buckets
        step_buckets(server, running.engine, day.minutes, buckets[:6], alive=running.alive)
        got = _scrape(port)
        running.stop.set()
        running.thread.join(30)
    assert logged == [f"metrics on http://127.0.0.1:{port}/metrics"]
    decided = running.session.result.bars
    assert decided >= 5
    assert _value(got["quantdag_live_bars_decided"], "quantdag_live_bars_decided_total") == decided
    latency = got["quantdag_live_bar_to_order_seconds"]
    sent = _value(latency, "quantdag_live_bar_to_order_seconds_count")
    assert 0 < sent <= decided  # bars that sent orders
    ages = {s.labels["symbol"]: s.value for s in got["quantdag_live_bar_age_seconds"]}
    assert set(ages) == set(day.symbols)
    assert all(-60 <= a <= 15 * 60 for a in ages.values())  # fresh minutes, replay clock
    equity = _value(got["quantdag_live_equity_usd"], "quantdag_live_equity_usd")
    assert equity == pytest.approx(running.session.result.start_equity, rel=0.01)
    assert _value(got["quantdag_live_trading_state"], "quantdag_live_trading_state") == 0
    assert _value(got["quantdag_live_kill_switch"], "quantdag_live_kill_switch") == 0
    orders = sum(s.value for s in got["quantdag_live_orders"] if s.name.endswith("_total"))
    assert orders > 0
    with pytest.raises(requests.ConnectionError):  # no longer served
        requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_a_taken_metrics_port_does_not_stop_the_session_and_says_so() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        logged: list[str] = []
        with serve_metrics(LiveMetrics(), _Serve(port), logged.append) as served:
            assert served == 0
    assert (
        logged and logged[0].startswith("METRICS NOT SERVED") and "live.metrics_port" in logged[0]
    )


def test_drawdown_counts_from_the_start_equity() -> None:
    """A session that opens at 1,000,000 and is at 994,000 at its first bar is 0.6% down."""
    from types import SimpleNamespace

    metrics = LiveMetrics()
    outcome = SimpleNamespace(
        compute_ms=1.0,
        sent_at=None,
        bar_ts=None,
        orders=[],
        events=[],
        equity=994_000.0,
        gross=0.0,
        net=0.0,
        state="ACTIVE",
        kill_switch=False,
    )
    metrics.on_bar(outcome, 15)
    metrics.on_result(
        SimpleNamespace(
            start_equity=1_000_000.0,
            halted=None,
            fills=0,
            reconnects=0,
            backfilled=0,
            quarantined=0,
            late=0,
        )
    )
    text = metrics.exposition().decode()
    assert "quantdag_live_drawdown_ratio 0.006" in text and "quantdag_live_pnl_usd -6000.0" in text
