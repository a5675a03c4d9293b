"""The local Alpaca's answers against Alpaca's published interface and alpaca-py's models.

REST answers are validated against the OpenAPI 3.0 schemas of ``trading-openapi.yaml`` (in
``/work/shared/reference/alpaca``, or ``$ALPACA_REFERENCE_DIR``; skipped where absent) and parsed
into alpaca-py's models; stream messages are read raw off the websockets, checked for the fields
the stream documents list, and parsed by alpaca-py's own stream code.

Where the published spec and alpaca-py disagree, alpaca-py (the client the project uses)
decides; each place is marked ``DISAGREEMENT`` below.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import msgpack
import polars as pl
import pytest
import requests
import yaml
from alpaca.data.live import StockDataStream
from alpaca.data.models import Bar
from alpaca.trading.client import TradingClient
from alpaca.trading.models import (
    Calendar,
    Clock,
    ClosePositionResponse,
    Order,
    Position,
    TradeAccount,
    TradeUpdate,
)
from alpaca.trading.requests import CancelOrderResponse
from jsonschema.exceptions import ValidationError
from openapi_schema_validator import OAS30Validator, oas30_format_checker
from websockets.sync.client import connect

from pipelines.backtest.broker import BrokerConfig
from quantdag.testing.alpaca_server import LocalAlpaca, sample_minute_bars

pytestmark = pytest.mark.integration
REFERENCE = Path(os.environ.get("ALPACA_REFERENCE_DIR", "/work/shared/reference/alpaca"))
OPEN = datetime(2019, 2, 15, 14, 30, tzinfo=UTC)
KEY, SECRET = "test-key", "test-secret"
HEADERS = {"APCA-API-KEY-ID": KEY, "APCA-API-SECRET-KEY": SECRET}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    path = REFERENCE / "trading-openapi.yaml"
    if not path.exists():
        pytest.skip(f"Alpaca's published spec is not at {path} (set ALPACA_REFERENCE_DIR)")
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def minute_bars() -> pl.DataFrame:
    return sample_minute_bars(date(2019, 2, 15))


@pytest.fixture
def server(minute_bars: pl.DataFrame) -> Iterator[LocalAlpaca]:
    config = BrokerConfig(participation=0.0002, max_leverage=2.0)
    with LocalAlpaca(minute_bars, fill=config) as srv:
        yield srv


def _check(spec: dict[str, Any], name: str, value: Any, *, array: bool = False) -> None:
    """Validate ``value`` against ``components/schemas/name`` (an array of them if
    ``array``), resolving the spec's ``$ref``s."""
    ref = {"$ref": f"#/components/schemas/{name}"}
    schema = {**({"type": "array", "items": ref} if array else ref)}
    schema["components"] = spec["components"]
    OAS30Validator(schema, format_checker=oas30_format_checker).validate(value)


def _rest(server: LocalAlpaca, method: str, path: str, **kw: Any) -> requests.Response:
    return requests.request(method, f"{server.url}{path}", headers=HEADERS, timeout=10, **kw)


def _order(server: LocalAlpaca, **body: Any) -> requests.Response:
    base = {"symbol": "AAPL", "qty": "10", "side": "buy", "type": "market", "time_in_force": "day"}
    return _rest(server, "POST", "/v2/orders", json={**base, **body})


