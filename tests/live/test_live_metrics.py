"""The live session's Prometheus metrics: fed bar by bar during a replay on the local server
and scraped over HTTP as Prometheus would, parsed with the reference client's parser."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from pipelines.live.metrics import LiveMetrics
from pipelines.live.session import SessionResult
from quantdag.live import serve_metrics
from quantdag.testing.alpaca_server import LocalAlpaca
from quantdag.testing.live import Day, start_session, step_buckets, wait_subscribed
from tests.live.conftest import replay_server

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


@pytest.fixture
def limited_server(day: Day) -> Iterator[LocalAlpaca]:
    """The day's local Alpaca, answering with Alpaca's rate-limit headers."""
    with replay_server(day, rate_limit_per_min=100_000) as srv:
        yield srv


def test_a_replayed_session_is_scraped_with_its_metrics(
    day: Day, limited_server: LocalAlpaca, tmp_path: Path
) -> None:
    server = limited_server
    running = start_session(day, server, tmp_path / "live.db")
    metrics = LiveMetrics(
        minute_ages=running.session.minute_ages, result=lambda: running.session.result
    )
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
    # Read at the scrape from the running result, whatever bar the session was at.
    status = {
        s.labels["status"]: s.value
        for s in got["quantdag_live_order_status"]
        if s.name.endswith("_total")
    }
    assert status["pending"] >= orders  # every order is written before it is sent
    assert status.get("filled", 0) > 0
    sent = _value(got["quantdag_live_shares_sent"], "quantdag_live_shares_sent_total")
    filled = _value(got["quantdag_live_shares_filled"], "quantdag_live_shares_filled_total")
    assert 0 < filled <= sent
    assert _value(got["quantdag_live_fill_ratio"], "quantdag_live_fill_ratio") == pytest.approx(
        filled / sent
    )
    slippage = got["quantdag_live_slippage_bps"]
    fills = _value(got["quantdag_live_fills"], "quantdag_live_fills_total")
    assert _value(slippage, "quantdag_live_slippage_bps_count") == fills > 0
    # The fill model charges 1 bp slippage and a 1 bp half spread; fills land on later minutes
    # than the decided close, so single fills differ, but the mean is a plausible cost.
    mean = _value(got["quantdag_live_slippage_mean_bps"], "quantdag_live_slippage_mean_bps")
    assert -100 < mean < 100 and mean != 0
    remaining = _value(
        got["quantdag_live_broker_rate_limit_remaining"],
        "quantdag_live_broker_rate_limit_remaining",
    )
    assert 0 < remaining < 100_000
    assert (
        _value(
            got["quantdag_live_reconciliation_mismatches"],
            "quantdag_live_reconciliation_mismatches_total",
        )
        == 0
    )
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
    metrics.on_result(SessionResult(date(2019, 2, 15), 1, start_equity=1_000_000.0))
    text = metrics.exposition().decode()
    assert "quantdag_live_drawdown_ratio 0.006" in text and "quantdag_live_pnl_usd -6000.0" in text


def test_counters_move_by_what_changed_and_a_scrape_reads_the_running_result() -> None:
    """Counts the session keeps (statuses, broker errors, slippage, mismatches) become counters
    that move by the change since the last read, whether the session or a scrape reads."""
    result = SessionResult(date(2019, 2, 15), 1, start_equity=1_000_000.0)
    metrics = LiveMetrics(result=lambda: result)

    def scrape() -> dict[str, list[Any]]:
        text = metrics.exposition().decode()
        return {f.name: f.samples for f in text_string_to_metric_families(text)}

    result.order_statuses = {"pending": 3, "filled": 1}
    result.broker_errors = {"503": 2}
    result.slippage_bps = [(4.0, 100), (-2.0, 50)]
    result.shares_sent, result.shares_filled = 300, 150
    result.mismatches = 1
    result.halted = "positions the record does not explain"
    first = scrape()
    result.order_statuses = {"pending": 4, "filled": 3, "canceled": 1}
    result.slippage_bps = [(4.0, 100), (-2.0, 50), (10.0, 150)]
    result.shares_filled = 300
    second = scrape()
    status = first["quantdag_live_order_status"]
    assert _value(status, "quantdag_live_order_status_total", status="pending") == 3
    status = second["quantdag_live_order_status"]
    assert _value(status, "quantdag_live_order_status_total", status="pending") == 4
    assert _value(status, "quantdag_live_order_status_total", status="filled") == 3
    assert _value(status, "quantdag_live_order_status_total", status="canceled") == 1
    errors = second["quantdag_live_broker_errors"]
    assert _value(errors, "quantdag_live_broker_errors_total", cause="503") == 2
    assert _value(first["quantdag_live_fill_ratio"], "quantdag_live_fill_ratio") == 0.5
    assert _value(second["quantdag_live_fill_ratio"], "quantdag_live_fill_ratio") == 1.0
    slip = second["quantdag_live_slippage_bps"]
    assert _value(slip, "quantdag_live_slippage_bps_count") == 3
    mean = second["quantdag_live_slippage_mean_bps"]
    assert _value(mean, "quantdag_live_slippage_mean_bps") == (400 - 100 + 1500) / 300
    assert _value(slip, "quantdag_live_slippage_bps_bucket", le="5.0") == 2
    assert _value(first["quantdag_live_halted"], "quantdag_live_halted") == 1
    mismatches = second["quantdag_live_reconciliation_mismatches"]
    assert _value(mismatches, "quantdag_live_reconciliation_mismatches_total") == 1
