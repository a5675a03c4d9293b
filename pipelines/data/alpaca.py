"""Alpaca historical bars through alpaca-py's ``StockHistoricalDataClient``.

Pagination is done here, not by alpaca-py: its ``get_stock_bars`` follows ``next_page_token`` in
a loop with no bound and no check that the token moves, so a faulty server can keep it busy for
ever. Each page is requested through the client's ``get`` instead (alpaca-py still builds the URL
and the key headers and maps HTTP errors to ``APIError``). A window is fetched in chunks of
``chunk_days``; a chunk may take at most ``max_pages`` pages, and a token sent twice is an error.

Each page is retried on the named transient failures only (HTTP 429 and 5xx, a dropped or refused
connection, a timeout, a 2xx body that is not the JSON Alpaca sends, such as a proxy's HTML page
or a truncated body) with capped exponential backoff and full jitter; anything else, and a page
that keeps failing, raises :class:`~pipelines.data.normalise.SourceError` with a one-line message
naming the URL, the symbols, the window and what was received (never a key or secret). A page's
bars are kept only once the whole page has been read and checked, so a connection dropped
mid-page loses nothing and duplicates nothing.

Every request has a connect and a read timeout: alpaca-py's ``RESTClient`` calls its
``requests.Session`` without one, so the client is given a session that adds them. The read
timeout bounds each wait on the socket, not the whole response.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl
import requests
import urllib3
from alpaca.common.enums import BaseURL
from alpaca.common.exceptions import APIError
from alpaca.data.enums import Adjustment, DataFeed
from alpaca.data.historical.stock import StockHistoricalDataClient
from alpaca.data.requests import StockBarsRequest
from alpaca.data.timeframe import TimeFrame, TimeFrameUnit

from pipelines.config import AlpacaSourceConfig, ColumnMap
from pipelines.data.normalise import SourceError, normalise_frame
from pipelines.data.schema import RAW_SCHEMA
from pipelines.timeframes import Timeframe

TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.Timeout,
    # A body that does not decode (a corrupt gzip stream) was damaged on the way.
    requests.exceptions.ContentDecodingError,
)
PAGE_SIZE = 10_000
"""Bars asked for per page: Alpaca's maximum ``limit``."""
FEED_DELAY_MINUTES = {"iex": 1, "sip": 15}
"""Minutes after a bar closes until the feed's history of it is final, per feed, when
``feed_delay_minutes`` is not set. ``sip``: the free plan may not query the last 15 minutes of SIP
data (Alpaca answers 403); ``iex`` is real time, and one minute leaves room for late trades that
update a bar just after it closes."""
ALPACA_COLUMNS = ColumnMap(
    symbol="symbol",
    timestamp="t",
    open="o",
    high="h",
    low="l",
    close="c",
    volume="v",
    vwap="vw",
    trade_count="n",
)
_BARS_PATH = "/stocks/bars"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NEW_YORK = ZoneInfo("America/New_York")
_SHOWN = 100
_NUMBERS: frozenset[type] = frozenset({int, float, type(None)})
_TEXT: frozenset[type] = frozenset({str, type(None)})


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in ``[0, min(cap, base * 2**attempt)]`` seconds.

    Example: attempt 3 with base 1 s and cap 60 s waits between 0 and 8 s.
    """
    return rng.uniform(0.0, min(cap, base * 2**attempt))


class _Malformed(Exception):
    """A 2xx answer that is not a page of bars; ``what`` says what came instead."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class _Redirected(Exception):
    def __init__(self, status: int, location: str) -> None:
        super().__init__(f"HTTP {status} to {location}")
        self.status = status
        self.location = location


class _TimeoutSession(requests.Session):
    """A session that gives every request ``timeout`` (connect, read seconds) unless the caller
    passes one, reads the body within ``deadline_s`` seconds in all (a server trickling bytes
    never trips the per-read timeout; the status line and headers are bounded by the read
    timeout per wait only), and refuses redirects (alpaca-py does not follow them; a
    3xx would otherwise look like an empty page)."""

    def __init__(self, timeout: tuple[float, float], deadline_s: float = 120.0) -> None:
        super().__init__()
        self.timeout = timeout
        self.deadline_s = deadline_s

    def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> requests.Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        kwargs["stream"] = True
        deadline = time.monotonic() + self.deadline_s
        response = super().request(method, url, *args, **kwargs)
        if response.is_redirect:
            response.close()
            raise _Redirected(response.status_code, response.headers.get("location", "?"))
        body = bytearray()
        try:
            # read1 returns whatever has arrived, so the deadline is checked however slowly
            # the bytes come (iter_content would wait for a whole chunk first).
            while chunk := response.raw.read1(65536, decode_content=True):
                body += chunk
                if time.monotonic() > deadline:
                    raise requests.exceptions.Timeout(
                        f"the response took longer than {self.deadline_s:g} s in all"
                    )
        # The errors requests itself raises when it reads a body (Response.iter_content).
        except urllib3.exceptions.ProtocolError as exc:
            raise requests.exceptions.ChunkedEncodingError(exc) from None
        except urllib3.exceptions.ReadTimeoutError as exc:
            raise requests.exceptions.ReadTimeout(exc) from None
        except urllib3.exceptions.DecodeError as exc:
            raise requests.exceptions.ContentDecodingError(exc) from None
        finally:
            response.close()
        response._content = bytes(body)
        response._content_consumed = True  # type: ignore[attr-defined]
        return response