def test_rest_answers_match_the_spec_and_parse_into_alpaca_py_models(
    spec: dict[str, Any], server: LocalAlpaca
) -> None:
    account = _rest(server, "GET", "/v2/account").json()
    _check(spec, "Account", account)
    TradeAccount(**account)

    placed = _order(server, client_order_id="c1")
    assert placed.status_code == 200
    _check(spec, "Order", placed.json())
    # The check can fail: a number where the spec wants a string, a malformed uuid.
    for broken in ({"qty": 10}, {"asset_id": "not-a-uuid"}, {"status": "done"}):
        with pytest.raises(ValidationError):
            _check(spec, "Order", {**placed.json(), **broken})
    Order(**placed.json())
    limit = _order(server, symbol="MSFT", type="limit", limit_price="1.00", client_order_id="c2")
    _check(spec, "Order", limit.json())
    assert Order(**limit.json()).limit_price == "1.00"
    server.advance(OPEN + timedelta(minutes=15))

    orders = _rest(server, "GET", "/v2/orders", params={"status": "all"}).json()
    _check(spec, "Order", orders, array=True)
    assert {Order(**o).status.value for o in orders} == {"filled", "new"}
    one = _rest(server, "GET", f"/v2/orders/{orders[0]['id']}").json()
    _check(spec, "Order", one)

    positions = _rest(server, "GET", "/v2/positions").json()
    _check(spec, "Position", positions, array=True)
    assert [Position(**p).qty for p in positions] == ["10"]
    position = _rest(server, "GET", "/v2/positions/AAPL").json()
    _check(spec, "Position", position)

    clock = _rest(server, "GET", "/v2/clock").json()
    _check(spec, "Clock", clock)
    assert Clock(**clock).timestamp == OPEN + timedelta(minutes=15)

    days = _rest(
        server, "GET", "/v2/calendar", params={"start": "2019-02-11", "end": "2019-02-19"}
    ).json()
    _check(spec, "Calendar", days, array=True)
    assert [Calendar(**d).date for d in days] == [
        date(2019, 2, d) for d in (11, 12, 13, 14, 15, 19)
    ]

    canceled = _rest(server, "DELETE", "/v2/orders")
    assert canceled.status_code == 207
    _check(spec, "CanceledOrderResponse", canceled.json(), array=True)
    assert [CancelOrderResponse(**c).status for c in canceled.json()] == [200]

    closed = _rest(server, "DELETE", "/v2/positions")
    assert closed.status_code == 207
    # DISAGREEMENT: the spec types PositionClosedReponse.status as a string; alpaca-py's
    # ClosePositionResponse.status is an int (the HTTP status), and Alpaca sends a number:
    # followed alpaca-py, so the spec check here leaves `status` out.
    for c in closed.json():
        _check(spec, "PositionClosedReponse", {**c, "status": str(c["status"])})
        assert ClosePositionResponse(**c).status == 200


def test_error_bodies_are_alpacas(spec: dict[str, Any], server: LocalAlpaca) -> None:
    """Alpaca answers errors with ``{"code": <int>, "message": <str>}`` (the spec lists the
    status codes, not the body; alpaca-py's APIError reads ``code`` and ``message``)."""
    _order(server, client_order_id="same")
    answers = {
        "duplicate": _order(server, client_order_id="same"),
        "unknown symbol": _order(server, symbol="NOPE"),
        "fractional qty": _order(server, qty="1.5"),
        "no order": _rest(server, "GET", f"/v2/orders/{'0' * 8}-0000-0000-0000-{'0' * 12}"),
        "no position": _rest(server, "GET", "/v2/positions/MSFT"),
        "unauthorized": requests.get(f"{server.url}/v2/account", timeout=10),
    }
    codes = {k: a.status_code for k, a in answers.items()}
    assert codes == {
        "duplicate": 422,
        "unknown symbol": 422,
        "fractional qty": 422,
        "no order": 404,
        "no position": 404,
        "unauthorized": 401,
    }
    for answer in answers.values():
        body = answer.json()
        assert set(body) == {"code", "message"}
        assert isinstance(body["code"], int) and isinstance(body["message"], str)
    # The spec documents 422 for POST /v2/orders. DISAGREEMENT (gap): it lists no 404 for
    # GET /v2/positions/{symbol} nor 401 anywhere; Alpaca's service and alpaca-py's docstring
    # ("will throw an error if the position does not exist") have them: followed those.
    assert "422" in spec["paths"]["/v2/orders"]["post"]["responses"]
    assert "422" in spec["paths"]["/v2/orders/{order_id}"]["delete"]["responses"]


def _recv_msgpack(ws: Any) -> list[dict[str, Any]]:
    raw = ws.recv(timeout=10)
    assert isinstance(raw, bytes)
    return msgpack.unpackb(raw)  # ext type -1 becomes msgpack.Timestamp


