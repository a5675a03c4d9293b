"""A local Alpaca: broker, market-data REST and both websockets, replaying recorded minute bars.

The project's live trading session talks to it through the real alpaca-py clients
(``TradingClient``, ``StockHistoricalDataClient``, ``StockDataStream``, ``TradingStream``), with
their base URLs pointed at :attr:`LocalAlpaca.url` / :attr:`LocalAlpaca.stream_url`. One aiohttp
app on one port serves REST and both websockets, in its own thread and event loop; every piece
of state is touched on that loop only, so the REST handlers, the streams and the replay clock
never race.

The replay clock (UTC) starts at the first minute bar's start. When it passes a minute boundary
m, in this order: (1) the fill bars (``fill_minutes`` long, built from the minute bars exactly as
the backtest builds its bars) that end at m fill the eligible working orders through
:class:`pipelines.backtest.broker.SimulatedBroker` (at the fill bar's open, under the
participation cap, with BrokerConfig's slippage and commission: the backtest's fills exactly);
(2) the trade updates of those fills go out; (3) the minute bars that close at m go to the
market-data subscribers. Day orders still working ``fill_latency_s`` after a session's close
expire then.

An order received at replay time r is eligible for the first fill bar starting at s with
``r <= s + fill_latency_s`` (and not yet closed); until then it is a working order with status
``new``. Trade updates and fills are stamped with the replay time at which they are booked (the
fill bar's end), the price is the fill bar's open after costs.

Paths alpaca-py uses (with ``url_override``): REST ``{url}/v2/...``; ``StockDataStream`` uses
its ``url_override`` as the whole endpoint, so pass ``{stream_url}/v2/iex`` (or ``/v2/sip``):
:meth:`LocalAlpaca.data_stream_url`; ``TradingStream`` likewise: ``{stream_url}/stream``
(:attr:`LocalAlpaca.trade_stream_url`). The data stream speaks msgpack (JSON if the client
connects without ``Content-Type: application/msgpack``), the trade stream JSON (sent as binary
frames, as Alpaca does).

Not simulated: trades/quotes streams (subscriptions to them are confirmed, nothing is sent),
order replacement (PATCH), stop-limit/trailing orders, fractional or notional orders,
buying-power checks at submission (the SimulatedBroker checks at the fill and rejects then, so
that fills stay identical to the backtest's), the 407 slow-client error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import msgpack
import polars as pl
from aiohttp import WSMsgType, web

from pipelines.backtest.broker import BrokerConfig, Fill, SimulatedBroker, money
from pipelines.bars.calendar import Session, sessions_between
from pipelines.execution.orders import Order
from quantdag.testing.alpaca.faults import Fault
from quantdag.testing.alpaca.replay import (
    MINUTE,
    ReplayData,
    bars_page,
    timeframe_minutes,
)

T = TypeVar("T")
NEW_YORK = ZoneInfo("America/New_York")
FEEDS = ("iex", "sip", "delayed_sip", "test", "otc", "boats", "overnight")
OPEN = ("new", "accepted", "partially_filled", "pending_new")
ACCOUNT_ID = uuid.UUID("6c1c3d5e-3f5a-4a4e-9d36-0a1c0ca1a0ca")
STRATEGY = "local_alpaca"


def _iso(ts: datetime | None) -> str | None:
    """Alpaca's timestamp format: UTC, microseconds, ``Z``."""
    return None if ts is None else ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _error(status: int, code: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status, headers=headers)


