"""Alpaca historical bars through alpaca-py's ``StockHistoricalDataClient``.

alpaca-py pages through ``next_page_token`` itself. A window is fetched in chunks of a few days,
and each chunk is retried on the named transient failures only (HTTP 429 and 5xx, a dropped or
refused connection, a timeout) with capped exponential backoff and full jitter; anything else, and
a chunk that keeps failing, raises :class:`~pipelines.data.normalise.SourceError`. A retried chunk
is fetched whole again, so a connection dropped mid-page loses nothing and duplicates nothing.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import polars as pl
import requests
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
)
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


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in ``[0, min(cap, base * 2**attempt)]`` seconds.

    Example: attempt 3 with base 1 s and cap 60 s waits between 0 and 8 s.
    """
    return rng.uniform(0.0, min(cap, base * 2**attempt))


def _status(exc: APIError) -> int | None:
    try:
        return int(exc.status_code)
    except (AttributeError, TypeError, ValueError):
        return None


class AlpacaBarSource:
    """Bars of the configured timeframe from Alpaca's market-data API.

    ``sleep`` and ``rng`` are injectable so that tests neither wait nor vary.
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
        self.config = config
        self.timeframe = timeframe
        self.client = StockHistoricalDataClient(
            api_key=api_key,
            secret_key=secret_key,
            raw_data=True,
            url_override=config.url_override,
        )
        # alpaca-py would otherwise retry 429/504 itself with a fixed 3 s wait and no jitter;
        # the retry policy is ours (see the module docstring).
        self.client._retry = 0
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.requests_made = 0
        self.retries = 0

    @property
    def name(self) -> str:
        return f"alpaca:{self.config.feed}"

    def _timeframe(self) -> TimeFrame:
        if self.timeframe.minutes % 60 == 0:
            return TimeFrame(self.timeframe.minutes // 60, TimeFrameUnit.Hour)
        return TimeFrame(self.timeframe.minutes, TimeFrameUnit.Minute)

    def _chunk(self, symbols: Sequence[str], start: datetime, end: datetime) -> pl.DataFrame:
        request = StockBarsRequest(
            symbol_or_symbols=list(symbols),
            timeframe=self._timeframe(),
            start=start,
            # Alpaca's end is inclusive; the window is half-open.
            end=end - timedelta(microseconds=1),
            feed=DataFeed(self.config.feed),
            adjustment=Adjustment(self.config.adjustment),
        )
        for attempt in range(self.config.max_retries + 1):
            self.requests_made += 1
            try:
                data = self.client.get_stock_bars(request)
                break
            except APIError as exc:
                status = _status(exc)
                if status in (401, 403):
                    raise SourceError(
                        f"Alpaca refused the credentials (HTTP {status}): check "
                        "APCA_API_KEY_ID and APCA_API_SECRET_KEY and the feed's subscription"
                    ) from None
                if status not in TRANSIENT_STATUS:
                    raise SourceError(f"Alpaca answered HTTP {status}: {exc}") from None
                failure = f"HTTP {status}"
            except TRANSIENT_ERRORS as exc:
                failure = type(exc).__name__
            if attempt == self.config.max_retries:
                raise SourceError(
                    f"Alpaca bars for {len(symbols)} symbols {start:%Y-%m-%d}..{end:%Y-%m-%d} "
                    f"still failed after {attempt + 1} tries (last: {failure}); the service may "
                    "be rate-limiting or down: try again later or raise max_retries"
                )
            self.retries += 1
            self.sleep(
                backoff_delay(
                    attempt, self.config.backoff_base_s, self.config.backoff_cap_s, self.rng
                )
            )
        rows = [
            {"symbol": sym, **bar}
            for sym, bars in (data or {}).items()  # type: ignore[union-attr]
            for bar in bars
        ]
        if not rows:
            return pl.DataFrame(schema=RAW_SCHEMA)
        frame = pl.DataFrame(rows, infer_schema_length=None)
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
        frames = []
        step = timedelta(days=self.config.chunk_days)
        cursor = start
        while cursor < end:
            nxt = min(cursor + step, end)
            frames.append(self._chunk(symbols, cursor, nxt))
            cursor = nxt
        return pl.concat(frames) if frames else pl.DataFrame(schema=RAW_SCHEMA)
