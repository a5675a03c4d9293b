"""A small Alpaca-compatible market-data server on 127.0.0.1, for tests and demos.

It serves ``GET /v2/stocks/bars`` the way Alpaca does (symbols, timeframe, start, end, limit,
``next_page_token`` pagination across symbols, key headers) from a frame of recorded real bars,
and can be told to misbehave, for the next requests in order (:class:`Fault`): answer an HTTP
error status, drop the connection in the middle of a page, answer 200 with a body of its choosing
(an HTML page, say) or with the page's JSON cut short, or take the request and not answer. With
``repeat_token`` it sends the same ``next_page_token`` on every page, as a faulty server might.

Demo: ``python -m quantdag.testing.alpaca_server --port 8765`` serves the bundled sample; point
the paper environment at it with ``APCA_DATA_URL=http://127.0.0.1:8765``.

The full local Alpaca (broker, trade updates, market-data stream, replay clock) is
:class:`~quantdag.testing.alpaca.server.LocalAlpaca`, re-exported here;
``python -m quantdag.testing.alpaca_server --replay --session 2019-02-15 --speed 60`` replays one
session of the bundled 1-minute sample through it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import polars as pl
from aiohttp import web

from quantdag.testing.alpaca.faults import Fault
from quantdag.testing.alpaca.replay import sample_minute_bars
from quantdag.testing.alpaca.server import LocalAlpaca

__all__ = ["AlpacaFakeServer", "Fault", "LocalAlpaca", "sample_bars", "sample_minute_bars"]

_TIMEFRAMES = {"Min": 1, "Hour": 60, "Day": 1440}


@dataclass
class AlpacaFakeServer:
    """Serve ``bars`` (symbol, ts UTC bar start, open, high, low, close, volume[, vwap,
    trade_count]) until :meth:`stop`. Use as a context manager; ``url`` is the base URL."""

    bars: pl.DataFrame
    api_key: str = "test-key"
    secret_key: str = "test-secret"
    page_limit: int = 10_000
    faults: deque[Fault] = field(default_factory=deque)
    requests: list[dict[str, str]] = field(default_factory=list)
    repeat_token: bool = False
    port: int = 0

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._runner: web.AppRunner | None = None
        self._release: asyncio.Event | None = None
        self.bars = self.bars.sort("symbol", "ts")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> AlpacaFakeServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fake Alpaca server did not start within 10 s")

    def stop(self) -> None:
        if self._release is not None:
            self._loop.call_soon_threadsafe(self._release.set)
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._release = asyncio.Event()
        app = web.Application()
        app.router.add_get("/v2/stocks/bars", self._bars)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        self._loop.run_until_complete(site.start())
        sockets = site._server.sockets  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _bars(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(dict(request.query))
        if (
            request.headers.get("APCA-API-KEY-ID") != self.api_key
            or request.headers.get("APCA-API-SECRET-KEY") != self.secret_key
        ):
            return web.json_response(
                {"code": 40110000, "message": "access key verification failed"}, status=401
            )
        fault = self.faults.popleft() if self.faults else None
        if fault is not None and fault.kind == "status":
            if fault.body is not None:
                return web.Response(
                    text=fault.body,
                    status=fault.status,
                    content_type=fault.content_type,
                    headers=fault.headers,
                )
            return web.json_response(
                {"code": fault.status, "message": "injected"},
                status=fault.status,
                headers=fault.headers,
            )
        if fault is not None and fault.kind == "body":
            return web.Response(text=fault.body or "", content_type=fault.content_type)
        if fault is not None and fault.kind == "hang":
            assert self._release is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), fault.seconds)
        body = json.dumps(self._page(request.query)).encode()
        if fault is not None and fault.kind == "truncate":
            return web.Response(body=body[: len(body) // 2], content_type="application/json")
        if fault is not None and fault.kind == "drop":
            resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            resp.content_length = len(body)
            await resp.prepare(request)
            await resp.write(body[: len(body) // 2])
            assert request.transport is not None
            request.transport.close()
            return resp
        return web.Response(body=body, content_type="application/json")

    def _page(self, q: Any) -> dict[str, Any]:
        symbols = q["symbols"].split(",")
        tf = q.get("timeframe", "1Min")
        unit = next(u for u in _TIMEFRAMES if tf.endswith(u))
        minutes = int(tf.removesuffix(unit)) * _TIMEFRAMES[unit]
        start = datetime.fromisoformat(q["start"])
        end = datetime.fromisoformat(q["end"]) if "end" in q else None
        limit = min(int(q.get("limit") or self.page_limit), self.page_limit)
        offset = int(base64.b64decode(q["page_token"]).decode()) if q.get("page_token") else 0
        frame = self.bars.filter(pl.col("symbol").is_in(symbols), pl.col("ts") >= start)
        if end is not None:
            frame = frame.filter(pl.col("ts") <= end)
        if minutes not in (1, 1440):
            frame = frame.filter(pl.col("ts").dt.epoch("s") % (minutes * 60) == 0)
        page = frame.slice(offset, limit)
        out: dict[str, list[dict[str, Any]]] = {}
        for r in page.iter_rows(named=True):
            bar = {
                "t": r["ts"].strftime("%Y-%m-%dT%H:%M:%SZ"),
                "o": r["open"],
                "h": r["high"],
                "l": r["low"],
                "c": r["close"],
                "v": r["volume"],
            }
            if r.get("vwap") is not None:
                bar["vw"] = r["vwap"]
            if r.get("trade_count") is not None:
                bar["n"] = r["trade_count"]
            out.setdefault(r["symbol"], []).append(bar)
        more = offset + limit < frame.height
        # A faulty server: every page points to the second page.
        after = limit if self.repeat_token else offset + limit
        token = base64.b64encode(str(after).encode()).decode() if more else None
        return {"bars": out, "next_page_token": token}


def sample_bars() -> pl.DataFrame:
    """The bundled 15-minute sample as Alpaca would serve it (UTC bar starts)."""
    from pipelines.config import FileSourceConfig, load_settings
    from pipelines.data.sources import FileBarSource
    from quantdag.project import DEFAULT_SETTINGS, PROJECT_ROOT

    settings, universe = load_settings(DEFAULT_SETTINGS)
    cfg = settings.environments["local"].source
    assert isinstance(cfg, FileSourceConfig)
    source = FileBarSource(cfg, universe.base_timeframe, root=PROJECT_ROOT)
    frames = [source.read_file(p, s) for p, s in source.files()]
    return pl.concat(frames).select("symbol", "ts", "open", "high", "low", "close", "volume")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--replay", action="store_true", help="serve the full local Alpaca (LocalAlpaca)"
    )
    parser.add_argument(
        "--session", type=date.fromisoformat, help="the 1-minute sample's session to replay"
    )
    parser.add_argument("--speed", type=float, default=60.0, help="replay seconds per wall second")
    parser.add_argument("--fill-minutes", type=int, default=15)
    args = parser.parse_args()
    if not args.replay:
        server = AlpacaFakeServer(sample_bars(), port=args.port)
        server.start()
        print(f"fake Alpaca data API on {server.url} (keys: test-key / test-secret); Ctrl-C stops")
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            server.stop()
        return
    local = LocalAlpaca(
        sample_minute_bars(args.session), fill_minutes=args.fill_minutes, port=args.port
    )
    local.start()
    print(
        f"local Alpaca on {local.url} (keys: test-key / test-secret): data stream "
        f"{local.data_stream_url()}, trade stream {local.trade_stream_url}; replaying from "
        f"{local.now().isoformat()} at {args.speed}x; Ctrl-C stops"
    )
    local.play(args.speed)
    try:
        while not local.done:
            time.sleep(1)
        print(f"replay finished at {local.now().isoformat()}; still serving, Ctrl-C stops")
        threading.Event().wait()
    except KeyboardInterrupt:
        local.stop()


if __name__ == "__main__":
    main()
