"""One live trading session: reconcile, warm, stream, decide with the one path, send, persist.

:class:`LiveSession` is the loop the ``live_session_job`` runs (through :mod:`quantdag.live`):

1. **Reconcile** with the broker before anything else: every order we recorded and did not see
   end is asked for by client id (fills learnt there are booked once); an order we wrote but
   never sent is sent if its bar is still current, else marked ``never_sent``; an open order or
   a position the record does not explain **fails closed**: the kill switch is tripped with the
   reason, nothing is decided or sent, and a person must look (nothing is guessed).
2. **Warm** the features on stored history, then the session's minutes so far (those already
   received, then the broker's REST bars for the gap), deciding only the bars after the last
   decided one (a restart resumes from the persisted :class:`PathState`).
3. **Stream** minute bars into :class:`~pipelines.live.aggregate.LiveAggregator`; at each
   closed bar: signals (:mod:`pipelines.live.signals`), the broker's account, positions and
   open orders, the persisted kill switch, then :func:`pipelines.execution.path.decide` (the
   backtest's own), the decision and its orders persisted *before* they are sent, cancels sent
   and confirmed before the orders that replace them, each order sent with its deterministic
   client id (a retried POST the broker already took is looked up, never doubled).
4. **Watch**: no bar message for ``data_timeout_s`` (wall seconds) while a minute is overdue
   by the session clock -> reconnect and backfill the missed minutes over REST; trade updates
   silent -> the REST reads at every bar are the truth anyway; a reconciliation every
   ``reconcile_every`` bars.
5. **End** at the session's close, or when ``stop`` is set (a terminate): working orders are
   cancelled, kept or flattened as configured (``on_stop``).

The clock is a parameter (the broker's replay clock locally, the system clock in paper and
live): nothing here reads the wall clock except through ``wall`` (heartbeats, timeouts).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import numpy as np
import polars as pl

from pipelines.backtest.model_backtest import closing_bars
from pipelines.backtest.strategy import ModelStrategy
from pipelines.bars.calendar import sessions_between
from pipelines.execution.batch import BarBatch
from pipelines.execution.orders import Order
from pipelines.execution.path import (
    Account,
    Decision,
    PathConfig,
    PathState,
    Signals,
    WorkingOrder,
    decide,
)
from pipelines.live.aggregate import LiveAggregator, MinuteBar, check_minute
from pipelines.live.broker import (
    BrokerOrder,
    BrokerPort,
    FeedEvent,
    FeedPort,
    OrderRefused,
    TradeUpdate,
)
from pipelines.live.signals import ModelSignals
from pipelines.live.store import LiveStore
from pipelines.risk.events import RiskEvent, TradingState
from pipelines.risk.killswitch import KillSwitch

log = logging.getLogger(__name__)

MINUTE = timedelta(minutes=1)
SEND_THREADS = 8
Phase = Literal["reconciling", "warming", "trading", "closed", "stopped", "halted", "superseded"]
ENDED: frozenset[str] = frozenset({"closed", "stopped", "superseded"})
OnStop = Literal["cancel", "keep", "flatten"]


class SessionError(RuntimeError):
    """The session cannot run as configured (say what to change)."""


class _BookMoving(Exception):
    """Fills kept coming while positions and open orders were read: no consistent view."""


class SessionSuperseded(SessionError):
    """A newer attempt of the session has started: this one stops without touching orders."""


@dataclass(frozen=True)
class SessionConfig:
    """One session of the live path.

    ``session`` the New York trading date; ``attempt`` the run's attempt (1, 2, ... after a
    relaunch); ``minutes`` the strategy's bar (e.g. 15); ``grace_s`` how long after a bar's
    end its bucket waits for the minutes of symbols that have not sent their last one (seconds
    of the session clock); ``data_timeout_s`` the silence of the bar stream (wall seconds,
    while a minute is overdue) after which it is reconnected and the gap backfilled over REST;
    ``reconcile_every`` bars between reconciliations; ``cancel_timeout_s`` (wall seconds) the
    wait for a cancel's confirmation before the order that replaces it is sent anyway
    re-netted, or skipped;
    ``on_stop`` what a stop does with working orders (``cancel``, ``keep``, ``flatten``);
    ``dry_run`` records the decisions and sends nothing. ``heartbeat_s``: wall seconds between
    heartbeats, written by a thread of their own so that a long step (warming up, a slow
    broker) does not silence them; ``hang_s``: the heartbeats stop when the loop has made no
    progress for this many wall seconds, so that a hung session reads as dead (e.g. 120).

    Example: ``SessionConfig(session=date(2019, 2, 15), attempt=1, symbols=("AAPL", "SPY"),
    minutes=15)``.
    """

    session: date
    attempt: int
    symbols: tuple[str, ...]
    minutes: int
    calendar: str = "XNYS"
    session_kind: Literal["regular", "extended"] = "regular"
    grace_s: float = 2.0
    data_timeout_s: float = 90.0
    reconcile_every: int = 4
    cancel_timeout_s: float = 10.0
    on_stop: OnStop = "cancel"
    dry_run: bool = False
    flat_at_close: bool = True
    poll_s: float = 0.02
    heartbeat_s: float = 5.0
    hang_s: float = 120.0


@dataclass(frozen=True)
class BarOutcome:
    """What one decided bar did, for the run's observations."""

    bar_ts: datetime
    decided_at: datetime
    signals: list[dict[str, Any]]
    orders: list[dict[str, Any]]
    cancels: list[str]
    positions: dict[str, int]
    equity: float
    state: str
    events: list[RiskEvent]
    compute_ms: float
    sent_at: datetime | None = None  # when its orders were out (session clock); None: none
    gross: float = 0.0  # USD, the positions at the last closes when decided
    net: float = 0.0
    kill_switch: bool = False