def test_market_data_stream_messages(server: LocalAlpaca, minute_bars: pl.DataFrame) -> None:
    msgpack_header = {"Content-Type": "application/msgpack"}  # what alpaca-py sends
    with connect(server.data_stream_url("iex"), additional_headers=msgpack_header) as ws:
        assert _recv_msgpack(ws) == [{"T": "success", "msg": "connected"}]
        ws.send(msgpack.packb({"action": "subscribe", "bars": ["AAPL"]}))
        assert _recv_msgpack(ws) == [{"T": "error", "code": 401, "msg": "not authenticated"}]
        ws.send(msgpack.packb({"action": "auth", "key": KEY, "secret": SECRET}))
        assert _recv_msgpack(ws) == [{"T": "success", "msg": "authenticated"}]
        ws.send(msgpack.packb({"action": "subscribe", "bars": ["AAPL"], "updatedBars": ["*"]}))
        (sub,) = _recv_msgpack(ws)
        assert sub["T"] == "subscription" and sub["bars"] == ["AAPL"]
        assert sub["updatedBars"] == ["*"] and sub["trades"] == []
        ws.send(b"\xc1")  # not msgpack
        assert _recv_msgpack(ws) == [{"T": "error", "code": 400, "msg": "invalid syntax"}]
        server.advance(OPEN + timedelta(minutes=1))
        (bar,) = _recv_msgpack(ws)
        # The fields the stream document lists for a minute bar...
        assert {"T", "S", "o", "h", "l", "c", "v", "t"} <= set(bar)
        assert bar["T"] == "b" and bar["S"] == "AAPL" and isinstance(bar["v"], int)
        # DISAGREEMENT: the document types `t` as an RFC-3339 string (its JSON form); on the
        # msgpack wire alpaca-py calls `t.to_datetime()`, so it must be a msgpack Timestamp
        # (ext type -1): followed alpaca-py.
        assert isinstance(bar["t"], msgpack.Timestamp)
        assert bar["t"].to_datetime() == OPEN
        # DISAGREEMENT: the document's minute-bar table has no `n` / `vw`; alpaca-py's Bar model
        # requires both keys: sent (null where the recording has no value).
        assert bar["n"] is None and bar["vw"] is None
        row = minute_bars.filter(pl.col("symbol") == "AAPL", pl.col("ts") == OPEN).row(
            0, named=True
        )
        parsed = StockDataStream(KEY, SECRET)._cast(dict(bar))  # alpaca-py's own parsing
        assert isinstance(parsed, Bar)
        assert (parsed.timestamp, parsed.open, parsed.close) == (OPEN, row["open"], row["close"])
        server.update_bar("AAPL", OPEN, close=170.0)
        (upd,) = _recv_msgpack(ws)
        assert upd["T"] == "u" and upd["c"] == 170.0
        assert StockDataStream(KEY, SECRET)._cast(dict(upd)).close == 170.0
    # A client that does not ask for msgpack gets JSON.
    with connect(server.data_stream_url("iex")) as ws:
        assert json.loads(ws.recv(timeout=10)) == [{"T": "success", "msg": "connected"}]
        ws.send(json.dumps({"action": "auth", "key": KEY, "secret": "bad"}))
        assert json.loads(ws.recv(timeout=10)) == [
            {"T": "error", "code": 402, "msg": "auth failed"}
        ]


def test_trade_stream_messages(server: LocalAlpaca) -> None:
    with connect(server.trade_stream_url) as ws:
        ws.send(
            json.dumps({"action": "authenticate", "data": {"key_id": KEY, "secret_key": SECRET}})
        )
        auth = json.loads(ws.recv(timeout=10))
        assert auth == {
            "stream": "authorization",
            "data": {"action": "authenticate", "status": "authorized"},
        }
        ws.send(json.dumps({"action": "listen", "data": {"streams": ["trade_updates"]}}))
        assert json.loads(ws.recv(timeout=10)) == {
            "stream": "listening",
            "data": {"streams": ["trade_updates"]},
        }
        client = TradingClient(KEY, SECRET, url_override=server.url)
        assert _order(server, qty="5", client_order_id="s1").status_code == 200
        server.advance(OPEN + timedelta(minutes=15))
        messages = [json.loads(ws.recv(timeout=10)) for _ in range(2)]
        assert [m["stream"] for m in messages] == ["trade_updates"] * 2
        new, fill = (m["data"] for m in messages)
        assert new["event"] == "new" and {"event", "order", "timestamp"} <= set(new)
        # The fields the document lists for a fill (plus execution_id and qty, which Alpaca
        # sends and alpaca-py's TradeUpdate models).
        assert {"event", "order", "timestamp", "price", "position_qty", "execution_id", "qty"} <= (
            set(fill)
        )
        # NOTE: the document calls a fill's `price` "the average price per share at which the
        # order was filled"; like Alpaca's live service and alpaca-py's model, `price` and `qty`
        # here are this execution's (the order's average is order.filled_avg_price).
        update = TradeUpdate(**fill)
        got = server.fills()[0]
        assert update.price == float(got.price) and update.qty == 5 and update.position_qty == 5
        assert update.order.filled_avg_price == str(got.price)
        assert client.get_order_by_client_id("s1").status.value == "filled"
    with connect(server.trade_stream_url) as ws:
        ws.send(json.dumps({"action": "authenticate", "data": {"key_id": KEY, "secret_key": "x"}}))
        assert json.loads(ws.recv(timeout=10))["data"]["status"] == "unauthorized"
