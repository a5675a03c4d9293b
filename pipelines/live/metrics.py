"""The live session's metrics, in one Prometheus registry (:class:`LiveMetrics`).

Names carry their unit (``_seconds``, ``_usd``, ``_ratio``; counters end ``_total``); every
series is labelled by nothing but what its help text names. The session feeds them from each
decided bar (:meth:`LiveMetrics.on_bar`, a :class:`~pipelines.live.session.BarOutcome`) and its
running :class:`~pipelines.live.session.SessionResult` (:meth:`LiveMetrics.on_result`); the
age of each symbol's newest minute is read at scrape time from the session (``minute_ages``),
so a stalled stream shows without a bar being decided.

=========================================== ========= =============================================
name                                        type      what
=========================================== ========= =============================================
quantdag_live_bar_age_seconds{symbol}       gauge     session clock minus the end of the newest
                                                      minute received of ``symbol``
quantdag_live_bar_to_order_seconds          histogram a bar's end to its orders being out (session
                                                      clock; bars with orders only)
quantdag_live_decide_compute_seconds        histogram features, model and decision of one bar
                                                      (in process, no I/O)
quantdag_live_bars_decided_total            counter   bars decided
quantdag_live_orders_total{intent}          counter   orders decided, by intent kind (target,
                                                      flatten)
quantdag_live_refusals_total{rule}          counter   orders the risk checks refused, by rule
quantdag_live_fills_total                   counter   executions booked
quantdag_live_reconnects_total              counter   data-stream reconnects after a stall
quantdag_live_backfilled_minutes_total      counter   minutes fetched over REST (gaps, stalls)
quantdag_live_quarantined_minutes_total     counter   minutes refused by the validation rules
quantdag_live_late_minutes_total            counter   minutes after their bar was decided
quantdag_live_equity_usd                    gauge     the account's equity at the last decision
quantdag_live_pnl_usd                       gauge     equity minus the session's start equity
quantdag_live_drawdown_ratio                gauge     1 - equity / the session's peak equity
quantdag_live_gross_exposure_usd            gauge     sum of abs(position x last close)
quantdag_live_net_exposure_usd              gauge     sum of position x last close
quantdag_live_trading_state                 gauge     0 ACTIVE, 1 REDUCING, 2 HALTED
quantdag_live_kill_switch                   gauge     1 while the kill switch is tripped
quantdag_live_halted                        gauge     1 once the session failed closed
                                                      (reconciliation found what it cannot explain)
quantdag_live_reconciliation_mismatches     counter   positions or open orders a reconciliation
_total                                                found the record does not explain
quantdag_live_order_status_total{status}    counter   orders reaching each status (pending,
                                                      new, accepted, partially_filled, filled,
                                                      canceled, rejected, not_sent, never_sent...)
quantdag_live_shares_sent_total             counter   shares of the orders the broker took from
                                                      this attempt (run)
quantdag_live_shares_filled_total           counter   shares of the fills of those orders
quantdag_live_fill_ratio                    gauge     shares filled / shares sent, this attempt
quantdag_live_slippage_bps                  histogram each fill's price against its bar's close
                                                      when decided, in basis points, signed so
                                                      that + is a cost (buy above, sell below);
                                                      no _sum (its buckets go below zero)
quantdag_live_slippage_mean_bps             gauge     the session's share-weighted mean of the same
quantdag_live_broker_errors_total{cause}    counter   broker calls that failed (each attempt), by
                                                      HTTP status or exception type
quantdag_live_broker_rate_limit_remaining   gauge     the broker's latest X-RateLimit-Remaining
=========================================== ========= =============================================

The fill ratio, the mean slippage and the rate limit are NaN until known (no order sent, no
fill, no broker answer with the header): an alert comparing them does not fire on nothing.

Example::

    metrics = LiveMetrics(minute_ages=session.minute_ages)
    metrics.on_bar(outcome, bar_minutes=15)
    metrics.on_result(session.result)
    text = metrics.exposition()  # the Prometheus text format

``LiveMetrics(result=lambda: session.result)`` also reads the running result at every scrape, so
what happens between decided bars (a reconciliation at start-up that fails closed, fills of
the last bar) shows without waiting for the next bar.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

STATES = {"ACTIVE": 0, "REDUCING": 1, "HALTED": 2}
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_COMPUTE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
EXPECTED_CAUSES = ("429", "500", "502", "503", "504", "ConnectionError", "ReadTimeout")
"""Broker-error causes exported at 0 before any occurs (others appear when they first do)."""
_SLIPPAGE_BUCKETS = (-50.0, -20.0, -10.0, -5.0, -2.0, 0.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
_RESULT_COUNTERS = {
    "fills": "fills",
    "reconnects": "reconnects",
    "backfilled": "backfilled",
    "quarantined": "quarantined",
    "late": "late",
    "mismatches": "mismatches",
    "shares_sent": "shares_sent",
    "shares_filled": "shares_filled",
}


class _MinuteAges(Collector):
    """``quantdag_live_bar_age_seconds``, read from the session when scraped."""

    def __init__(self, ages: Callable[[], Mapping[str, float]]) -> None:
        self.ages = ages

    def collect(self) -> Any:
        family = GaugeMetricFamily(
            "quantdag_live_bar_age_seconds",
            "Session clock minus the end of the newest minute received, by symbol (s)",
            labels=["symbol"],
        )
        for symbol, age in sorted(self.ages().items()):
            family.add_metric([symbol], age)
        yield family


class _Refresh(Collector):
    """Registered first, so collected first: brings the metrics up to the session's running
    result before the others are read."""

    def __init__(self, refresh: Callable[[], None]) -> None:
        self.refresh = refresh

    def collect(self) -> Any:
        self.refresh()
        return iter(())


class LiveMetrics:
    """The live session's metrics in their own registry (``registry``), fed by the session
    (see the module docstring). ``minute_ages()``: symbol -> seconds since its newest minute
    ended, on the session clock (None: the gauge is not exported); ``result()``: the session's
    running :class:`~pipelines.live.session.SessionResult`, read at every scrape (None: only
    what :meth:`on_result` is given)."""

    def __init__(
        self,
        minute_ages: Callable[[], Mapping[str, float]] | None = None,
        result: Callable[[], Any] | None = None,
    ) -> None:
        r = self.registry = CollectorRegistry()
        self._lock = threading.Lock()
        if result is not None:
            r.register(_Refresh(lambda: self.on_result(result())))
        if minute_ages is not None:
            r.register(_MinuteAges(minute_ages))
        self.bar_to_order = Histogram(
            "quantdag_live_bar_to_order_seconds",
            "A bar's end to its orders being out, session clock (s)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.compute = Histogram(
            "quantdag_live_decide_compute_seconds",
            "Features, model and decision of one bar, in process (s)",
            buckets=_COMPUTE_BUCKETS,
            registry=r,
        )
        self.bars = Counter("quantdag_live_bars_decided", "Bars decided", registry=r)
        self.orders = Counter(
            "quantdag_live_orders", "Orders decided, by intent kind", ["intent"], registry=r
        )
        self.refusals = Counter(
            "quantdag_live_refusals",
            "Orders the risk checks refused, by rule",
            ["rule"],
            registry=r,
        )
        self._counters = {
            "fills": Counter("quantdag_live_fills", "Executions booked", registry=r),
            "reconnects": Counter(
                "quantdag_live_reconnects", "Data-stream reconnects after a stall", registry=r
            ),
            "backfilled": Counter(
                "quantdag_live_backfilled_minutes",
                "Minutes fetched over REST (gaps, stalls)",
                registry=r,
            ),
            "quarantined": Counter(
                "quantdag_live_quarantined_minutes",
                "Minutes refused by the validation rules",
                registry=r,
            ),
            "late": Counter(
                "quantdag_live_late_minutes", "Minutes after their bar was decided", registry=r
            ),
            "mismatches": Counter(
                "quantdag_live_reconciliation_mismatches",
                "Positions or open orders a reconciliation found the record does not explain",
                registry=r,
            ),
            "shares_sent": Counter(
                "quantdag_live_shares_sent",
                "Shares of the orders the broker took from this attempt",
                registry=r,
            ),
            "shares_filled": Counter(
                "quantdag_live_shares_filled", "Shares of the fills of those orders", registry=r
            ),
        }
        self._seen = dict.fromkeys(_RESULT_COUNTERS, 0)
        self.order_status = Counter(
            "quantdag_live_order_status", "Orders reaching each status", ["status"], registry=r
        )
        self.broker_errors = Counter(
            "quantdag_live_broker_errors",
            "Broker calls that failed (each attempt), by HTTP status or exception type",
            ["cause"],
            registry=r,
        )
        # Exported at 0 from the start, so that the first errors of a cause are an increase.
        for cause in EXPECTED_CAUSES:
            self.broker_errors.labels(cause)
        self._seen_labelled: dict[tuple[str, str], int] = {}
        self.fill_ratio = Gauge(
            "quantdag_live_fill_ratio", "Shares filled / shares sent by this attempt", registry=r
        )
        self.fill_ratio.set(math.nan)  # not known yet: no sample compares true
        self.slippage = Histogram(
            "quantdag_live_slippage_bps",
            "Fill price against its bar's close when decided, bps, + is a cost",
            buckets=_SLIPPAGE_BUCKETS,
            registry=r,
        )
        self._slippage_seen = 0
        self.slippage_mean = Gauge(
            "quantdag_live_slippage_mean_bps",
            "Share-weighted mean fill slippage this session, bps, + is a cost",
            registry=r,
        )
        self.slippage_mean.set(math.nan)  # not known yet: no sample compares true
        self.rate_limit_remaining = Gauge(
            "quantdag_live_broker_rate_limit_remaining",
            "The broker's latest X-RateLimit-Remaining",
            registry=r,
        )
        self.rate_limit_remaining.set(math.nan)  # not known yet: no sample compares true
        self.equity = Gauge(
            "quantdag_live_equity_usd", "Equity at the last decision (USD)", registry=r
        )
        self.pnl = Gauge("quantdag_live_pnl_usd", "Equity minus the start equity (USD)", registry=r)
        self.drawdown = Gauge(
            "quantdag_live_drawdown_ratio", "1 - equity / the session's peak equity", registry=r
        )
        self.gross = Gauge(
            "quantdag_live_gross_exposure_usd",
            "Sum of abs(position x last close) (USD)",
            registry=r,
        )
        self.net = Gauge(
            "quantdag_live_net_exposure_usd", "Sum of position x last close (USD)", registry=r
        )
        self.state = Gauge(
            "quantdag_live_trading_state", "0 ACTIVE, 1 REDUCING, 2 HALTED", registry=r
        )
        self.kill_switch = Gauge(
            "quantdag_live_kill_switch", "1 while the kill switch is tripped", registry=r
        )
        self.halted = Gauge("quantdag_live_halted", "1 once the session failed closed", registry=r)
        self._peak = 0.0
        self._equity: float | None = None

    def on_bar(self, outcome: Any, bar_minutes: int) -> None:
        """One decided bar (a :class:`~pipelines.live.session.BarOutcome`)."""
        with self._lock:
            self._on_bar(outcome, bar_minutes)

    def _on_bar(self, outcome: Any, bar_minutes: int) -> None:
        self.bars.inc()
        self.compute.observe(outcome.compute_ms / 1e3)
        if outcome.sent_at is not None:
            end = outcome.bar_ts + timedelta(minutes=bar_minutes)
            self.bar_to_order.observe(max((outcome.sent_at - end).total_seconds(), 0.0))
        for order in outcome.orders:
            self.orders.labels(str(order["intent"]).split(":", 1)[0]).inc()
        for event in outcome.events:
            if event.kind == "refused":
                self.refusals.labels(event.rule).inc()
        self.equity.set(outcome.equity)
        self._equity = outcome.equity
        self._peak = max(self._peak, outcome.equity)
        self.drawdown.set(1.0 - outcome.equity / self._peak if self._peak > 0 else 0.0)
        self.gross.set(outcome.gross)
        self.net.set(outcome.net)
        self.state.set(STATES.get(outcome.state, -1))
        self.kill_switch.set(1.0 if outcome.kill_switch else 0.0)

    def on_result(self, result: Any) -> None:
        """The session's running totals (a :class:`~pipelines.live.session.SessionResult`):
        counters move by what changed since the last call."""
        with self._lock:  # the session's thread and a scrape may both call it
            self._on_result(result)

    def _on_result(self, result: Any) -> None:
        for key, attr in _RESULT_COUNTERS.items():
            now = int(getattr(result, attr))
            if now > self._seen[key]:
                self._counters[key].inc(now - self._seen[key])
                self._seen[key] = now
        for name, family, counts in (
            ("status", self.order_status, result.order_statuses),
            ("cause", self.broker_errors, result.broker_errors),
        ):
            for label, count in dict(counts).items():
                seen = self._seen_labelled.get((name, label), 0)
                if count > seen:
                    family.labels(label).inc(count - seen)
                    self._seen_labelled[(name, label)] = count
        slippage = list(result.slippage_bps)
        for bps, _ in slippage[self._slippage_seen :]:
            self.slippage.observe(bps)
        self._slippage_seen = max(self._slippage_seen, len(slippage))
        shares = sum(q for _, q in slippage)
        if shares > 0:
            self.slippage_mean.set(sum(b * q for b, q in slippage) / shares)
        if result.shares_sent > 0:
            self.fill_ratio.set(result.shares_filled / result.shares_sent)
        if result.rate_limit_remaining is not None:
            self.rate_limit_remaining.set(result.rate_limit_remaining)
        start = result.start_equity
        if start == start:  # known (not NaN): the day's peak starts there
            self._peak = max(self._peak, start)
            if self._equity is not None:
                self.pnl.set(self._equity - start)
                self.drawdown.set(1.0 - self._equity / self._peak if self._peak > 0 else 0.0)
        self.halted.set(1.0 if result.halted else 0.0)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)