@dataclass
class SessionResult:
    """The session's end: bars decided, orders sent, fills booked, the start and end equity,
    the trading state, how it ended and any fail-closed reason."""

    session: date
    attempt: int
    bars: int = 0
    orders: int = 0
    fills: int = 0
    start_equity: float = float("nan")
    end_equity: float = float("nan")
    state: str = "ACTIVE"
    ended: str = ""
    halted: str | None = None
    reconnects: int = 0
    backfilled: int = 0
    late: int = 0
    duplicates: int = 0
    quarantined: int = 0
    gaps: int = 0
    stalls: list[tuple[float, datetime]] = field(default_factory=list)  # (silent s, at)
    compute_ms: list[float] = field(default_factory=list)
    mismatches: int = 0  # what reconciliations found the record does not explain
    shares_sent: int = 0  # shares of the orders the broker took from this attempt
    shares_filled: int = 0  # shares of those orders' fills booked
    # per fill: (bps against its bar's close when decided, signed so that + is a cost; shares)
    slippage_bps: list[tuple[float, int]] = field(default_factory=list)
    order_statuses: dict[str, int] = field(default_factory=dict)  # orders reaching each status
    broker_errors: dict[str, int] = field(default_factory=dict)  # broker calls failed, by cause
    rate_limit_remaining: int | None = None  # the broker's last X-RateLimit-Remaining

    @property
    def pnl(self) -> float:
        return self.end_equity - self.start_equity


Heartbeat = Callable[[str, datetime | None, str], None]


