"""alpaca-py behind the live session's ports: :class:`AlpacaBroker` (REST) and
:class:`AlpacaFeed` (the bar and trade-update websockets).

- **Idempotent orders.** Every order carries its deterministic ``client_order_id``. alpaca-py
  retries a POST that met 429 or 504; if the broker had taken the first one, the retry meets
  HTTP 422 "client_order_id must be unique": that is answered by looking the order up by its
  client id, never by sending again. A POST that times out or loses its connection is looked
  up the same way before it is sent again (with the same id).
- **Transient errors only are retried** (429 with its ``Retry-After``, 500/502/503/504,
  timeouts, dropped connections), with exponential backoff and full jitter, a bounded number
  of times; anything else raises :class:`~pipelines.live.broker.BrokerError` naming the call.
- **Timeouts.** alpaca-py's REST client sets none; every request here has one.
- **Streams in our own loop.** ``stream.run()`` calls ``asyncio.run`` (alpaca-py issue #618),
  which cannot nest in a running loop and cannot be stopped from outside cleanly; each stream
  runs ``_run_forever()`` in a thread with its own event loop, and is stopped with its
  ``stop_ws()`` coroutine on that loop. The bar stream has alpaca-py's ``data_timeout`` set
  (off by default), and the session keeps its own watchdog on the session clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import polars as pl
import requests

from pipelines.execution.orders import Order
from pipelines.live.aggregate import MinuteBar
from pipelines.live.broker import (
    BrokerAccount,
    BrokerError,
    BrokerOrder,
    FeedEvent,
    OrderRefused,
    TradeUpdate,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class AlpacaConnection:
    """Where and how to reach Alpaca. ``trading_url`` / ``data_url`` / ``stream_url`` override
    Alpaca's (None: Alpaca's own for ``paper``), ``feed`` the market-data feed (iex, sip).
    Keys are never logged or shown (``repr`` hides them)."""

    api_key: str
    secret_key: str
    paper: bool = True
    trading_url: str | None = None
    data_url: str | None = None
    stream_url: str | None = None
    feed: str = "iex"
    timeout_s: float = 10.0
    retries: int = 4
    backoff_s: float = 0.5
    data_timeout_s: float = 60.0

    def __repr__(self) -> str:
        return (
            f"AlpacaConnection(paper={self.paper}, trading_url={self.trading_url!r}, "
            f"data_url={self.data_url!r}, stream_url={self.stream_url!r}, feed={self.feed!r})"
        )


PAPER_TRADING_HOST = "paper-api.alpaca.markets"
LIVE_TRADING_HOST = "api.alpaca.markets"
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


def _host(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    if not parts.scheme or not parts.hostname:
        raise ValueError(f"{url!r} is not an absolute URL (scheme://host[:port])")
    return parts.scheme, parts.hostname.lower()


def _loopback(host: str) -> bool:
    return host in _LOOPBACK or host.startswith("127.")


def check_endpoints(environment: str, conn: AlpacaConnection) -> None:
    """Refuse a connection whose endpoints do not belong to ``environment``.

    ``local`` reaches loopback hosts only (the project's own server), so that no key in the
    environment can place a real order from a test or a demo. ``paper`` sends orders to
    Alpaca's paper host (or loopback) only, never to the live host, whatever
    ``APCA_API_BASE_URL`` says; ``live`` to the live host only. Market data and streams of
    ``paper``/``live`` go to an ``alpaca.markets`` host (or loopback). A host other than
    loopback needs https/wss: the keys travel in the headers.

    Example: ``check_endpoints("paper", AlpacaConnection(k, s, trading_url=
    "https://api.alpaca.markets"))`` raises: that is the real-money host.
    """
    urls = {"trading": conn.trading_url, "data": conn.data_url, "stream": conn.stream_url}
    if environment == "local":
        for kind, url in urls.items():
            if url is None:
                raise ValueError(f"the local environment needs an explicit {kind} URL")
            _, host = _host(url)
            if not _loopback(host):
                raise ValueError(
                    f"the local environment reaches the project's own server on loopback only; "
                    f"its {kind} URL {url!r} is {host}: set QUANTDAG_ALPACA_URL to "
                    "http://127.0.0.1:<port>, or use QUANTDAG_ENV=paper for Alpaca's paper account"
                )
        return
    if environment not in ("paper", "live"):
        raise ValueError(f"unknown environment {environment!r}: local, paper or live")
    if conn.paper != (environment == "paper"):
        raise ValueError(f"the {environment} environment with paper={conn.paper}")
    allowed = PAPER_TRADING_HOST if environment == "paper" else LIVE_TRADING_HOST
    for kind, url in urls.items():
        if url is None:
            continue
        scheme, host = _host(url)
        if _loopback(host) and environment == "paper":
            continue
        if kind == "trading" and host != allowed:
            raise ValueError(
                f"the {environment} environment sends orders to {allowed} only, but its trading "
                f"URL (APCA_API_BASE_URL) is {url!r}: unset it, or choose the environment that "
                "host belongs to (QUANTDAG_ENV)"
            )
        if not (host == "alpaca.markets" or host.endswith(".alpaca.markets")):
            raise ValueError(
                f"the {environment} environment's {kind} URL {url!r} is not an alpaca.markets "
                "host: unset it"
            )
        if scheme not in ("https", "wss"):
            raise ValueError(f"the {kind} URL {url!r} must use https/wss: keys travel in it")


def _status(exc: BaseException) -> int | None:
    from alpaca.common.exceptions import APIError

    if isinstance(exc, APIError):
        return exc.status_code  # type: ignore[no-any-return]
    return None


def _retry_after(exc: BaseException) -> float | None:
    http = getattr(exc, "_http_error", None)
    response = getattr(http, "response", None)
    value = response.headers.get("Retry-After") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _transient(exc: BaseException) -> bool:
    if isinstance(
        exc, requests.Timeout | requests.ConnectionError | requests.exceptions.ChunkedEncodingError
    ):
        return True
    status = _status(exc)
    return status is not None and status in TRANSIENT_STATUS


class AlpacaBroker:
    """:class:`~pipelines.live.broker.BrokerPort` over alpaca-py's ``TradingClient`` and
    ``StockHistoricalDataClient``. ``sleep`` and ``rng`` are parameters for tests."""

    def __init__(
        self,
        conn: AlpacaConnection,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        from alpaca.data.historical import StockHistoricalDataClient

        self.conn = conn
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._local = threading.local()
        self.requests = 0
        self.errors: dict[str, int] = {}
        """Failed broker calls (each attempt), by HTTP status or exception type."""
        self.rate_limit_remaining: int | None = None
        """The trading API's ``X-RateLimit-Remaining`` of the latest answer that had one."""
        self._errors_lock = threading.Lock()
        self.data = StockHistoricalDataClient(
            conn.api_key, conn.secret_key, url_override=conn.data_url
        )
        _configure(self.data, conn)

    @property
    def trading(self) -> Any:
        """This thread's ``TradingClient`` (orders are sent from a few threads at once, and a
        requests session is not made to be shared between threads)."""
        client = getattr(self._local, "client", None)
        if client is None:
            from alpaca.trading.client import TradingClient

            c = self.conn
            client = TradingClient(
                c.api_key, c.secret_key, paper=c.paper, url_override=c.trading_url
            )
            _configure(client, c, on_response=self._read_rate_limit)
            self._local.client = client
        return client

    def _call(self, what: str, fn: Callable[[], T], answers: tuple[int, ...] = ()) -> T:
        """``fn()``, retried on transient errors; ``answers``: HTTP statuses that answer the
        question (a lookup's 404) rather than fail it: raised, not counted as errors."""
        attempt = 0
        while True:
            self.requests += 1
            try:
                return fn()
            except Exception as exc:
                if _status(exc) not in answers:
                    self._count_error(exc)
                if not _transient(exc) or attempt >= self.conn.retries:
                    raise BrokerError(f"Alpaca {what} failed: {_describe(exc)}") from exc
                wait = _retry_after(exc)
                if wait is None:
                    wait = self._rng.uniform(0, self.conn.backoff_s * 2**attempt)
                log.warning("Alpaca %s: %s; retrying in %.2f s", what, _describe(exc), wait)
                self._sleep(wait)
                attempt += 1

    def _count_error(self, exc: BaseException) -> None:
        status = _status(exc)
        cause = str(status) if status is not None else type(exc).__name__
        with self._errors_lock:
            self.errors[cause] = self.errors.get(cause, 0) + 1

    def error_counts(self) -> dict[str, int]:
        """A copy of :attr:`errors` (the order threads add to it)."""
        with self._errors_lock:
            return dict(self.errors)

    def _read_rate_limit(self, response: requests.Response) -> None:
        remaining = response.headers.get("X-RateLimit-Remaining")
        if remaining is not None and remaining.strip().isdigit():
            self.rate_limit_remaining = int(remaining)

    # -- reads -------------------------------------------------------------------------------

    def account(self) -> BrokerAccount:
        a: Any = self._call("GET /v2/account", self.trading.get_account)
        return BrokerAccount(
            float(a.equity),
            float(a.buying_power),
            Decimal(str(a.cash)),
            float(a.long_market_value or 0),
            float(a.short_market_value or 0),
        )

    def positions(self) -> dict[str, int]:
        rows: Any = self._call("GET /v2/positions", self.trading.get_all_positions)
        out = {}
        for p in rows:
            qty = Decimal(str(p.qty))
            if qty != qty.to_integral_value():
                raise BrokerError(
                    f"{p.symbol}: a fractional position of {qty} shares; the strategy trades "
                    "whole shares: close the fraction by hand"
                )
            if qty:
                out[p.symbol] = int(qty)
        return out

    def open_orders(self) -> list[BrokerOrder]:
        from alpaca.trading.enums import QueryOrderStatus
        from alpaca.trading.requests import GetOrdersRequest

        req = GetOrdersRequest(status=QueryOrderStatus.OPEN, limit=500, nested=False)
        rows: Any = self._call(
            "GET /v2/orders?status=open", lambda: self.trading.get_orders(filter=req)
        )
        return [_order(o) for o in rows]

    def order(self, client_order_id: str) -> BrokerOrder | None:
        try:
            o = self._call(
                "GET /v2/orders:by_client_order_id",
                lambda: self.trading.get_order_by_client_id(client_order_id),
                answers=(404,),
            )
        except BrokerError as exc:
            if exc.__cause__ is not None and _status(exc.__cause__) == 404:
                return None
            raise
        return _order(o)

    def clock(self) -> datetime:
        c: Any = self._call("GET /v2/clock", self.trading.get_clock)
        ts: datetime = c.timestamp
        return ts.astimezone(UTC)

    def minute_bars(self, symbols: Sequence[str], start: datetime, end: datetime) -> pl.DataFrame:
        from alpaca.data.enums import DataFeed
        from alpaca.data.requests import StockBarsRequest
        from alpaca.data.timeframe import TimeFrame

        req = StockBarsRequest(
            symbol_or_symbols=list(symbols),
            timeframe=TimeFrame.Minute,  # type: ignore[arg-type]
            start=start,
            end=end,
            feed=DataFeed(self.conn.feed),
        )
        got: Any = self._call("GET /v2/stocks/bars", lambda: self.data.get_stock_bars(req))
        rows = [
            (s, b.timestamp.astimezone(UTC), b.open, b.high, b.low, b.close, float(b.volume))
            for s, bars in got.data.items()
            for b in bars
        ]
        frame = pl.DataFrame(
            rows,
            schema={
                "symbol": pl.String,
                "ts": pl.Datetime("us", "UTC"),
                "open": pl.Float64,
                "high": pl.Float64,
                "low": pl.Float64,
                "close": pl.Float64,
                "volume": pl.Float64,
            },
            orient="row",
        )
        return frame.filter(pl.col("ts") >= start, pl.col("ts") < end).sort("ts", "symbol")

    # -- writes ------------------------------------------------------------------------------

    def submit(self, order: Order) -> BrokerOrder:
        from alpaca.trading.enums import OrderSide, TimeInForce
        from alpaca.trading.requests import LimitOrderRequest, MarketOrderRequest

        common: dict[str, Any] = {
            "symbol": order.symbol,
            "qty": order.quantity,
            "side": OrderSide.BUY if order.side == "buy" else OrderSide.SELL,
            "time_in_force": TimeInForce.DAY,
            "client_order_id": order.client_order_id,
        }
        if order.type == "market":
            req: Any = MarketOrderRequest(**common)
        elif order.type == "limit":
            req = LimitOrderRequest(**common, limit_price=float(order.limit_price or 0))
        else:
            raise BrokerError(f"{order.client_order_id}: {order.type} orders are not supported")
        attempt = 0
        while True:
            self.requests += 1
            try:
                return _order(self.trading.submit_order(req))
            except Exception as exc:
                status = _status(exc)
                taken = status == 422 and "client_order_id" in str(exc)
                if not taken:
                    self._count_error(exc)
                if taken:
                    # Taken before (a retried POST, or a resend after a crash): the broker's
                    # order is the answer.
                    found = self.order(order.client_order_id)
                    if found is not None:
                        return found
                if status in (403, 422):
                    raise OrderRefused(
                        f"Alpaca refused {order.client_order_id} ({order.side} "
                        f"{order.quantity} {order.symbol}): {_describe(exc)}"
                    ) from exc
                if not _transient(exc) or attempt >= self.conn.retries:
                    raise BrokerError(
                        f"Alpaca POST /v2/orders for {order.client_order_id} ({order.side} "
                        f"{order.quantity} {order.symbol}) failed: {_describe(exc)}"
                    ) from exc
                # The order may have been taken: look before sending it again.
                found = self.order(order.client_order_id)
                if found is not None:
                    return found
                wait = _retry_after(exc)
                if wait is None:
                    wait = self._rng.uniform(0, self.conn.backoff_s * 2**attempt)
                self._sleep(wait)
                attempt += 1

    def cancel(self, order_id: str) -> None:
        try:
            self._call(
                f"DELETE /v2/orders/{order_id}",
                lambda: self.trading.cancel_order_by_id(order_id),
                answers=(404, 422),
            )
        except BrokerError as exc:
            if exc.__cause__ is not None and _status(exc.__cause__) in (404, 422):
                return  # final already (filled, cancelled, expired)
            raise


def _configure(
    client: Any,
    conn: AlpacaConnection,
    on_response: Callable[[requests.Response], None] | None = None,
) -> None:
    # alpaca-py's own retry of 429/504 waits 3 s each time; ours backs off with jitter and
    # honours Retry-After, so its own is cut to one. Its session has no timeout: give every
    # request one.
    client._retry = 1
    client._retry_wait = 1
    session = client._session
    session.request = partial(session.request, timeout=conn.timeout_s)
    if on_response is not None:
        session.hooks["response"].append(lambda r, *args, **kwargs: on_response(r))


def _describe(exc: BaseException) -> str:
    status = _status(exc)
    if status is not None:
        return f"HTTP {status}: {str(exc)[:200]}"
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def _enum(value: Any) -> str:
    return str(getattr(value, "value", value))


def _order(o: Any) -> BrokerOrder:
    price = getattr(o, "filled_avg_price", None)
    return BrokerOrder(
        str(o.id),
        str(o.client_order_id),
        str(o.symbol),
        "buy" if _enum(o.side) == "buy" else "sell",
        int(Decimal(str(o.qty))),
        int(Decimal(str(o.filled_qty or 0))),
        None if price in (None, "") else Decimal(str(price)),
        _enum(o.status),
    )


class AlpacaFeed:
    """:class:`~pipelines.live.broker.FeedPort`: alpaca-py's ``StockDataStream`` (minute bars
    and their corrections) and ``TradingStream`` (trade updates), each in a thread of its own
    with its own event loop; events reach the session through a thread-safe queue."""

    def __init__(self, conn: AlpacaConnection, *, trades: bool = True) -> None:
        self.conn = conn
        self.trades = trades
        self.events: queue.Queue[FeedEvent] = queue.Queue()
        self._symbols: tuple[str, ...] = ()
        self._threads: dict[
            str, tuple[threading.Thread, Any, asyncio.AbstractEventLoop, asyncio.Task[None]]
        ] = {}

    def start(self, symbols: Sequence[str]) -> None:
        self._symbols = tuple(symbols)
        self._open("data")
        if self.trades:
            self._open("trades")

    def get(self, timeout: float) -> FeedEvent | None:
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            return None

    def reconnect(self, which: Literal["data", "trades"]) -> None:
        self._close(which)
        self._open(which)

    def stop(self) -> None:
        for which in list(self._threads):
            self._close(which)

    def _stream(self, which: str) -> Any:
        c = self.conn
        if which == "data":
            from alpaca.data.enums import DataFeed
            from alpaca.data.live.stock import StockDataStream

            data = StockDataStream(
                c.api_key,
                c.secret_key,
                feed=DataFeed(c.feed),
                url_override=c.stream_url and f"{c.stream_url}/v2/{c.feed}",
                data_timeout=c.data_timeout_s,
            )
            data.subscribe_bars(self._on_bar, *self._symbols)
            data.subscribe_updated_bars(self._on_updated_bar, *self._symbols)
            return data
        from alpaca.trading.stream import TradingStream

        trades = TradingStream(
            c.api_key,
            c.secret_key,
            paper=c.paper,
            url_override=f"{c.stream_url}/stream" if c.stream_url else None,  # type: ignore[arg-type]
        )
        trades.subscribe_trade_updates(self._on_trade)
        return trades

    def _open(self, which: str) -> None:
        stream = self._stream(which)
        loop = asyncio.new_event_loop()
        task: asyncio.Task[None] = loop.create_task(stream._run_forever())

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(task)
            except asyncio.CancelledError:
                pass
            finally:
                with contextlib.suppress(Exception):
                    loop.run_until_complete(stream.close())
                loop.close()

        thread = threading.Thread(target=serve, name=f"alpaca-{which}", daemon=True)
        thread.start()
        self._threads[which] = (thread, stream, loop, task)

    def _close(self, which: str) -> None:
        entry = self._threads.pop(which, None)
        if entry is None:
            return
        thread, stream, loop, task = entry
        # alpaca-py's loops look at their stop flag only between receives (up to 5 s): set the
        # flag, then cancel the task so that a wait in the middle of a receive ends at once.
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stream.stop_ws(), loop).result(timeout=2)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(task.cancel)
        thread.join(timeout=10)
        if thread.is_alive():
            log.warning("the %s stream's thread did not stop within 10 s", which)

    async def _on_bar(self, bar: Any) -> None:
        self.events.put(FeedEvent("bar", bar=_minute(bar), received=time.perf_counter_ns()))

    async def _on_updated_bar(self, bar: Any) -> None:
        self.events.put(FeedEvent("updated_bar", bar=_minute(bar), received=time.perf_counter_ns()))

    async def _on_trade(self, update: Any) -> None:
        price = getattr(update, "price", None)
        qty = getattr(update, "qty", None)
        self.events.put(
            FeedEvent(
                "trade",
                trade=TradeUpdate(
                    _enum(update.event),
                    _order(update.order),
                    update.timestamp.astimezone(UTC),
                    getattr(update, "execution_id", None) and str(update.execution_id),
                    None if qty is None else int(Decimal(str(qty))),
                    None if price is None else Decimal(str(price)),
                ),
                received=time.perf_counter_ns(),
            )
        )


def _minute(bar: Any) -> MinuteBar:
    return MinuteBar(
        str(bar.symbol),
        bar.timestamp.astimezone(UTC),
        float(bar.open),
        float(bar.high),
        float(bar.low),
        float(bar.close),
        float(bar.volume),
    )