def _snippet(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _SHOWN else flat[:_SHOWN] + "..."


def _as_text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


def _frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """The bars as a frame, nothing lost: a field whose values are not all numbers or all text
    (polars would null what does not fit the type it infers) is passed on as text, and the
    normaliser marks each value that does not parse."""
    kinds: dict[str, set[type]] = {}
    for row in rows:
        for k, v in row.items():
            kinds.setdefault(k, set()).add(type(v))
    mixed = {k for k, seen in kinds.items() if not (seen <= _NUMBERS or seen <= _TEXT)}
    if mixed:
        rows = [{k: _as_text(v) if k in mixed else v for k, v in r.items()} for r in rows]
    try:
        return pl.DataFrame(rows, infer_schema_length=None)
    except (pl.exceptions.PolarsError, OverflowError, TypeError, ValueError):
        # An integer beyond 64 bits, say: all as text.
        return pl.DataFrame(
            [{k: _as_text(v) for k, v in r.items()} for r in rows], infer_schema_length=None
        )


def _status(exc: APIError) -> int | None:
    try:
        return int(exc.status_code)
    except (AttributeError, TypeError, ValueError):
        return None


def _page_of_bars(body: object) -> tuple[Mapping[str, list[dict[str, Any]]], str | None]:
    """The bars by symbol and the next page token of one decoded answer, or :class:`_Malformed`."""
    if body is None:
        raise _Malformed("an empty body")
    if not isinstance(body, dict):
        raise _Malformed(f"JSON that is not an object: {_snippet(json.dumps(body))!r}")
    if "bars" not in body:
        raise _Malformed(f"a JSON object without 'bars': {_snippet(json.dumps(body))!r}")
    bars = body["bars"] if body["bars"] is not None else {}
    token = body.get("next_page_token")
    if not isinstance(bars, dict) or not all(
        isinstance(v, list) and all(isinstance(b, dict) for b in v) for v in bars.values()
    ):
        raise _Malformed(
            f"'bars' that is not an object of lists of bars: {_snippet(json.dumps(bars))!r}"
        )
    if token is not None and not isinstance(token, str):
        raise _Malformed(f"a next_page_token that is not a string: {_snippet(json.dumps(token))!r}")
    return bars, token or None


class AlpacaBarSource:
    """Bars of the configured timeframe from Alpaca's market-data API.

    Prices are on the corporate-action basis :attr:`adjustment` (``all`` by default: split and
    dividend adjusted, as research needs; raw prices turn a split into a fake return). Live
    trading must use the same basis as the model's training data. ``sleep`` and ``rng`` are
    injectable so that tests neither wait nor vary.

    Example::

        source = AlpacaBarSource(AlpacaSourceConfig(), Timeframe.parse("15m"),
                                 api_key=os.environ["APCA_API_KEY_ID"],
                                 secret_key=os.environ["APCA_API_SECRET_KEY"])
        end = source.covered_until(as_of)
        bars = source.fetch(["AAPL"], start, end, ["AAPL"])
    """

    def __init__(
        self,
        config: AlpacaSourceConfig,
        timeframe: Timeframe,
        *,
        api_key: str,
        secret_key: str,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if not api_key or not secret_key:
            raise SourceError(
                "Alpaca credentials are missing: set APCA_API_KEY_ID and APCA_API_SECRET_KEY "
                "in the environment"
            )
        for variable, value in (("APCA_API_KEY_ID", api_key), ("APCA_API_SECRET_KEY", secret_key)):
            if not (value.isascii() and value.isprintable()) or value != value.strip():
                raise SourceError(
                    f"{variable} holds whitespace or characters that cannot be sent in an HTTP "
                    "header: copy the key again from the Alpaca dashboard"
                )
        self.config = config
        self.timeframe = timeframe
        self.client = StockHistoricalDataClient(
            api_key=api_key,
            secret_key=secret_key,
            raw_data=True,
            url_override=config.url_override,
        )
        # alpaca-py would otherwise retry 429/504 itself with a fixed 3 s wait and no jitter, and
        # send requests without a timeout; the retry policy and the timeouts are ours.
        self.client._retry = 0
        self.client._session = _TimeoutSession(self.timeout, config.response_timeout_s)
        self.url = f"{config.url_override or BaseURL.DATA.value}/v2{_BARS_PATH}"
        self._secrets = (api_key, secret_key)
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.requests_made = 0
        self.retries = 0

    @property
    def name(self) -> str:
        """``alpaca:<feed>:<adjustment>``. The adjustment is part of the name because stored
        coverage is kept per source: bars on another price basis are another source's, and
        changing the basis fetches the history again rather than mixing the two."""
        return f"alpaca:{self.config.feed}:{self.config.adjustment}"

    def file_names(self, symbols: Sequence[str] | None) -> None:
        """None: the source has no files (its quarantine rows name request pages)."""
        return None

    @property
    def adjustment(self) -> str:
        """The corporate-action basis of the prices: ``raw``, ``split``, ``dividend`` or ``all``.
        Record it with the data; live trading must use the basis the model was trained on."""
        return self.config.adjustment

    @property
    def timeout(self) -> tuple[float, float]:
        """``(connect, read)`` timeout of every request, in seconds."""
        return (self.config.connect_timeout_s, self.config.read_timeout_s)

    @property
    def feed_delay(self) -> timedelta:
        """How long after a bar closes the feed's history of it is final (see
        :data:`FEED_DELAY_MINUTES`). Example: 15 minutes for ``sip``."""
        minutes = self.config.feed_delay_minutes
        return timedelta(
            minutes=FEED_DELAY_MINUTES[self.config.feed] if minutes is None else minutes
        )

    def covered_until(self, as_of: datetime) -> datetime:
        """The latest instant up to which this source's bars are final at ``as_of`` (UTC): the
        feed delay is taken off ``as_of`` and the result floored to the timeframe's bar grid
        (UTC multiples of the bar length; New York midnights for ``1d``), so that exactly the bars
        whose end is at or before it count as covered. Fetch no further than it.

        Example: 15-minute bars, ``sip`` (15 minutes' delay), ``as_of`` 15:31 UTC gives 15:15:
        the 15:00-15:15 bar is final, the 15:15-15:30 bar may still change.
        """
        if as_of.tzinfo is None:
            raise ValueError(f"as_of {as_of} has no time zone; pass an aware UTC datetime")
        final = as_of.astimezone(UTC) - self.feed_delay
        if self.timeframe.is_daily:
            midnight = final.astimezone(_NEW_YORK).replace(
                hour=0, minute=0, second=0, microsecond=0
            )
            return midnight.astimezone(UTC)
        step = self.timeframe.duration
        return _EPOCH + (final - _EPOCH) // step * step

    def _timeframe(self) -> TimeFrame:
        if self.timeframe.is_daily:
            return TimeFrame(1, TimeFrameUnit.Day)
        if self.timeframe.minutes % 60 == 0:
            return TimeFrame(self.timeframe.minutes // 60, TimeFrameUnit.Hour)
        return TimeFrame(self.timeframe.minutes, TimeFrameUnit.Minute)

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            for form in sorted({secret, repr(secret)[1:-1]}, key=len, reverse=True):
                text = text.replace(form, "***")
        return text

    def _shown(self, text: str) -> str:
        return repr(_snippet(self._redact(text)))

    def _params(self, symbols: Sequence[str], start: datetime, end: datetime) -> dict[str, Any]:
        request = StockBarsRequest(
            symbol_or_symbols=list(symbols),
            timeframe=self._timeframe(),
            start=start,
            # Alpaca's end is inclusive; the window is half-open.
            end=end - timedelta(microseconds=1),
            limit=PAGE_SIZE,
            feed=DataFeed(self.config.feed),
            adjustment=Adjustment(self.config.adjustment),
        )
        return {
            k: v.value if isinstance(v, Enum | TimeFrame) else v
            for k, v in request.to_request_fields().items()
        }

    def _where(self, symbols: Sequence[str], start: datetime, end: datetime, page: int) -> str:
        shown = ",".join(symbols[:5]) + (
            f" and {len(symbols) - 5} more" if len(symbols) > 5 else ""
        )
        return f"{self.url} ({shown}, {start:%Y-%m-%dT%H:%MZ}..{end:%Y-%m-%dT%H:%MZ}, page {page})"

    def _page(
        self, params: dict[str, Any], where: str
    ) -> tuple[Mapping[str, list[dict[str, Any]]], str | None]:
        failure = ""
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                self.retries += 1
                self.sleep(
                    backoff_delay(
                        attempt - 1, self.config.backoff_base_s, self.config.backoff_cap_s, self.rng
                    )
                )
            self.requests_made += 1
            try:
                return _page_of_bars(self.client.get(_BARS_PATH, dict(params)))
            except APIError as exc:
                status = _status(exc)
                if status in (401, 403):
                    raise SourceError(
                        f"Alpaca refused the credentials or the feed (HTTP {status}, "
                        f"{self._shown(str(exc))}) for {where}: check APCA_API_KEY_ID and "
                        f"APCA_API_SECRET_KEY and that the subscription covers feed "
                        f"{self.config.feed!r}"
                    ) from None
                if status not in TRANSIENT_STATUS:
                    raise SourceError(
                        f"Alpaca answered HTTP {status} ({self._shown(str(exc))}) for {where}: "
                        "check the symbols, window and source settings"
                    ) from None
                failure = f"HTTP {status}: {self._shown(str(exc))}"
            except requests.exceptions.JSONDecodeError as exc:
                failure = f"a body that is not JSON: {self._shown(exc.doc)}"
            except _Malformed as exc:
                failure = self._redact(exc.what)
            except _Redirected as exc:
                raise SourceError(
                    f"Alpaca answered a redirect (HTTP {exc.status} to "
                    f"{self._shown(exc.location)}) for {where}: set url_override to the data "
                    "API's base URL, e.g. https://data.alpaca.markets"
                ) from None
            except TRANSIENT_ERRORS as exc:
                failure = type(exc).__name__
            except requests.exceptions.RequestException as exc:
                raise SourceError(
                    f"the request for {where} failed ({type(exc).__name__}: "
                    f"{self._shown(str(exc))}): check url_override"
                ) from None
        raise SourceError(
            f"Alpaca bars for {where} still failed after {self.config.max_retries + 1} tries "
            f"(last: {failure}); the service may be rate-limiting, down or behind a faulty "
            "proxy: try again later or raise max_retries"
        )

    def _chunk(self, symbols: Sequence[str], start: datetime, end: datetime) -> pl.DataFrame:
        params = self._params(symbols, start, end)
        rows: list[dict[str, Any]] = []
        seen: set[str] = set()
        token: str | None = None
        for page in range(1, self.config.max_pages + 1):
            where = self._where(symbols, start, end, page)
            bars, token = self._page(
                params if token is None else {**params, "page_token": token}, where
            )
            rows.extend({"symbol": sym, **bar} for sym, per in bars.items() for bar in per)
            if token is None:
                break
            if token in seen:
                raise SourceError(
                    f"Alpaca sent next_page_token {self._shown(token)} a second time for {where}; "
                    "the pages would never end, so the fetch stops: a fault of the server or a "
                    "proxy, try again later"
                )
            seen.add(token)
        else:
            raise SourceError(
                f"Alpaca had more than max_pages={self.config.max_pages} pages for {where}: "
                "lower chunk_days, fetch fewer symbols at once, or raise max_pages"
            )
        if not rows:
            return pl.DataFrame(schema=RAW_SCHEMA)
        frame = _frame(rows)
        for col in ("vw", "n"):
            if col not in frame.columns:
                frame = frame.with_columns(pl.lit(None).alias(col))
        return normalise_frame(
            frame,
            ALPACA_COLUMNS,
            timezone=None,
            label="start",
            timeframe=self.timeframe,
            source=self.name,
            source_file=f"{self.name}/{start:%Y-%m-%dT%H:%M}..{end:%Y-%m-%dT%H:%M}",
        )

    def fetch(
        self, symbols: Sequence[str], start: datetime, end: datetime, universe: Sequence[str]
    ) -> pl.DataFrame:
        """Raw rows of ``symbols`` with bar start in ``[start, end)`` (UTC), as Alpaca sends them.

        The source cannot know ``as_of``: the caller keeps ``end`` at or before
        :meth:`covered_until` so that no bar that is still open or not yet final is fetched.
        Raises :class:`SourceError` on any failure.
        """
        frames = []
        step = timedelta(days=self.config.chunk_days)
        cursor = start
        while cursor < end:
            nxt = min(cursor + step, end)
            frames.append(self._chunk(symbols, cursor, nxt))
            cursor = nxt
        return pl.concat(frames) if frames else pl.DataFrame(schema=RAW_SCHEMA)