class LiveSession:
    """See the module docstring. ``history`` holds earlier bars of the strategy's timeframe
    (validated, stored) to warm the features on; ``heartbeat(phase, last_bar, state)`` is
    called every ``heartbeat_s`` wall seconds (while the loop makes progress) and at each phase
    change; ``lease()`` says whether this attempt is still the session's newest: checked
    before anything is sent or cancelled, so that an attempt a relaunch replaced (a worker
    that hung, then woke) raises :class:`SessionSuperseded` instead of trading beside it."""

    def __init__(
        self,
        config: SessionConfig,
        *,
        path: PathConfig,
        strategy: ModelStrategy,
        signals: ModelSignals,
        broker: BrokerPort,
        feed: FeedPort,
        store: LiveStore,
        switch: KillSwitch,
        clock: Callable[[], datetime],
        history: pl.DataFrame,
        heartbeat: Heartbeat | None = None,
        observe: Callable[[BarOutcome], None] | None = None,
        wall: Callable[[], float] = time.monotonic,
        lease: Callable[[], bool] | None = None,
    ) -> None:
        if path.strategy != strategy.name:
            path = replace(path, strategy=strategy.name)
        if path.bar_minutes != config.minutes:
            raise SessionError(
                f"the path is configured for {path.bar_minutes}-minute bars, the session for "
                f"{config.minutes}: use one timeframe"
            )
        self.config = config
        self.path = path
        self.strategy = strategy
        self.signals = signals
        self.broker = broker
        self.feed = feed
        self.store = store
        self.switch = switch
        self.clock = clock
        self.history = history
        self._heartbeat = heartbeat
        self._lease = lease
        self._observe = observe
        self._wall = wall
        self.symbols = tuple(sorted(config.symbols))
        self.ids = {s: i for i, s in enumerate(self.symbols)}
        cal = sessions_between(config.calendar, config.session, config.session)
        window = cal.window(config.session_kind)
        if window.height == 0:
            raise SessionError(f"{config.session} is not a {config.calendar} session")
        self.open, self.close = window["start"][0], window["end"][0]
        self.agg = LiveAggregator(
            self.symbols,
            minutes=config.minutes,
            window=(self.open, self.close),
            session=config.session_kind,
            grace=timedelta(seconds=config.grace_s),
        )
        starts = pl.Series("ts", [s for s, _ in self.agg.buckets], pl.Datetime("us", "UTC"))
        self.closing = (
            closing_bars(starts, config.minutes, config.calendar, config.session_kind)
            if config.flat_at_close
            else frozenset()
        )
        self.state = PathState.create(self.symbols, strategy, path)
        self.result = SessionResult(config.session, config.attempt)
        self._last_close = np.zeros(len(self.symbols))
        self._decided_at_close: dict[str, float] = {}  # client_order_id -> its bar's close
        self._sent_here: set[str] = set()  # client_order_ids this attempt sent
        self._last_bar: datetime | None = None  # the newest decided bar
        self._last_minute: datetime | None = None  # the newest minute received (its start)
        self._newest: dict[str, datetime] = {}  # the newest minute received, by symbol
        self._phase: Phase = "reconciling"
        self._beat_lock = threading.Lock()
        self._progress_at = wall()
        self._pulse_stop = threading.Event()
        self._pulse_error: BaseException | None = None
        self._withheld = False
        self._unsaved: list[tuple[MinuteBar, str, bool]] = []
        self._pool = ThreadPoolExecutor(max_workers=SEND_THREADS, thread_name_prefix="orders")
        self._heard = wall()  # when the streams last sent anything (wall seconds)
        self._stop = threading.Event()  # run()'s, once it runs
        self._bars_since_reconcile = 0

    # -- the loop ----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> SessionResult:
        """Run the session until its close or ``stop``; returns what it did. Raises
        :class:`SessionSuperseded` (having touched no order) if a newer attempt started."""
        self._beat("reconciling")
        pulse = threading.Thread(target=self._pulse, name="live-heartbeat", daemon=True)
        pulse.start()
        try:
            return self._run(stop)
        except SessionSuperseded:
            self._beat("superseded")
            raise
        finally:
            self._sync_counts()
            self._pulse_stop.set()
            pulse.join()
            self._pool.shutdown(wait=True)

    def _run(self, stop: threading.Event) -> SessionResult:
        self._stop = stop
        self._restore()
        self.reconcile(startup=True)
        self.result.start_equity = self.broker.account().equity
        self._beat("warming")
        self._warm()
        self.feed.start(self.symbols)
        try:
            self._beat("halted" if self.result.halted else "trading")
            while not stop.is_set():
                self._tick()
                self._sync_counts()
                event = self.feed.get(self.config.poll_s)
                if event is not None:
                    if event.kind != "trade":
                        self._heard = self._wall()
                    self._on_event(event)
                else:
                    self._flush()
                now = self.clock()
                for bars in self.agg.closed(now):
                    self._on_bars(bars, now)
                if self.agg.next_close is None:
                    break
                self._watch(now)
            stopped = stop.is_set()
        finally:
            self.feed.stop()
            self._flush()
        if stopped:
            self._on_stop()
            self.result.ended = "stopped"
        else:
            self.result.ended = "close"
        self._drain()
        self.result.end_equity = self.broker.account().equity
        self.result.state = self.state.risk.state.value
        self._sync_counts()
        self._beat("stopped" if stopped else "closed")
        return self.result

    def _tick(self) -> None:
        """The loop made progress (the heartbeat thread beats only while it does)."""
        self._progress_at = self._wall()
        if self._pulse_error is not None:
            raise SessionError(
                f"the heartbeat could not be written: {self._pulse_error!r}"
            ) from self._pulse_error

    def _beat(self, phase: Phase) -> None:
        """A phase change, written at once (the heartbeat thread repeats it)."""
        self._tick()
        with self._beat_lock:
            if self._phase in ENDED:
                return
            self._phase = phase
            if self._heartbeat is not None:
                self._heartbeat(phase, self._last_bar, self.state.risk.state.value)

    def _pulse(self) -> None:
        """Every ``heartbeat_s``: the current phase, unless the loop has hung for ``hang_s``."""
        while not self._pulse_stop.wait(self.config.heartbeat_s):
            with self._beat_lock:
                if self._phase in ENDED or self._heartbeat is None:
                    return
                silent = self._wall() - self._progress_at
                if silent > self.config.hang_s:
                    if not self._withheld:
                        log.error(
                            "the session loop has made no progress for %.0f s (limit %.0f s): "
                            "heartbeats withheld, so that it reads as dead",
                            silent,
                            self.config.hang_s,
                        )
                    self._withheld = True
                    continue
                self._withheld = False
                try:
                    self._heartbeat(self._phase, self._last_bar, self.state.risk.state.value)
                except Exception as exc:  # handed to the loop, which raises it
                    self._pulse_error = exc
                    return

    def _check_lease(self) -> None:
        if self._lease is not None and not self._lease():
            raise SessionSuperseded(
                f"session {self.config.session} attempt {self.config.attempt}: a newer attempt "
                "has started; this one stops without sending or cancelling anything"
            )

    # -- start-up ----------------------------------------------------------------------------

    def _restore(self) -> None:
        last = self.store.last_state()
        if last is None:
            return
        bar_ts, state = last
        if state.symbols != self.symbols:
            raise SessionError(
                f"the recorded live state trades {len(state.symbols)} symbols "
                f"({', '.join(state.symbols[:5])}...), the universe now {len(self.symbols)}: "
                "a universe change needs a new strategy name (or an empty live record)"
            )
        self.state = state
        if bar_ts >= self.open:
            self._last_bar = bar_ts

    def _warm(self) -> None:
        """Features on history, then this session's minutes so far; bars after the last
        decided one are decided (a restart catching up)."""
        if self.history.height:
            past = self.history.filter(pl.col("ts") < self.open)
            self.signals.warm(past)
            self._tick()
            self._prime(past)
        recorded = self.store.minutes(self.config.session)
        for bar in recorded:
            self.agg.add(bar)
            self._seen_minute(bar)
        now = self.clock()
        # Every minute of the buckets not yet decided is asked for again (the crash may have
        # come in the middle of a minute's symbols); those already held are duplicates.
        gap_start = self.open
        if self._last_bar is not None:
            k = self.agg.bucket_of(self._last_bar)
            gap_start = self.agg.buckets[k][1] if k is not None else self.open
        self._backfill(gap_start, min(now, self.close))
        self._tick()
        for bars in self.agg.closed(now):
            ts = bars["ts"][0]
            if self._last_bar is not None and ts <= self._last_bar:
                self.signals.on_bars(bars)  # the features of a bar decided before the restart
                self._remember_closes(bars)
            else:
                self._on_bars(bars, now)

    def _prime(self, past: pl.DataFrame) -> None:
        """Run the decision path once on the last stored bar, on a throwaway state and an
        account of nothing, so that the first real bar does not pay for loading the compiled
        kernels and the libraries' first calls."""
        if past.height == 0:
            return
        last = past.filter(pl.col("ts") == past["ts"].max()).sort("symbol")
        ids = np.array([self.ids[s] for s in last["symbol"]], dtype=np.int64)
        col = {c: last[c].cast(pl.Float64).to_numpy() for c in ("open", "high", "low", "close")}
        batch = BarBatch(
            last["ts"][0],
            last["symbol"].to_list(),
            ids,
            col["open"],
            col["high"],
            col["low"],
            col["close"],
            last["volume"].cast(pl.Float64).to_numpy(),
            np.zeros(len(ids)),
        )
        n = len(ids)
        signals = Signals(np.full(n, 0.6), np.full(n, 0.5), np.full(n, 0.01))
        account = Account(batch.ts, 1e6, 1e6, {}, {}, False, {s: 1.0 for s in self.symbols})
        throwaway = PathState.create(self.symbols, self.strategy, self.path)
        decide(throwaway, batch, signals, account, self.strategy, self.path)

    def _backfill(self, start: datetime, end: datetime) -> None:
        if end <= start:
            return
        frame = self.broker.minute_bars(self.symbols, start, end)
        rows = []
        for r in frame.iter_rows(named=True):
            if r["ts"] + timedelta(minutes=1) > end:
                continue
            bar = MinuteBar(
                r["symbol"], r["ts"], r["open"], r["high"], r["low"], r["close"], r["volume"]
            )
            rule = check_minute(bar)
            if rule is not None:
                self.result.quarantined += 1
                rows.append((bar, f"quarantine:{rule}", True))
                continue
            outcome = self.agg.add(bar)
            if outcome in ("duplicate", "outside"):
                continue
            rows.append((bar, "backfill", outcome == "late"))
            if outcome in ("added", "updated"):
                self._seen_minute(bar)
                self.result.backfilled += 1
        self.store.record_minutes(self.config.session, rows, self.clock())

    # -- reconciliation ----------------------------------------------------------------------

    def reconcile(self, startup: bool = False) -> None:
        """Bring the record up to the broker's state; fail closed on anything unexplained."""
        now = self.clock()
        resend = self._sync_orders(now, startup)
        known = self.store.orders()
        for o in self.broker.open_orders():
            if o.client_order_id not in known:
                self._fail_closed(
                    now,
                    f"the broker holds an open order {o.client_order_id} ({o.side} {o.qty} "
                    f"{o.symbol}) that this strategy never sent",
                )
        # Fills may land between reading the orders and reading the positions: a difference is
        # looked at again (orders first, then positions) before it counts.
        for attempt in range(3):
            held = self.broker.positions()
            expected = self.store.expected_positions()
            wrong = {
                s: (held.get(s, 0), expected.get(s, 0))
                for s in set(held) | set(expected)
                if held.get(s, 0) != expected.get(s, 0)
            }
            if not wrong or attempt == 2:
                break
            time.sleep(0.05 * (attempt + 1))
            self._sync_orders(self.clock(), startup=False)
        self.store.record_positions(self.config.session, now, held, expected)
        if wrong:
            text = ", ".join(f"{s}: broker {h}, record {e}" for s, (h, e) in sorted(wrong.items()))
            self._fail_closed(
                now, f"positions the record does not explain: {text}", mismatches=len(wrong)
            )
        if resend:
            self._resend(resend, now)
        self._bars_since_reconcile = 0

    def _resend(self, pending: Sequence[Any], now: datetime) -> None:
        """Orders decided before a crash and never sent: once the account checked out, each
        is sized from the book now (the cancels it followed may or may not have gone out, a
        fill may have come); a late one may only cut exposure, as a late bar may."""
        why = None
        if self.result.halted is not None:
            why = "the session failed closed"
        elif self._stop.is_set():
            why = "the session was stopped before it sent it"
        elif now >= self.close:
            why = "the market closed before it could be sent (it would execute at the next open)"
        else:
            self._check_lease()
            try:
                held, working = self._book_now()
            except _BookMoving:
                why = "fills kept coming while the book was read"
        if why is not None:
            for stored in pending:
                self.store.mark_order(stored.client_order_id, "never_sent", why, now)
            return
        age_limit = self.path.limits.max_data_age_s
        ready = []
        for stored in pending:
            order = self._renet(self._order_of(stored), held, working, now)
            if order is None:
                continue
            before = held.get(order.symbol, 0) + working.get(order.symbol, 0)
            after = before + order.signed_quantity
            cuts = abs(after) < abs(before) and after * before >= 0
            bar_end = stored.bar_ts + timedelta(minutes=self.config.minutes)
            late = age_limit is not None and (now - bar_end).total_seconds() > age_limit
            if late and not cuts:
                self.store.mark_order(
                    order.client_order_id,
                    "never_sent",
                    f"its bar ended {(now - bar_end).total_seconds():.0f} s ago: too late to add",
                    now,
                )
                continue
            ready.append(order)
        self._submit(ready, now)

    def _sync_orders(self, now: datetime, startup: bool) -> list[Any]:
        """Ask the broker about every order of ours not known to be final; the orders written
        and never sent whose bar is still current (at start-up), to be sent once checked."""
        resend: list[Any] = []
        for cid, stored in self.store.orders(open_only=True).items():
            self._tick()
            at_broker = self.broker.order(cid)
            if at_broker is not None:
                self._book(at_broker, now)
                continue
            if stored.status != "pending":
                self._fail_closed(
                    now,
                    f"order {cid} ({stored.symbol}) was acknowledged but the broker does not "
                    "know it",
                )
            elif startup and self._current(stored.bar_ts, now) and not self.config.dry_run:
                resend.append(stored)
            else:
                self.store.mark_order(
                    cid, "never_sent", "the session stopped before sending it", now
                )
        return resend

    def _current(self, bar_ts: datetime, now: datetime) -> bool:
        """Whether an order decided on ``bar_ts`` may still be sent at ``now``: before the
        next bar has closed."""
        return now < bar_ts + timedelta(minutes=2 * self.config.minutes)

    def _order_of(self, stored: Any) -> Order:
        return Order.create(
            self.strategy.name,
            stored.symbol,
            stored.bar_ts,
            stored.intent,
            stored.side,
            stored.qty,
        )

    def _fail_closed(self, now: datetime, reason: str, mismatches: int = 1) -> None:
        """Halt on what the record does not explain (``mismatches`` of it: positions, orders)."""
        self.result.mismatches += mismatches
        log.error("live session halted: %s", reason)
        if self.result.halted is None:
            self.result.halted = reason
        self.switch.trip(reason=f"reconciliation: {reason}", actor="live_session", now=now)
        self.switch.record(
            [
                RiskEvent(
                    now,
                    "kill_switch",
                    "reconciliation",
                    reason,
                    state_from=self.state.risk.state,
                    state_to=TradingState.HALTED,
                    actor="live_session",
                )
            ]
        )
        with self._beat_lock:
            if self._phase not in ENDED:
                self._phase = "halted"

    def _book(self, order: BrokerOrder, now: datetime, update: TradeUpdate | None = None) -> None:
        """Record what the broker says of one of our orders, and the fills it implies once."""
        if not self.store.has_order(order.client_order_id):
            return
        price = update.price if update is not None else None
        # A stream fill already learnt over REST (its order's cumulative quantity was booked)
        # is not booked again.
        if (
            update is not None
            and update.execution_id
            and update.qty
            and price is not None
            and self.store.booked(order.client_order_id) + update.qty <= order.filled_qty
            and self.store.record_fill(
                update.execution_id,
                order.client_order_id,
                order.symbol,
                order.side,
                update.qty,
                price,
                update.at,
                "stream",
            )
        ):
            self._count_fill(order, update.qty, price)
        booked = self.store.booked(order.client_order_id)
        if order.filled_qty > booked and order.filled_avg_price is not None:
            # Fills learnt over REST (the stream missed them): booked once, under an id of the
            # order and its cumulative quantity, at the average price of the shares not yet
            # booked (the order's average covers the fills already booked too).
            rest = order.filled_qty - booked
            notional = order.filled_avg_price * order.filled_qty
            price = (notional - self.store.booked_notional(order.client_order_id)) / rest
            self.store.record_fill(
                f"{order.id}:{order.filled_qty}",
                order.client_order_id,
                order.symbol,
                order.side,
                rest,
                price,
                now,
                "rest",
            )
            self._count_fill(order, rest, price)
        self.store.update_order(order, now)

    def _count_fill(self, order: BrokerOrder, qty: int, price: Decimal | float) -> None:
        self.result.fills += 1
        if order.client_order_id in self._sent_here:
            self.result.shares_filled += qty
        ref = self._decided_at_close.get(order.client_order_id)
        if ref:
            sign = 1.0 if order.side == "buy" else -1.0
            self.result.slippage_bps.append((sign * (float(price) / ref - 1.0) * 1e4, qty))

    def _sync_counts(self) -> None:
        """The store's and the broker's counts into the result (for metrics)."""
        self.result.order_statuses = dict(self.store.status_changes)
        counts = getattr(self.broker, "error_counts", None)  # brokers that count (AlpacaBroker)
        self.result.broker_errors = counts() if counts is not None else {}
        self.result.rate_limit_remaining = getattr(self.broker, "rate_limit_remaining", None)

    # -- streaming ---------------------------------------------------------------------------

    def _seen_minute(self, bar: MinuteBar) -> None:
        if self._last_minute is None or bar.ts > self._last_minute:
            self._last_minute = bar.ts
        newest = self._newest.get(bar.symbol)
        if newest is None or bar.ts > newest:
            self._newest[bar.symbol] = bar.ts

    def minute_ages(self) -> dict[str, float]:
        """Symbol -> seconds from the end of its newest minute received to now (session
        clock); for the metrics, read from another thread."""
        now = self.clock()
        return {s: (now - ts - MINUTE).total_seconds() for s, ts in list(self._newest.items())}

    def _on_event(self, event: FeedEvent) -> None:
        now = self.clock()
        if event.kind in ("bar", "updated_bar") and event.bar is not None:
            rule = check_minute(event.bar)
            if rule is not None:
                log.warning("quarantined %s: %s", event.bar, rule)
                self.result.quarantined += 1
                self._keep(event.bar, f"quarantine:{rule}", True)
                return
            bar = event.bar
            skipped = self._last_minute is not None and bar.ts > self._last_minute + MINUTE
            if event.kind == "bar" and skipped and self._last_minute is not None:
                # The stream jumped over whole minutes (it resumed after a stall or a drop):
                # the minutes in between are asked for over REST before this one is taken.
                self.result.gaps += 1
                self._backfill(self._last_minute + MINUTE, min(bar.ts, now))
            outcome = self.agg.add(bar)
            if outcome == "duplicate":
                self.result.duplicates += 1
                return
            if outcome == "outside":
                self._keep(bar, "outside", True)
                return
            late = outcome == "late"
            self.result.late += late
            self._seen_minute(event.bar)
            self._keep(bar, "stream" if event.kind == "bar" else "updated", late)
        elif event.kind == "trade" and event.trade is not None:
            self._book(event.trade.order, now, event.trade)

    def _keep(self, bar: MinuteBar, source: str, late: bool) -> None:
        """Persist a minute bar with the next flush (before any decision, when the streams
        are idle, or every 500): one transaction a batch, not one a bar."""
        self._unsaved.append((bar, source, late))
        if len(self._unsaved) >= 500:
            self._flush()

    def _flush(self) -> None:
        if self._unsaved:
            self.store.record_minutes(self.config.session, self._unsaved, self.clock())
            self._unsaved = []

    def _watch(self, now: datetime) -> None:
        """A stall: no bar message for ``data_timeout_s`` wall seconds while a minute's bar is
        overdue by the session clock (a replayed clock may wait on a test, or jump ahead of
        the bars about to arrive; neither is a stall). Reconnect, backfill over REST."""
        if now < self.open or now >= self.close:
            return
        newest = self._last_minute + timedelta(minutes=1) if self._last_minute else self.open
        quiet = self._wall() - self._heard >= self.config.data_timeout_s
        overdue = now >= newest + timedelta(minutes=1, seconds=self.config.grace_s)
        if not (quiet and overdue):
            return
        log.warning(
            "no bar message for %.1f s and the %s minute is overdue: reconnecting the data "
            "stream and backfilling from %s",
            self._wall() - self._heard,
            newest.isoformat(),
            (self.agg.next_start or newest).isoformat(),
        )
        self.result.reconnects += 1
        self.result.stalls.append((self._wall() - self._heard, now))
        self.feed.reconnect("data")
        self._backfill(self.agg.next_start or newest, now)
        self._heard = self._wall()  # the next try after another timeout

    # -- deciding ----------------------------------------------------------------------------

    def _remember_closes(self, bars: pl.DataFrame) -> None:
        ids = np.array([self.ids[s] for s in bars["symbol"]], dtype=np.int64)
        self._last_close[ids] = bars["close"].to_numpy()

    def _on_bars(self, bars: pl.DataFrame, now: datetime) -> None:
        self._tick()
        self._check_lease()
        self._flush()  # every minute a decision reads is on record before it
        ts: datetime = bars["ts"][0]
        t0 = time.perf_counter()
        sig = self.signals.on_bars(bars)
        in_process = time.perf_counter() - t0
        self._remember_closes(bars)
        self._last_bar = ts
        if self.result.halted is not None:
            return
        symbols = bars["symbol"].to_list()
        ids = np.array([self.ids[s] for s in symbols], dtype=np.int64)
        col = {c: bars[c].cast(pl.Float64).to_numpy() for c in ("open", "high", "low", "close")}
        batch = BarBatch(
            ts,
            symbols,
            ids,
            col["open"],
            col["high"],
            col["low"],
            col["close"],
            bars["volume"].cast(pl.Float64).to_numpy(),
            np.zeros(len(ids)),
        )
        try:
            account = self._account(now)
        except _BookMoving as exc:
            log.warning("bar %s not decided: %s; the next bar decides", ts.isoformat(), exc)
            return
        if self.result.halted is not None:
            return  # the broker showed an order of unknown origin: fail closed, decide nothing
        t0 = time.perf_counter()
        decision = decide(
            self.state,
            batch,
            sig.signals,
            account,
            self.strategy,
            self.path,
            closing=ts in self.closing,
        )
        in_process += time.perf_counter() - t0
        if decision.trip:
            self.switch.trip(
                reason="a trading limit tripped the kill switch", actor="live_session", now=now
            )
        if decision.events:
            self.switch.record(decision.events)
        self.store.record_decision(
            session=self.config.session,
            attempt=self.config.attempt,
            bar_ts=ts,
            decided_at=now,
            features_sha256=sig.features_sha256,
            state=decision.state,
            equity=account.equity,
            predictions=sig.predictions,
            intended=decision.intended,
            orders=decision.orders,
            cancels=decision.cancels,
            positions=dict(account.positions),
        )
        self.state = decision.state
        for o in decision.orders:
            self._decided_at_close[o.client_order_id] = float(self._last_close[self.ids[o.symbol]])
        compute_ms = in_process * 1e3  # features, model and decision: no I/O
        self.result.compute_ms.append(compute_ms)
        self.result.bars += 1
        sent_at = None
        if not self.config.dry_run:
            self._send(decision.orders, decision.replaces, now, cancels=decision.cancels)
            sent_at = self.clock() if decision.orders else None
        else:
            for o in decision.orders:
                self.store.mark_order(o.client_order_id, "dry_run", "dry run: not sent", now)
        self._bars_since_reconcile += 1
        if self._bars_since_reconcile >= self.config.reconcile_every:
            self.reconcile()
        self._sync_counts()
        if self._observe is not None:
            outcome = self._outcome(decision, sig.predictions, account, now, compute_ms)
            self._observe(
                replace(
                    outcome,
                    sent_at=sent_at,
                    gross=account.gross or 0.0,
                    net=account.net or 0.0,
                    kill_switch=bool(account.kill_switch),
                )
            )

    def _account(self, now: datetime) -> Account:
        account_read = self._pool.submit(self.broker.account)
        positions, open_orders = self._consistent_book()
        acct = account_read.result()
        stored = self.store.orders()
        working: dict[str, list[WorkingOrder]] = {}
        for o in open_orders:
            mine = stored.get(o.client_order_id)
            if mine is None:
                self._fail_closed(now, f"an open order {o.client_order_id} of unknown origin")
                continue
            working.setdefault(o.symbol, []).append(
                WorkingOrder(o.client_order_id, o.symbol, mine.intent, o.remaining)
            )
        qty = np.zeros(len(self.symbols))
        for s, q in positions.items():
            if s in self.ids:
                qty[self.ids[s]] = q
        values = qty * self._last_close
        return Account(
            now,
            acct.equity,
            acct.buying_power,
            positions,
            working,
            self.switch.tripped(),
            {s: float(self._last_close[i]) for s, i in self.ids.items()},
            gross=float(np.abs(values).sum()),
            net=float(values.sum()),
        )

    def _consistent_book(self) -> tuple[dict[str, int], list[BrokerOrder]]:
        """Positions and the open orders as of one moment: the open orders are read before
        and after the positions, and again until no fill came in between (three tries, then
        :class:`_BookMoving`: nothing is decided on a torn view)."""

        def seen(orders: list[BrokerOrder]) -> set[tuple[str, int]]:
            return {(o.client_order_id, o.filled_qty) for o in orders}

        before = self.broker.open_orders()
        for _ in range(3):
            positions = self.broker.positions()
            after = self.broker.open_orders()
            if seen(after) == seen(before):
                return positions, after
            before = after
        raise _BookMoving("fills kept coming while positions and open orders were read")

    def _send(
        self,
        orders: Sequence[Order],
        replaces: dict[str, list[str]],
        now: datetime,
        cancels: Sequence[str] = (),
    ) -> None:
        if not orders and not cancels:
            return
        self._check_lease()
        stored = self.store.orders()
        cancelled: dict[str, list[str]] = {}  # symbol -> the cancels of this batch on it
        for cid in cancels:
            o = stored.get(cid)
            if o is None:
                continue
            cancelled.setdefault(o.symbol, []).append(cid)
            if o.broker_id is not None:
                self.broker.cancel(o.broker_id)
        still_open = self._await_final(cancels) if cancels else set()
        ready: list[Order] = []
        renet: list[Order] = []
        for order in orders:
            cid = order.client_order_id
            if now >= self.close:
                # A day order sent after the close waits for the next session's open (Alpaca
                # queues it): a different trade, at an unknown price, than the one decided.
                self.store.mark_order(
                    cid,
                    "not_sent",
                    f"decided at {now.isoformat()}, at or after the close "
                    f"({self.close.isoformat()}): it would execute at the next open",
                    now,
                )
                continue
            if self.switch.tripped() and order.intent != "flatten":
                self.store.mark_order(cid, "not_sent", "the kill switch was tripped", now)
                continue
            follows = set(replaces.get(cid, ())) | set(cancelled.get(order.symbol, ()))
            if follows & still_open:
                # The cancelled order may still fill: sending this one as well could double
                # the exposure. The next bar decides again on what the broker then says.
                self.store.mark_order(
                    cid,
                    "not_sent",
                    f"the cancel of {', '.join(sorted(follows & still_open))} was not "
                    f"confirmed within {self.config.cancel_timeout_s:.0f} s",
                    now,
                )
                continue
            (renet if follows else ready).append(order)
        if renet:
            # Sized again from the book after the cancels: a fill may have raced them.
            try:
                held, working = self._book_now()
            except _BookMoving as exc:
                for order in renet:
                    self.store.mark_order(order.client_order_id, "not_sent", str(exc), now)
                renet = []
            for order in renet:
                resized = self._renet(order, held, working, now)
                if resized is not None:
                    ready.append(resized)
        self._submit(ready, now)

    def _submit(self, ready: Sequence[Order], now: datetime) -> None:
        """Send ``ready`` a few at a time (different symbols, independent) and book every
        answer; a definite refusal of one order marks it ``rejected`` and the others go on."""

        def one(order: Order) -> BrokerOrder | BaseException:
            try:
                return self.broker.submit(order)
            except Exception as exc:  # a refusal is booked; anything else raised after the rest
                return exc

        answers = list(self._pool.map(one, ready)) if len(ready) > 1 else [one(o) for o in ready]
        failure: BaseException | None = None
        for order, answer in zip(ready, answers, strict=True):
            self._tick()
            if isinstance(answer, OrderRefused):
                log.error(
                    "order refused: %s",
                    answer,
                    extra={"client_order_id": order.client_order_id, "symbol": order.symbol},
                )
                self.store.mark_order(order.client_order_id, "rejected", str(answer), now)
            elif isinstance(answer, BaseException):
                failure = failure or answer
            else:
                self.result.orders += 1
                self.result.shares_sent += order.quantity
                self._sent_here.add(order.client_order_id)
                log.info(
                    "order sent: %s %d %s (%s), broker status %s",
                    order.side,
                    order.quantity,
                    order.symbol,
                    order.intent,
                    answer.status,
                    extra={"client_order_id": order.client_order_id, "symbol": order.symbol},
                )
                self._book(answer, now)
        if failure is not None:
            raise failure

    def _await_final(self, cids: Sequence[str]) -> set[str]:
        """Wait up to ``cancel_timeout_s`` for ``cids`` to end at the broker (booking what they
        filled); the client ids still open then. One the broker does not know is not open."""
        deadline = self._wall() + self.config.cancel_timeout_s
        pending = list(cids)
        while pending:
            self._tick()
            still = []
            for cid in pending:
                o = self.broker.order(cid)
                if o is None or not o.open:
                    if o is not None:
                        self._book(o, self.clock())
                else:
                    still.append(cid)
            pending = still
            if not pending or self._wall() > deadline:
                break
            time.sleep(0.01)
        return set(pending)

    def _book_now(self) -> tuple[dict[str, int], dict[str, int]]:
        """Positions and the signed remaining shares of the open orders, by symbol."""
        held, orders = self._consistent_book()
        working: dict[str, int] = {}
        for o in orders:
            working[o.symbol] = working.get(o.symbol, 0) + o.remaining
        return held, working

    def _renet(
        self, order: Order, held: dict[str, int], working: dict[str, int], now: datetime
    ) -> Order | None:
        """``order`` sized from the book now (its goal less the position and what still
        works); None when nothing is left to do. A change of size is recorded before sending."""
        goal = 0 if order.intent == "flatten" else int(order.intent.removeprefix("target:"))
        base = held.get(order.symbol, 0) + working.get(order.symbol, 0)
        if self.path.split_flips and goal * base < 0:
            goal = 0  # through zero in one order: the broker refuses it; close only
        need = goal - base
        if need == 0:
            self.store.mark_order(
                order.client_order_id, "not_needed", "the book already holds its goal", now
            )
            return None
        side: Literal["buy", "sell"] = "buy" if need > 0 else "sell"
        if side != order.side or abs(need) != order.quantity:
            self.store.resize_order(
                order.client_order_id,
                side,
                abs(need),
                f"re-sized from {order.side} {order.quantity}: the book moved before it was sent",
                now,
            )
        return replace(order, side=side, quantity=abs(need))

    def _on_stop(self) -> None:
        now = self.clock()
        if self.config.on_stop == "keep" or self.config.dry_run:
            return
        self._check_lease()
        mine = self.store.orders()
        open_ = [o for o in self.broker.open_orders() if o.client_order_id in mine]
        for o in open_:
            self.broker.cancel(o.id)
        still_open = self._await_final([o.client_order_id for o in open_])
        if self.config.on_stop != "flatten":
            return
        if self.result.halted is not None:
            log.error("not flattening at the stop: the session failed closed and a person looks")
            return
        held, working = self._book_now()
        flatten = []
        for s in self.symbols:
            q = held.get(s, 0)
            if not q:
                continue
            if working.get(s, 0) or any(
                o.symbol == s for o in open_ if o.client_order_id in still_open
            ):
                log.error("not flattening %s: an order on it is still working", s)
                continue
            flatten.append(
                Order.create(
                    self.strategy.name, s, now, "flatten", "sell" if q > 0 else "buy", abs(q)
                )
            )
        for f in flatten:
            self.store.record_order(self.config.session, f, now)
        self._send(flatten, {}, now)

    def _drain(self) -> None:
        """Book what the broker says of our open orders at the end."""
        now = self.clock()
        for cid in self.store.orders(open_only=True):
            o = self.broker.order(cid)
            if o is not None:
                self._book(o, now)

    def _outcome(
        self,
        decision: Decision,
        predictions: dict[str, Any],
        account: Account,
        now: datetime,
        compute_ms: float,
    ) -> BarOutcome:
        intended = decision.intended
        return BarOutcome(
            decision.state.last_ts or now,
            now,
            [{"symbol": s, **p, "intended": intended.get(s)} for s, p in predictions.items()],
            [
                {
                    "client_order_id": o.client_order_id,
                    "symbol": o.symbol,
                    "side": o.side,
                    "qty": o.quantity,
                    "intent": o.intent,
                }
                for o in decision.orders
            ],
            list(decision.cancels),
            dict(account.positions),
            account.equity,
            decision.state.risk.state.value,
            list(decision.events),
            compute_ms,
        )