class ApiError(Exception):
    """An Alpaca error answer: HTTP ``status`` with body ``{"code": code, "message": ...}``."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class _Order:
    id: str
    client_order_id: str
    symbol: str
    qty: int
    side: str
    type: str
    time_in_force: str
    limit_price: Decimal | None
    stop_price: Decimal | None
    received: datetime
    received_ns: int
    eligible: datetime  # the start of the first fill bar it may fill on
    status: str = "new"
    filled_qty: int = 0
    notional: Decimal = Decimal(0)  # sum of fill price x quantity
    updated_at: datetime | None = None
    filled_at: datetime | None = None
    canceled_at: datetime | None = None
    expired_at: datetime | None = None
    failed_at: datetime | None = None
    in_broker: bool = False
    extended_hours: bool = False

    @property
    def is_open(self) -> bool:
        return self.status in OPEN

    def json(self) -> dict[str, Any]:
        avg = (self.notional / self.filled_qty) if self.filled_qty else None
        return {
            "id": self.id,
            "client_order_id": self.client_order_id,
            "created_at": _iso(self.received),
            "updated_at": _iso(self.updated_at or self.received),
            "submitted_at": _iso(self.received),
            "filled_at": _iso(self.filled_at),
            "expired_at": _iso(self.expired_at),
            "canceled_at": _iso(self.canceled_at),
            "failed_at": _iso(self.failed_at),
            "replaced_at": None,
            "replaced_by": None,
            "replaces": None,
            "asset_id": str(_asset_id(self.symbol)),
            "symbol": self.symbol,
            "asset_class": "us_equity",
            "notional": None,
            "qty": str(self.qty),
            "filled_qty": str(self.filled_qty),
            "filled_avg_price": None if avg is None else str(avg),
            "order_class": "simple",
            "order_type": self.type,
            "type": self.type,
            "side": self.side,
            "time_in_force": self.time_in_force,
            "limit_price": None if self.limit_price is None else str(self.limit_price),
            "stop_price": None if self.stop_price is None else str(self.stop_price),
            "status": self.status,
            "extended_hours": self.extended_hours,
            "legs": None,
            # trail_percent, trail_price, hwm, position_intent: left out (no trailing orders);
            # Alpaca's spec types the first three as non-null strings, alpaca-py defaults them.
        }


def _asset_id(symbol: str) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_URL, f"quantdag-local-alpaca/{symbol}")


@dataclass
class _DataClient:
    ws: web.WebSocketResponse
    request: web.Request
    binary: bool = True
    key: str | None = None
    subs: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))

    def wants(self, channel: str, symbol: str) -> bool:
        s = self.subs.get(channel)
        return bool(s) and (symbol in s or "*" in s)  # type: ignore[operator]


class LocalAlpaca:
    """A local Alpaca (trading + market data, REST + websockets) replaying ``minute_bars``.

    ``minute_bars``: symbol, ts (UTC bar START, 1-minute bars), open, high, low, close, volume.
    ``cash`` the starting cash (USD); ``fill`` the SimulatedBroker's costs, participation cap and
    leverage cap; ``fill_minutes`` the fill bars' length (the strategy's bars, e.g. 15);
    ``fill_latency_s`` replay seconds after a fill bar's start within which a received order
    still fills on that bar; ``history`` earlier bars (any one timeframe, same columns) that the
    data REST API serves beside the replayed ones; ``rate_limit_per_min`` answers 429 with
    ``Retry-After`` beyond that many requests per key in a wall-clock minute; ``start`` the
    replay clock's start (default: the first minute bar's start).

    Example::

        with LocalAlpaca(sample_minute_bars(date(2019, 2, 15)), fill_minutes=15) as srv:
            client = TradingClient("test-key", "test-secret", url_override=srv.url)
            client.submit_order(MarketOrderRequest(symbol="AAPL", qty=10, side="buy",
                                                   time_in_force="day"))
            srv.advance(srv.now() + timedelta(minutes=30))
            assert srv.positions()["AAPL"] == 10
    """

    def __init__(
        self,
        minute_bars: pl.DataFrame,
        *,
        cash: Decimal = Decimal("100000"),
        fill: BrokerConfig | None = None,
        fill_minutes: int = 15,
        calendar: str = "XNYS",
        session: Session = "regular",
        fill_latency_s: float = 30.0,
        history: pl.DataFrame | None = None,
        api_key: str = "test-key",
        secret_key: str = "test-secret",
        port: int = 0,
        rate_limit_per_min: int | None = None,
        start: datetime | None = None,
        page_limit: int = 10_000,
    ) -> None:
        self.config = fill if fill is not None else BrokerConfig()
        if self.config.costs.impact_k:
            raise ValueError(
                "LocalAlpaca has no per-bar volatility for the impact model: use impact_k=0"
            )
        symbols = set(minute_bars["symbol"].unique().to_list())
        self.broker = SimulatedBroker(money(cash), symbols, self.config)
        self.data = ReplayData(
            minute_bars,
            ids=self.broker.ids,
            fill_minutes=fill_minutes,
            calendar=calendar,
            session=session,
            history=history,
        )
        self.symbols = symbols
        self.fill_latency = timedelta(seconds=fill_latency_s)
        self.api_key, self.secret_key = api_key, secret_key
        self.port = port
        self.rate_limit_per_min = rate_limit_per_min
        self.page_limit = page_limit
        self._start = start if start is not None else self.data.first
        self._now = self.data.first
        self.end = self.data.events[-1]
        self._expired: set[datetime] = set()  # session closes whose day orders expired
        self._fills_done = self.data.first - MINUTE  # fill bars ending at or before: booked
        # Instrumentation (read them from any thread; written on the server's loop).
        self.faults: list[Fault] = []
        self.requests: list[dict[str, Any]] = []
        self.orders_received: list[dict[str, Any]] = []
        self.bar_sent_ns: dict[datetime, int] = {}
        self.bars_missed: list[tuple[str, datetime]] = []
        self.trade_updates: list[dict[str, Any]] = []
        self.trade_updates_withheld: list[dict[str, Any]] = []
        self.data_connections = 0
        self.trade_connections = 0
        self.stream_errors: list[dict[str, Any]] = []
        # State.
        self._orders: dict[str, _Order] = {}
        self._by_client_id: dict[str, _Order] = {}
        self._avg_price: dict[str, Decimal] = {}
        self._last_equity = float(money(cash))
        self._data_clients: list[_DataClient] = []
        self._trade_clients: list[tuple[web.WebSocketResponse, web.Request]] = []
        self._trade_pending: list[tuple[web.WebSocketResponse, web.Request]] = []
        self._rate: dict[str, tuple[int, int]] = {}
        self._late: dict[tuple[str, datetime], int] = {}
        self._deferred: dict[datetime, list[dict[str, Any]]] = defaultdict(list)
        self._dupes: set[tuple[str, datetime]] = set()
        self._data_stall: tuple[datetime | None, float | None] | None = None
        self._trade_stall: tuple[datetime | None, float | None] | None = None
        self._until: datetime | None = None
        self._play: asyncio.Task[None] | None = None
        self._pace: tuple[float, datetime, float] | None = None  # speed, replay0, wall0
        self._loop = asyncio.new_event_loop()
        self._lock: asyncio.Lock | None = None
        self._release: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="local-alpaca")
        self._runner: web.AppRunner | None = None
        self._startup_error: BaseException | None = None

    # ----------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        """REST base URL, e.g. ``http://127.0.0.1:8765`` (TradingClient / data client
        ``url_override``)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def stream_url(self) -> str:
        """Websocket base URL, e.g. ``ws://127.0.0.1:8765``."""
        return f"ws://127.0.0.1:{self.port}"

    def data_stream_url(self, feed: str = "iex") -> str:
        """The ``url_override`` for alpaca-py's StockDataStream: ``{stream_url}/v2/{feed}``."""
        return f"{self.stream_url}/v2/{feed}"

    @property
    def trade_stream_url(self) -> str:
        """The ``url_override`` for alpaca-py's TradingStream: ``{stream_url}/stream``."""
        return f"{self.stream_url}/stream"

    def __enter__(self) -> LocalAlpaca:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Serve on 127.0.0.1:``port`` (0: a free port) from a background thread."""
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the local Alpaca server did not start within 30 s")
        if self._startup_error is not None:
            raise RuntimeError("the local Alpaca server failed to start") from self._startup_error

    def stop(self) -> None:
        """Close every connection and stop the server thread."""
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _shutdown(self) -> None:
        if self._play is not None:
            self._play.cancel()
        assert self._release is not None
        self._release.set()
        for c in list(self._data_clients):
            await c.ws.close()
        for ws, _ in list(self._trade_clients) + list(self._trade_pending):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._lock = asyncio.Lock()
            self._release = asyncio.Event()
            app = web.Application(middlewares=[self._middleware])
            r = app.router
            r.add_get("/v2/account", self._account)
            r.add_get("/v2/orders:by_client_order_id", self._order_by_client_id)
            r.add_post("/v2/orders", self._post_order)
            r.add_get("/v2/orders", self._list_orders)
            r.add_delete("/v2/orders", self._cancel_all)
            r.add_get("/v2/orders/{order_id}", self._get_order)
            r.add_delete("/v2/orders/{order_id}", self._cancel_order)
            r.add_get("/v2/positions", self._positions)
            r.add_delete("/v2/positions", self._close_all)
            r.add_get("/v2/positions/{symbol}", self._position)
            r.add_delete("/v2/positions/{symbol}", self._close_position)
            r.add_get("/v2/clock", self._get_clock)
            r.add_get("/v2/calendar", self._calendar)
            r.add_get("/v2/stocks/bars", self._bars)
            for feed in FEEDS:
                r.add_get(f"/v2/{feed}", self._data_ws)
            r.add_get("/stream", self._trade_ws)
            self._runner = web.AppRunner(app, access_log=None)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", self.port)
            self._loop.run_until_complete(site.start())
            sockets = site._server.sockets  # type: ignore[union-attr]
            self.port = sockets[0].getsockname()[1]
            if self._start > self._now:
                self._loop.run_until_complete(self._advance(self._start))
        except BaseException as exc:  # handed to start(), which raises it
            self._startup_error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    def _call(self, coro: Awaitable[T], timeout: float | None = 120) -> T:
        """Run ``coro`` on the server's loop and wait for its result."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("call LocalAlpaca's blocking methods from another thread")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)  # type: ignore[arg-type]

    # ----------------------------------------------------------------- the clock
    def now(self) -> datetime:
        """The replay clock (UTC). While :meth:`play` runs it moves with the wall clock."""
        return self._clock()

    def _clock(self) -> datetime:
        if self._pace is None:
            return self._now
        speed, r0, w0 = self._pace
        paced = r0 + timedelta(seconds=(time.monotonic() - w0) * speed)
        return max(self._now, min(paced, self._until or self.end, self.end))

    @property
    def done(self) -> bool:
        """The replay reached the end of the data (or the ``until`` given to :meth:`play`)."""
        return self._now >= self.end or (self._until is not None and self._now >= self._until)

    def advance(self, to: datetime) -> None:
        """Move the replay clock to ``to`` (UTC), doing everything due on the way (fills, trade
        updates, expiries, bar messages); returns when done. Thread-safe."""
        self._call(self._advance(to))

    def play(self, speed: float, until: datetime | None = None) -> None:
        """Move the clock in the background, ``speed`` replay seconds per wall second (60: one
        replay minute a second), until the data ends or ``until``; :meth:`pause` stops it."""
        if speed <= 0:
            raise ValueError("speed must be > 0 replay seconds per wall second")
        self._call(self._start_play(speed, until))

    def pause(self) -> None:
        """Stop :meth:`play` (the clock stays where it is)."""
        self._call(self._pause())

    async def _start_play(self, speed: float, until: datetime | None) -> None:
        await self._pause()
        self._until = until
        self._pace = (speed, self._now, time.monotonic())
        self._play = asyncio.get_running_loop().create_task(self._play_loop())

    async def _pause(self) -> None:
        if self._play is not None:
            self._play.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._play
            self._play = None
        if self._pace is not None:
            self._now = max(self._now, self._clock())
        self._pace = None

    async def _play_loop(self) -> None:
        assert self._pace is not None
        speed, r0, w0 = self._pace
        stop = min(self._until or self.end, self.end)
        while self._now < stop:
            await self._advance(min(self._clock(), stop))
            i = bisect_right(self.data.events, self._now)
            nxt = min(self.data.events[i], stop) if i < len(self.data.events) else stop
            wait = (nxt - r0).total_seconds() / speed - (time.monotonic() - w0)
            await asyncio.sleep(max(0.0, wait))
        self._pace = None

    async def _advance(self, to: datetime) -> None:
        assert self._lock is not None
        async with self._lock:
            if to < self._now:
                raise ValueError(f"the replay clock is at {self._now}; it cannot go back to {to}")
            events = self.data.events
            i = bisect_right(events, self._now)
            while i < len(events) and events[i] <= to:
                await self._boundary(events[i])
                i += 1
            self._now = max(self._now, to)
            await self._expire(to)

    async def _boundary(self, m: datetime) -> None:
        """Everything due when the clock reaches minute boundary ``m``."""
        self._now = m
        updates: list[tuple[str, _Order, dict[str, Any]]] = []
        fb = self.data.fill_bars.get(m)
        if fb is not None:
            for o in self._orders.values():
                if o.is_open and not o.in_broker and o.eligible <= fb.start:
                    o.in_broker = True
                    decided = min(o.received, fb.start - timedelta(microseconds=1))
                    self.broker.submit(
                        Order(
                            o.client_order_id,
                            STRATEGY,
                            o.symbol,
                            decided,
                            "api",
                            o.side,  # type: ignore[arg-type]
                            o.qty,
                            o.type,  # type: ignore[arg-type]
                            o.limit_price,
                            o.stop_price,
                        )
                    )
            seen = len(self.broker.ledger.events)
            for f in self.broker.on_batch(fb.batch):
                o = self._by_client_id[f.client_order_id]
                q = abs(f.quantity)
                o.filled_qty += q
                o.notional += f.price * q
                o.updated_at = m
                self._book_position(f)
                if o.filled_qty == o.qty:
                    o.status, o.filled_at = "filled", m
                else:
                    o.status = "partially_filled"
                event = "fill" if o.status == "filled" else "partial_fill"
                updates.append(
                    (
                        event,
                        o,
                        {
                            "execution_id": str(uuid.uuid4()),
                            "price": str(f.price),
                            "qty": str(q),
                            "position_qty": str(self.broker.ledger.positions.get(o.symbol, 0)),
                        },
                    )
                )
            for e in self.broker.ledger.events[seen:]:
                if e.kind == "rejected":
                    o = self._by_client_id[e.client_order_id]
                    o.status, o.failed_at, o.updated_at = "rejected", m, m
                    updates.append(("rejected", o, {"reason": e.reason}))
        self._fills_done = m
        if m in self.data.session_ends:
            self._last_equity = self.broker.mark()[0]
        for event, o, extra in updates:
            await self._emit(event, o, m, **extra)
        await self._send_bars(m)

    async def _expire(self, to: datetime) -> None:
        """Day orders received during a session and still working ``fill_latency`` after its
        close expire then (as Alpaca's do shortly after 16:00): an order decided on the last
        bar, at the close, sees the earlier ones still working, as the backtest's engine does.
        A day order received after the close is not expired: Alpaca queues it (``accepted``)
        for the next session's open."""
        for end in self.data.session_ends:
            t = end + self.fill_latency
            if end in self._expired or t > to:
                continue
            self._expired.add(end)
            for o in list(self._orders.values()):
                if o.is_open and o.time_in_force == "day" and o.received < end:
                    if o.in_broker:
                        self.broker.cancel(o.client_order_id, t, "expired at the session close")
                    o.status, o.expired_at, o.updated_at = "expired", t, t
                    await self._emit("expired", o, t)

    def _book_position(self, f: Fill) -> None:
        """Average entry price of the position after fill ``f`` (Alpaca's average cost)."""
        held = self.broker.ledger.positions.get(f.symbol, 0)
        before = held - f.quantity
        avg = self._avg_price.get(f.symbol, Decimal(0))
        if held == 0:
            self._avg_price.pop(f.symbol, None)
        elif before == 0 or (before > 0) != (held > 0):
            self._avg_price[f.symbol] = f.price
        elif abs(held) > abs(before):
            self._avg_price[f.symbol] = (avg * abs(before) + f.price * abs(f.quantity)) / abs(held)

    # ----------------------------------------------------------------- faults
    def drop_data_socket(self) -> None:
        """Close every market-data websocket now (the TCP connection, without a close
        frame): clients must reconnect (and backfill what they missed via REST)."""
        self._call(self._drop(data=True))

    def drop_trade_socket(self) -> None:
        """Close every trade-updates websocket now (TCP, no close frame)."""
        self._call(self._drop(data=False))

    async def _drop(self, data: bool) -> None:
        if data:
            conns = [(c.ws, c.request) for c in self._data_clients]
            self._data_clients.clear()
        else:
            conns = self._trade_clients + self._trade_pending
            self._trade_clients, self._trade_pending = [], []
        for _, request in conns:
            if request.transport is not None:
                request.transport.close()

    def stall_data(
        self, replay_seconds: float | None = None, wall_seconds: float | None = None
    ) -> None:
        """Send no market data (the sockets stay open) for ``replay_seconds`` of replay time or
        ``wall_seconds`` of wall time from now. Bars due meanwhile are never sent (see
        :attr:`bars_missed`): a client must backfill them via REST."""
        until = self._stall_until(replay_seconds, wall_seconds)
        self._call(self._view(lambda: setattr(self, "_data_stall", until)))

    def stall_trades(
        self, replay_seconds: float | None = None, wall_seconds: float | None = None
    ) -> None:
        """Withhold trade updates (socket open, nothing sent) for that long; withheld updates
        are never sent (:attr:`trade_updates_withheld`): a client must poll REST."""
        until = self._stall_until(replay_seconds, wall_seconds)
        self._call(self._view(lambda: setattr(self, "_trade_stall", until)))

    def _stall_until(
        self, replay_seconds: float | None, wall_seconds: float | None
    ) -> tuple[datetime | None, float | None]:
        if (replay_seconds is None) == (wall_seconds is None):
            raise ValueError("give exactly one of replay_seconds and wall_seconds")
        if replay_seconds is not None:
            return self._clock() + timedelta(seconds=replay_seconds), None
        assert wall_seconds is not None
        return None, time.monotonic() + wall_seconds

    def _stalled(self, stall: tuple[datetime | None, float | None] | None, m: datetime) -> bool:
        if stall is None:
            return False
        until_replay, until_wall = stall
        if until_replay is not None:
            return m <= until_replay
        assert until_wall is not None
        return time.monotonic() < until_wall

    def late_bar(self, symbol: str, ts: datetime, minutes: int = 1) -> None:
        """Send the minute bar (``symbol``, ``ts`` its start) ``minutes`` boundaries late,
        after the bars of later minutes. Call before the bar is due."""
        if minutes < 1:
            raise ValueError("minutes must be >= 1")
        self._call(self._view(lambda: self._late.__setitem__((symbol, ts), minutes)))

    def duplicate_bar(self, symbol: str, ts: datetime) -> None:
        """Send the minute bar (``symbol``, ``ts``) twice (a second frame right after the
        first). Call before the bar is due."""
        self._call(self._view(lambda: self._dupes.add((symbol, ts))))

    def update_bar(self, symbol: str, ts: datetime, **values: float) -> None:
        """Correct the minute bar (``symbol``, ``ts``) (e.g. ``close=...``, ``volume=...``):
        send it as an ``updatedBars`` message (``T: u``) now, and serve the corrected values
        from the data REST API from now on."""
        self._call(self._update_bar(symbol, ts, values))

    async def _update_bar(self, symbol: str, ts: datetime, values: dict[str, float]) -> None:
        msg = self.data.update(symbol, ts, values)
        for c in list(self._data_clients):
            if c.key is not None and c.wants("updatedBars", symbol):
                await self._send_data(c, [msg])

    # ----------------------------------------------------------------- views
    def positions(self) -> dict[str, int]:
        """Symbol -> shares held (non-zero only)."""
        return self._call(self._view(lambda: {s: q for s, q in self._held().items()}))

    def orders(self) -> list[dict[str, Any]]:
        """Every order received, as Alpaca's order JSON, oldest first."""
        return self._call(self._view(lambda: [o.json() for o in self._orders.values()]))

    def fills(self) -> list[Fill]:
        """Every fill booked by the SimulatedBroker, in order."""
        return self._call(self._view(lambda: list(self.broker.ledger.fills)))

    def subscriptions(self) -> list[dict[str, list[str]]]:
        """The channels -> symbols of each authenticated market-data connection."""
        return self._call(
            self._view(
                lambda: [
                    {k: sorted(v) for k, v in c.subs.items() if v}
                    for c in self._data_clients
                    if c.key is not None
                ]
            )
        )

    def trade_listeners(self) -> int:
        """How many trade-updates connections listen to ``trade_updates`` now."""
        return self._call(self._view(lambda: len(self._trade_clients)))

    async def _view(self, fn: Callable[[], T]) -> T:
        return fn()

    def _held(self) -> dict[str, int]:
        return {s: q for s, q in self.broker.ledger.positions.items() if q}

    # ----------------------------------------------------------------- REST plumbing
    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        path = request.path
        if path == "/stream" or path.removeprefix("/v2/") in FEEDS:
            return await handler(request)
        self.requests.append({"method": request.method, "path": path, "query": dict(request.query)})
        key = request.headers.get("APCA-API-KEY-ID")
        secret = request.headers.get("APCA-API-SECRET-KEY")
        if key is None or secret is None:
            return _error(401, 40110000, "request is not authorized")
        if key != self.api_key or secret != self.secret_key:
            return _error(403, 40310000, "forbidden")
        limits: dict[str, str] = {}
        if self.rate_limit_per_min is not None:
            now = time.time()
            minute = int(now // 60)
            start, count = self._rate.get(key, (minute, 0))
            count = count + 1 if start == minute else 1
            self._rate[key] = (minute, count)
            # Alpaca's rate-limit headers, on every answer of a limited API.
            limits = {
                "X-RateLimit-Limit": str(self.rate_limit_per_min),
                "X-RateLimit-Remaining": str(max(self.rate_limit_per_min - count, 0)),
                "X-RateLimit-Reset": str((minute + 1) * 60),
            }
            if count > self.rate_limit_per_min:
                retry = str(max(1, int(60 - now % 60)))
                return _error(
                    429, 42910000, "rate limit exceeded", **{"Retry-After": retry, **limits}
                )
        fault = next((f for f in self.faults if f.matches(request.method, path)), None)
        if fault is not None:
            self.faults.remove(fault)
            response = await self._faulty(fault, request, handler)
        else:
            response = await self._answer(request, handler)
        if not response.prepared:
            response.headers.update(limits)
        return response

    async def _answer(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as e:
            return _error(e.status, e.code, e.message)

    async def _faulty(
        self,
        fault: Fault,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        if fault.kind == "status":
            if fault.body is not None:
                return web.Response(
                    text=fault.body,
                    status=fault.status,
                    content_type=fault.content_type,
                    headers=fault.headers,
                )
            return web.json_response(
                {"code": fault.status, "message": "injected fault"},
                status=fault.status,
                headers=fault.headers,
            )
        if fault.kind == "body":
            return web.Response(text=fault.body or "", content_type=fault.content_type)
        if fault.kind == "hang":
            assert self._release is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), fault.seconds)
            return await self._answer(request, handler)
        answer = await self._answer(request, handler)
        body = answer.body if isinstance(answer, web.Response) else b""
        assert isinstance(body, bytes | None)
        body = body or b""
        if fault.kind == "apply_then_fail" and fault.status:
            return web.json_response(
                {"code": fault.status, "message": "injected fault after the request was applied"},
                status=fault.status,
                headers=fault.headers,
            )
        if fault.kind == "truncate":
            return web.Response(body=body[: len(body) // 2], content_type="application/json")
        # drop (or apply_then_fail with status 0): half the answer, then close the connection.
        resp = web.StreamResponse(
            status=answer.status, headers={"Content-Type": "application/json"}
        )
        resp.content_length = max(len(body), 2)
        await resp.prepare(request)
        await resp.write(body[: len(body) // 2])
        assert request.transport is not None
        request.transport.close()
        return resp

    # ----------------------------------------------------------------- REST: account
    async def _account(self, request: web.Request) -> web.Response:
        equity, gross, _ = self.broker.mark()
        values = {s: q * self.broker.last(s) for s, q in self._held().items()}
        long_mv = sum((v for v in values.values() if v > 0), 0.0)
        short_mv = sum((v for v in values.values() if v < 0), 0.0)
        buying_power = max(0.0, equity * self.config.max_leverage - gross)
        cash = str(self.broker.ledger.cash)
        body = {
            "id": str(ACCOUNT_ID),
            "account_number": "PA0LOCAL0001",
            "status": "ACTIVE",
            "crypto_status": "INACTIVE",
            "currency": "USD",
            "buying_power": repr(buying_power),
            "regt_buying_power": repr(buying_power),
            "daytrading_buying_power": repr(buying_power),
            "effective_buying_power": repr(buying_power),
            "non_marginable_buying_power": repr(max(0.0, equity - gross)),
            "options_buying_power": "0",
            "bod_dtbp": "0",
            "cash": cash,
            "accrued_fees": "0",
            "pending_transfer_in": "0",
            "pending_transfer_out": "0",
            "portfolio_value": repr(equity),
            "pattern_day_trader": False,
            "trading_blocked": False,
            "transfers_blocked": False,
            "account_blocked": False,
            "created_at": _iso(datetime(2019, 1, 2, 14, 30, tzinfo=UTC)),
            "trade_suspended_by_user": False,
            "multiplier": repr(float(self.config.max_leverage)),
            "shorting_enabled": True,
            "equity": repr(equity),
            "last_equity": repr(self._last_equity),
            "long_market_value": repr(long_mv),
            "short_market_value": repr(short_mv),
            "position_market_value": repr(gross),
            "initial_margin": repr(gross / self.config.max_leverage),
            "maintenance_margin": repr(gross / self.config.max_leverage),
            "last_maintenance_margin": "0",
            "sma": "0",
            "daytrade_count": 0,
            "options_approved_level": 0,
            "options_trading_level": 0,
        }
        return web.json_response(body)

    # ----------------------------------------------------------------- REST: orders
    async def _post_order(self, request: web.Request) -> web.Response:
        received_ns = time.perf_counter_ns()
        now = self._clock()
        try:
            body = await request.json()
        except ValueError:
            raise ApiError(400, 40010000, "request body format is invalid") from None
        if not isinstance(body, dict):
            raise ApiError(400, 40010000, "request body format is invalid")
        cid = str(body.get("client_order_id") or uuid.uuid4())
        self.orders_received.append(
            {"client_order_id": cid, "replay_ts": now, "ns": received_ns, "body": body}
        )
        order = await self._new_order(body, cid, now, received_ns)
        return web.json_response(order.json())

    async def _new_order(self, body: dict[str, Any], cid: str, now: datetime, ns: int) -> _Order:
        symbol = body.get("symbol")
        if not isinstance(symbol, str) or symbol not in self.symbols:
            raise ApiError(422, 40010001, f"asset {symbol!r} not found")
        if body.get("notional") is not None:
            raise ApiError(422, 40010001, "notional orders are not supported here; give qty")
        qty = _whole(body.get("qty"))
        if qty is None:
            raise ApiError(422, 40010001, "qty must be a positive whole number of shares")
        side = body.get("side")
        if side not in ("buy", "sell"):
            raise ApiError(422, 40010001, "side must be buy or sell")
        otype = body.get("type") or body.get("order_type")
        if otype not in ("market", "limit", "stop"):
            raise ApiError(422, 40010001, f"order type {otype!r} is not supported")
        tif = body.get("time_in_force")
        if tif not in ("day", "gtc"):
            raise ApiError(422, 40010001, f"time_in_force {tif!r} is not supported (day, gtc)")
        if body.get("order_class") not in (None, "", "simple"):
            raise ApiError(422, 40010001, "only simple orders are supported")
        limit = _price(body.get("limit_price"), "limit_price", otype == "limit")
        stop = _price(body.get("stop_price"), "stop_price", otype == "stop")
        if len(cid) > 128:
            raise ApiError(422, 40010001, "client_order_id must be no more than 128 characters")
        if cid in self._by_client_id:
            raise ApiError(422, 40010001, "client_order_id must be unique")
        self._check_shares(symbol, side, qty)
        order = _Order(
            id=str(uuid.uuid4()),
            client_order_id=cid,
            symbol=symbol,
            qty=qty,
            side=side,
            type=otype,
            time_in_force=tif,
            limit_price=limit,
            stop_price=stop,
            received=now,
            received_ns=ns,
            eligible=self.data.next_fill_start(now, self.fill_latency, self._fills_done),
            extended_hours=bool(body.get("extended_hours")),
        )
        self._orders[order.id] = order
        self._by_client_id[cid] = order
        if any(start <= now < end for start, end in self.data.session_bounds):
            await self._emit("new", order, now)
        else:
            # Outside the session Alpaca takes the order and routes it at the next open:
            # "accepted", no "new" event yet (the replay does not reach the next open).
            order.status = "accepted"
        return order

    async def _list_orders(self, request: web.Request) -> web.Response:
        q = request.query
        status = q.get("status", "open")
        if status not in ("open", "closed", "all"):
            raise ApiError(422, 40010001, "status must be open, closed or all")
        try:
            limit = min(int(q.get("limit", 50)), 500)
        except ValueError:
            raise ApiError(422, 40010001, "limit must be an integer") from None
        out = [
            o for o in self._orders.values() if status == "all" or (o.is_open == (status == "open"))
        ]
        if q.get("symbols"):
            wanted = set(q["symbols"].split(","))
            out = [o for o in out if o.symbol in wanted]
        if q.get("side"):
            out = [o for o in out if o.side == q["side"]]
        if q.get("after"):
            after = _time(q["after"])
            out = [o for o in out if o.received > after]
        if q.get("until"):
            until = _time(q["until"])
            out = [o for o in out if o.received < until]
        desc = q.get("direction", "desc") != "asc"
        out.sort(key=lambda o: (o.received, o.received_ns), reverse=desc)
        return web.json_response([o.json() for o in out[:limit]])

    def _find(self, order_id: str) -> _Order:
        o = self._orders.get(order_id)
        if o is None:
            raise ApiError(404, 40410000, "order not found")
        return o

    async def _get_order(self, request: web.Request) -> web.Response:
        return web.json_response(self._find(request.match_info["order_id"]).json())

    async def _order_by_client_id(self, request: web.Request) -> web.Response:
        o = self._by_client_id.get(request.query.get("client_order_id", ""))
        if o is None:
            raise ApiError(404, 40410000, "order not found")
        return web.json_response(o.json())

    async def _cancel(self, o: _Order) -> None:
        if not o.is_open:
            raise ApiError(422, 42210000, f'order is already in "{o.status}" state')
        now = self._clock()
        if o.in_broker:
            self.broker.cancel(o.client_order_id, now, "canceled by the client")
        o.status, o.canceled_at, o.updated_at = "canceled", now, now
        await self._emit("canceled", o, now)

    async def _cancel_order(self, request: web.Request) -> web.Response:
        await self._cancel(self._find(request.match_info["order_id"]))
        return web.Response(status=204)

    async def _cancel_all(self, request: web.Request) -> web.Response:
        out = []
        for o in [o for o in self._orders.values() if o.is_open]:
            await self._cancel(o)
            out.append({"id": o.id, "status": 200, "body": o.json()})
        return web.json_response(out, status=207)

    def _committed(self, symbol: str, side: str) -> int:
        """Shares of ``symbol`` that open orders on ``side`` still have to trade."""
        return sum(
            o.qty - o.filled_qty
            for o in self._orders.values()
            if o.is_open and o.symbol == symbol and o.side == side
        )

    def _check_shares(self, symbol: str, side: str, qty: int) -> None:
        """Alpaca's position rules at submission (HTTP 403, code 40310000): no order on one side
        while one on the other is open ("cannot open a long buy while a short sell order is
        open"), and no order that takes a position through zero: a sell of a long (a buy of a
        short) may trade the shares held less those open orders already commit."""
        other = "sell" if side == "buy" else "buy"
        if self._committed(symbol, other):
            opening = "long buy" if side == "buy" else "short sell"
            raise ApiError(403, 40310000, f"cannot open a {opening} while a {other} order is open")
        held = self.broker.ledger.positions.get(symbol, 0)
        closing = (held > 0 and side == "sell") or (held < 0 and side == "buy")
        if closing:
            available = abs(held) - self._committed(symbol, side)
            if qty > available:
                raise ApiError(
                    403,
                    40310000,
                    f"insufficient qty available for order (requested: {qty}, available: "
                    f"{max(available, 0)})",
                )

    # ----------------------------------------------------------------- REST: positions
    def _position_json(self, symbol: str, qty: int) -> dict[str, Any]:
        last = self.broker.last(symbol)
        avg = self._avg_price.get(symbol, Decimal(0))
        market_value = qty * last
        cost_basis = Decimal(qty) * avg
        unrealized = market_value - float(cost_basis)
        plpc = unrealized / abs(float(cost_basis)) if cost_basis else 0.0
        return {
            "asset_id": str(_asset_id(symbol)),
            "symbol": symbol,
            "exchange": "NASDAQ",  # not known from the bars; alpaca-py needs one of its enum
            "asset_class": "us_equity",
            "asset_marginable": True,
            "avg_entry_price": str(avg),
            "qty": str(qty),
            "qty_available": str(
                qty - self._committed(symbol, "sell")
                if qty > 0
                else qty + self._committed(symbol, "buy")
            ),
            "side": "long" if qty > 0 else "short",
            "market_value": repr(market_value),
            "cost_basis": str(cost_basis),
            "unrealized_pl": repr(unrealized),
            "unrealized_plpc": repr(plpc),
            "unrealized_intraday_pl": repr(unrealized),
            "unrealized_intraday_plpc": repr(plpc),
            "current_price": repr(last),
            "lastday_price": repr(last),
            "change_today": "0",
        }

    async def _positions(self, request: web.Request) -> web.Response:
        held = sorted(self._held().items())
        return web.json_response([self._position_json(s, q) for s, q in held])

    async def _position(self, request: web.Request) -> web.Response:
        symbol = request.match_info["symbol"]
        qty = self._held().get(symbol)
        if not qty:
            raise ApiError(404, 40410000, "position does not exist")
        return web.json_response(self._position_json(symbol, qty))

    async def _close(self, symbol: str, qty: int | None) -> _Order:
        held = self._held().get(symbol, 0)
        if not held:
            raise ApiError(404, 40410000, "position does not exist")
        size = abs(held) if qty is None else qty
        if size > abs(held):
            raise ApiError(403, 40310000, f"insufficient qty available for order: {abs(held)}")
        body = {
            "symbol": symbol,
            "qty": size,
            "side": "sell" if held > 0 else "buy",
            "type": "market",
            "time_in_force": "day",
        }
        now = self._clock()
        cid = str(uuid.uuid4())
        ns = time.perf_counter_ns()
        self.orders_received.append({"client_order_id": cid, "replay_ts": now, "ns": ns})
        return await self._new_order(body, cid, now, ns)

    async def _close_position(self, request: web.Request) -> web.Response:
        symbol = request.match_info["symbol"]
        qty = None
        if request.query.get("qty"):
            qty = _whole(request.query["qty"])
            if qty is None:
                raise ApiError(422, 40010001, "qty must be a positive whole number of shares")
        elif request.query.get("percentage"):
            held = abs(self._held().get(symbol, 0))
            qty = int(held * float(request.query["percentage"]) / 100)
        return web.json_response((await self._close(symbol, qty)).json())

    async def _close_all(self, request: web.Request) -> web.Response:
        if request.query.get("cancel_orders", "").lower() == "true":
            for o in [o for o in self._orders.values() if o.is_open]:
                await self._cancel(o)
        out = []
        for symbol in sorted(self._held()):
            o = await self._close(symbol, None)
            out.append({"symbol": symbol, "status": 200, "order_id": o.id, "body": o.json()})
        return web.json_response(out, status=207)

    # ----------------------------------------------------------------- REST: clock, calendar
    async def _get_clock(self, request: web.Request) -> web.Response:
        now = self._clock()
        bounds = self.data.regular_bounds
        is_open = any(o <= now < c for o, c in bounds)
        next_open = next((o for o, _ in bounds if o > now), None)
        next_close = next((c for _, c in bounds if c > now), None)
        if next_open is None or next_close is None:
            later = sessions_between(self.data.calendar, now.date(), now.date() + timedelta(30))
            f = later.frame
            next_open = f.filter(pl.col("open") > now)["open"][0]
            next_close = f.filter(pl.col("close") > now)["close"][0]
        return web.json_response(
            {
                "timestamp": now.astimezone(NEW_YORK).isoformat(),
                "is_open": is_open,
                "next_open": next_open.astimezone(NEW_YORK).isoformat(),
                "next_close": next_close.astimezone(NEW_YORK).isoformat(),
            }
        )

    async def _calendar(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            start = date.fromisoformat(q["start"][:10]) if q.get("start") else None
            end = date.fromisoformat(q["end"][:10]) if q.get("end") else None
        except ValueError:
            raise ApiError(422, 40010001, "start and end must be dates (YYYY-MM-DD)") from None
        start = start or date(self.data.first.year, 1, 1)
        end = end or date(self.data.last.year, 12, 31)
        if end < start:
            return web.json_response([])
        cal = sessions_between(self.data.calendar, start, end).frame
        out = []
        for r in cal.iter_rows(named=True):
            o, c = r["open"].astimezone(NEW_YORK), r["close"].astimezone(NEW_YORK)
            eo, ec = r["ext_open"].astimezone(NEW_YORK), r["ext_close"].astimezone(NEW_YORK)
            out.append(
                {
                    "date": r["session_date"].isoformat(),
                    "open": o.strftime("%H:%M"),
                    "close": c.strftime("%H:%M"),
                    "session_open": eo.strftime("%H%M"),
                    "session_close": ec.strftime("%H%M"),
                }
            )
        return web.json_response(out)

    # ----------------------------------------------------------------- REST: data
    async def _bars(self, request: web.Request) -> web.Response:
        q = request.query
        if not q.get("symbols"):
            raise ApiError(400, 40010001, "symbols is required")
        try:
            minutes = timeframe_minutes(q.get("timeframe", "1Min"))
        except ValueError as e:
            raise ApiError(400, 40010001, str(e)) from None
        frame = self.data.closed(self._clock(), minutes)
        return web.json_response(bars_page(frame, q, self.page_limit))

    # ----------------------------------------------------------------- streams: market data
    async def _send_data(self, c: _DataClient, msgs: list[dict[str, Any]]) -> None:
        if c.ws.closed:
            return
        try:
            if c.binary:
                await c.ws.send_bytes(msgpack.packb(msgs))
            else:
                await c.ws.send_str(json.dumps([_jsonable(m) for m in msgs]))
        except (ConnectionError, RuntimeError):
            with contextlib.suppress(ValueError):
                self._data_clients.remove(c)

    async def _send_bars(self, m: datetime) -> None:
        msgs = list(self.data.messages.get(m, []))
        held = []
        for msg in msgs:
            key = (msg["S"], msg["t"].to_datetime())
            if key in self._late:
                held.append(msg)
                self._deferred[m + self._late.pop(key) * MINUTE].append(msg)
        msgs = [x for x in msgs if not any(x is h for h in held)]
        for due in sorted(d for d in self._deferred if d <= m):
            msgs += self._deferred.pop(due)
        if self._stalled(self._data_stall, m):
            self.bars_missed += [(x["S"], x["t"].to_datetime()) for x in msgs]
            self.bar_sent_ns[m] = time.perf_counter_ns()
            return
        dupes = [x for x in msgs if (x["S"], x["t"].to_datetime()) in self._dupes]
        for c in list(self._data_clients):
            if c.key is None:
                continue
            mine = [x for x in msgs if c.wants("bars", x["S"])]
            if mine:
                await self._send_data(c, mine)
            again = [x for x in dupes if c.wants("bars", x["S"])]
            if again:
                await self._send_data(c, again)
        self._dupes -= {(x["S"], x["t"].to_datetime()) for x in dupes}
        self.bar_sent_ns[m] = time.perf_counter_ns()

    async def _data_ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self.data_connections += 1
        # Like Alpaca: msgpack when the client asks for it (alpaca-py sends this header),
        # JSON otherwise.
        binary = request.headers.get("Content-Type", "").lower() == "application/msgpack"
        c = _DataClient(ws, request, binary=binary)
        await self._send_data(c, [{"T": "success", "msg": "connected"}])
        try:
            async for raw in ws:
                if raw.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
                    continue
                try:
                    if raw.type == WSMsgType.BINARY:
                        msg = msgpack.unpackb(raw.data)
                    else:
                        msg = json.loads(raw.data)
                except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
                    await self._data_error(c, 400, "invalid syntax")
                    continue
                if not isinstance(msg, dict):
                    await self._data_error(c, 400, "invalid syntax")
                    continue
                if not await self._data_action(c, msg):
                    break
        finally:
            with contextlib.suppress(ValueError):
                self._data_clients.remove(c)
        return ws

    async def _data_error(self, c: _DataClient, code: int, text: str) -> None:
        self.stream_errors.append({"code": code, "msg": text})
        await self._send_data(c, [{"T": "error", "code": code, "msg": text}])

    async def _data_action(self, c: _DataClient, msg: dict[str, Any]) -> bool:
        """Handle one client message; False closes the connection."""
        action = msg.get("action")
        if action == "auth":
            if c.key is not None:
                await self._data_error(c, 403, "already authenticated")
                return True
            if msg.get("key") != self.api_key or msg.get("secret") != self.secret_key:
                await self._data_error(c, 402, "auth failed")
                await c.ws.close()
                return False
            if any(o.key == self.api_key and not o.ws.closed for o in self._data_clients):
                await self._data_error(c, 406, "connection limit exceeded")
                await c.ws.close()
                return False
            c.key = self.api_key
            self._data_clients.append(c)
            await self._send_data(c, [{"T": "success", "msg": "authenticated"}])
            return True
        if action in ("subscribe", "unsubscribe"):
            if c.key is None:
                await self._data_error(c, 401, "not authenticated")
                return True
            channels = ("trades", "quotes", "bars", "updatedBars", "dailyBars", "statuses")
            for ch in channels:
                names = msg.get(ch) or []
                if action == "subscribe":
                    c.subs[ch].update(names)
                else:
                    c.subs[ch].difference_update(names)
            confirm: dict[str, Any] = {"T": "subscription"}
            for ch in (*channels, "lulds", "corrections", "cancelErrors"):
                confirm[ch] = sorted(c.subs.get(ch, ()))
            await self._send_data(c, [confirm])
            return True
        await self._data_error(c, 400, "invalid syntax")
        return True

    # ----------------------------------------------------------------- streams: trade updates
    async def _emit(self, event: str, o: _Order, ts: datetime, **extra: str) -> None:
        data: dict[str, Any] = {"event": event, "timestamp": _iso(ts), "order": o.json()}
        data.update({k: v for k, v in extra.items() if k != "reason"})
        msg = {"stream": "trade_updates", "data": data}
        self.trade_updates.append(msg)
        if self._stalled(self._trade_stall, self._clock()):
            self.trade_updates_withheld.append(msg)
            return
        payload = json.dumps(msg).encode()
        for ws, req in list(self._trade_clients):
            try:
                await ws.send_bytes(payload)
            except (ConnectionError, RuntimeError):
                with contextlib.suppress(ValueError):
                    self._trade_clients.remove((ws, req))

    async def _trade_ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self.trade_connections += 1
        entry = (ws, request)
        self._trade_pending.append(entry)
        authed = False
        try:
            async for raw in ws:
                if raw.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
                    continue
                try:
                    msg = json.loads(raw.data)
                except ValueError:
                    await ws.send_bytes(_trade_error("invalid syntax"))
                    continue
                action = msg.get("action") if isinstance(msg, dict) else None
                data = msg.get("data") or {} if isinstance(msg, dict) else {}
                if action in ("authenticate", "auth"):
                    key = data.get("key_id", msg.get("key"))
                    secret = data.get("secret_key", msg.get("secret"))
                    authed = key == self.api_key and secret == self.secret_key
                    status = "authorized" if authed else "unauthorized"
                    answer = {"action": "authenticate", "status": status}
                    if not authed:
                        answer["message"] = "access key verification failed"
                    reply = {"stream": "authorization", "data": answer}
                    await ws.send_bytes(json.dumps(reply).encode())
                    if not authed:
                        break
                elif action == "listen":
                    if not authed:
                        await ws.send_bytes(_trade_error("not authenticated"))
                        continue
                    streams = [s for s in data.get("streams", []) if s == "trade_updates"]
                    if streams and entry not in self._trade_clients:
                        self._trade_clients.append(entry)
                    elif not streams and entry in self._trade_clients:
                        self._trade_clients.remove(entry)
                    reply = {"stream": "listening", "data": {"streams": streams}}
                    await ws.send_bytes(json.dumps(reply).encode())
                else:
                    await ws.send_bytes(_trade_error("invalid syntax"))
        finally:
            for group in (self._trade_pending, self._trade_clients):
                with contextlib.suppress(ValueError):
                    group.remove(entry)
        return ws


def _trade_error(text: str) -> bytes:
    return json.dumps({"stream": "listening", "data": {"error": text}}).encode()


def _jsonable(msg: dict[str, Any]) -> dict[str, Any]:
    out = dict(msg)
    if isinstance(out.get("t"), msgpack.Timestamp):
        out["t"] = out["t"].to_datetime().strftime("%Y-%m-%dT%H:%M:%SZ")
    return out


def _whole(value: Any) -> int | None:
    """A positive whole number of shares from a JSON number or string, else None."""
    try:
        d = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    if not d.is_finite() or d <= 0 or d != d.to_integral_value():
        return None
    return int(d)


def _price(value: Any, name: str, required: bool) -> Decimal | None:
    if value is None:
        if required:
            raise ApiError(422, 40010001, f"{name} is required for this order type")
        return None
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise ApiError(422, 40010001, f"{name} must be a number") from None
    if not d.is_finite() or d <= 0:
        raise ApiError(422, 40010001, f"{name} must be > 0")
    return d


def _time(text: str) -> datetime:
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(422, 40010001, f"invalid timestamp {text!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)
