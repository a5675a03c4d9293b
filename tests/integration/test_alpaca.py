"""The real alpaca-py client against the project's Alpaca-compatible server on 127.0.0.1,
serving recorded real bars (the bundled sample)."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from pipelines.config import AlpacaSourceConfig, ValidationConfig, load_settings
from pipelines.data.alpaca import AlpacaBarSource, backoff_delay
from pipelines.data.ingest import ingest_window
from pipelines.data.normalise import SourceError
from pipelines.data.store import BarStore
from pipelines.timeframes import Timeframe
from quantdag.testing.alpaca_server import AlpacaFakeServer, Fault, sample_bars
from tests.conftest import SAMPLE_SETTINGS

pytestmark = pytest.mark.integration
JAN = (datetime(2019, 1, 1, 5, tzinfo=UTC), datetime(2019, 2, 1, 5, tzinfo=UTC))
NOW = datetime(2026, 1, 1, tzinfo=UTC)
SYMBOLS = ["AAPL", "MSFT", "VIX"]


@pytest.fixture(scope="module")
def recorded() -> pl.DataFrame:
    return sample_bars()


@pytest.fixture
def server(recorded: pl.DataFrame) -> Iterator[AlpacaFakeServer]:
    with AlpacaFakeServer(recorded, page_limit=700) as srv:
        yield srv


def _source(
    server: AlpacaFakeServer, sleeps: list[float] | None = None, **cfg: object
) -> AlpacaBarSource:
    return AlpacaBarSource(
        AlpacaSourceConfig(url_override=server.url, **cfg),  # type: ignore[arg-type]
        Timeframe.parse("15m"),
        api_key="test-key",
        secret_key="test-secret",
        sleep=(sleeps if sleeps is not None else []).append,
        rng=random.Random(7),
    )


def _expected(
    recorded: pl.DataFrame, symbols: list[str], start: datetime, end: datetime
) -> pl.DataFrame:
    return recorded.filter(
        pl.col("symbol").is_in(symbols), pl.col("ts") >= start, pl.col("ts") < end
    ).sort("symbol", "ts")


def test_bars_arrive_whole_across_pages(server: AlpacaFakeServer, recorded: pl.DataFrame) -> None:
    source = _source(server, chunk_days=31)
    raw = source.fetch(SYMBOLS, *JAN, SYMBOLS)
    got = raw.select(recorded.columns).sort("symbol", "ts")
    assert got.equals(_expected(recorded, SYMBOLS, *JAN))
    assert len(server.requests) > 2  # more than one page
    assert {r["timeframe"] for r in server.requests} == {"15Min"}
    assert {r["feed"] for r in server.requests} == {"iex"}


def test_rate_limit_and_server_errors_are_retried_with_jittered_backoff(
    server: AlpacaFakeServer, recorded: pl.DataFrame
) -> None:
    sleeps: list[float] = []
    server.faults.extend([Fault("status", 429)] * 4 + [Fault("status", 500), Fault("status", 503)])
    source = _source(server, sleeps, max_retries=8, backoff_base_s=0.5, backoff_cap_s=4)
    raw = source.fetch(SYMBOLS, *JAN, SYMBOLS)
    assert raw.height == _expected(recorded, SYMBOLS, *JAN).height
    assert source.retries == 6 and len(sleeps) == 6
    caps = [min(4.0, 0.5 * 2**i) for i in range(6)]
    assert all(0 <= s <= c for s, c in zip(sleeps, caps, strict=True))
    assert len(set(sleeps)) == len(sleeps)  # jittered, not fixed


def test_dropped_connection_mid_page_loses_and_duplicates_nothing(
    server: AlpacaFakeServer, recorded: pl.DataFrame
) -> None:
    server.faults.extend([Fault("drop"), Fault("drop")])
    source = _source(server, chunk_days=31)
    raw = source.fetch(SYMBOLS, *JAN, SYMBOLS)
    got = raw.select(recorded.columns).sort("symbol", "ts")
    assert got.equals(_expected(recorded, SYMBOLS, *JAN))
    assert source.retries == 2


def test_a_storm_that_outlasts_the_retries_is_a_clear_error(server: AlpacaFakeServer) -> None:
    server.faults.extend([Fault("status", 429)] * 10)
    source = _source(server, max_retries=3)
    with pytest.raises(SourceError) as err:
        source.fetch(SYMBOLS, *JAN, SYMBOLS)
    last = """(last: HTTP 429: '{"code": 429, "message": "injected"}')"""
    assert f"still failed after 4 tries {last}" in str(err.value)


def test_client_errors_are_not_retried(server: AlpacaFakeServer) -> None:
    server.faults.append(Fault("status", 422))
    source = _source(server)
    with pytest.raises(SourceError, match="HTTP 422"):
        source.fetch(SYMBOLS, *JAN, SYMBOLS)
    assert source.retries == 0


def test_bad_or_missing_credentials(server: AlpacaFakeServer) -> None:
    bad = AlpacaBarSource(
        AlpacaSourceConfig(url_override=server.url),
        Timeframe.parse("15m"),
        api_key="wrong",
        secret_key="nope",
        sleep=lambda s: None,
    )
    with pytest.raises(SourceError, match="refused the credentials") as err:
        bad.fetch(SYMBOLS, *JAN, SYMBOLS)
    assert "nope" not in str(err.value)
    with pytest.raises(SourceError, match="APCA_API_KEY_ID"):
        AlpacaBarSource(AlpacaSourceConfig(), Timeframe.parse("15m"), api_key="", secret_key="")


def test_ingest_from_alpaca_is_incremental(server: AlpacaFakeServer, tmp_path: Path) -> None:
    _, universe = load_settings(SAMPLE_SETTINGS)
    store = BarStore(f"sqlite:///{tmp_path / 't.db'}")
    store.migrate()
    source = _source(server)
    first = ingest_window(source, store, universe, ValidationConfig(), JAN, as_of=NOW, batch="jan")
    assert first.accounted and first.rows_quarantined == 0 and first.rows_stored > 10_000
    made = len(server.requests)
    again = ingest_window(source, store, universe, ValidationConfig(), JAN, as_of=NOW, batch="jan")
    assert again.requests == () and len(server.requests) == made


def test_backoff_delay_is_capped_full_jitter() -> None:
    rng = random.Random(3)
    delays = [backoff_delay(a, 1.0, 10.0, rng) for a in range(10) for _ in range(50)]
    assert max(delays) <= 10.0 and min(delays) >= 0.0
    assert max(backoff_delay(0, 1.0, 10.0, rng) for _ in range(50)) <= 1.0


def test_the_configured_backoff_is_what_the_retries_sleep(server: AlpacaFakeServer) -> None:
    sleeps: list[float] = []
    server.faults.extend([Fault("status", 503)] * 5)
    source = _source(server, sleeps, max_retries=5, backoff_base_s=0.125, backoff_cap_s=1.0)
    source.fetch(SYMBOLS, JAN[0], JAN[0] + timedelta(days=1), SYMBOLS)
    rng = random.Random(7)  # the seed _source gives the source
    assert sleeps == [backoff_delay(a, 0.125, 1.0, rng) for a in range(5)]


def test_a_request_that_is_never_answered_times_out_and_is_retried(
    server: AlpacaFakeServer, recorded: pl.DataFrame
) -> None:
    server.faults.append(Fault("hang", seconds=5))
    source = _source(server, chunk_days=31, read_timeout_s=0.3)
    started = time.monotonic()
    raw = source.fetch(SYMBOLS, *JAN, SYMBOLS)
    assert time.monotonic() - started < 4
    assert (
        raw.select(recorded.columns).sort("symbol", "ts").equals(_expected(recorded, SYMBOLS, *JAN))
    )
    assert source.retries == 1


def test_a_repeated_page_token_stops_the_fetch(server: AlpacaFakeServer) -> None:
    server.repeat_token = True
    source = _source(server, chunk_days=31)
    with pytest.raises(SourceError, match="next_page_token 'NzAw' a second time") as err:
        source.fetch(SYMBOLS, *JAN, SYMBOLS)
    assert len(server.requests) == 2
    assert "AAPL,MSFT,VIX, 2019-01-01T05:00Z..2019-02-01T05:00Z, page 2" in str(err.value)


def test_pages_beyond_max_pages_are_an_error(server: AlpacaFakeServer) -> None:
    source = _source(server, chunk_days=31, max_pages=2)
    with pytest.raises(SourceError, match="more than max_pages=2 pages"):
        source.fetch(SYMBOLS, *JAN, SYMBOLS)
    assert len(server.requests) == 2


HTML = "<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head><body>" + "x" * 500


@pytest.mark.parametrize(
    "fault",
    [Fault("body", body=HTML), Fault("truncate"), Fault("body", body=""), Fault("body", body="[]")],
    ids=["html", "truncated-json", "empty", "json-not-an-object"],
)
def test_a_malformed_answer_is_retried(
    server: AlpacaFakeServer, recorded: pl.DataFrame, fault: Fault
) -> None:
    server.faults.extend([fault, fault])
    source = _source(server, chunk_days=31)
    raw = source.fetch(SYMBOLS, *JAN, SYMBOLS)
    assert (
        raw.select(recorded.columns).sort("symbol", "ts").equals(_expected(recorded, SYMBOLS, *JAN))
    )
    assert source.retries == 2


def test_a_malformed_answer_that_persists_is_a_clear_error(server: AlpacaFakeServer) -> None:
    server.faults.extend([Fault("truncate"), Fault("body", body=HTML + "test-secret")] * 2)
    source = _source(server, max_retries=3)
    with pytest.raises(SourceError) as err:
        source.fetch(SYMBOLS, *JAN, SYMBOLS)
    message = str(err.value)
    assert "\n" not in message and err.value.__context__ is None
    assert f"{server.url}/v2/stocks/bars (AAPL,MSFT,VIX, 2019-01-01T05:00Z.." in message
    assert "still failed after 4 tries (last: a body that is not JSON: " in message
    assert "'<!DOCTYPE html> <html><head><title>502 Bad Gateway</title>" in message
    assert len(message) < 600 and "test-secret" not in message


def test_a_body_of_the_wrong_shape_is_named(server: AlpacaFakeServer) -> None:
    wrong = Fault("body", body='{"bars": [1, 2]}', content_type="application/json")
    server.faults.extend([wrong] * 2)
    source = _source(server, max_retries=1)
    with pytest.raises(SourceError, match=r"'bars' that is not an object of lists of bars"):
        source.fetch(SYMBOLS, *JAN, SYMBOLS)


def test_no_secret_in_an_error_the_server_echoes(server: AlpacaFakeServer) -> None:
    echo = '{"code": 42210000, "message": "bad request from test-key / test-secret"}'
    server.faults.append(Fault("status", 422, body=echo, content_type="application/json"))
    with pytest.raises(SourceError, match="HTTP 422") as err:
        _source(server).fetch(SYMBOLS, *JAN, SYMBOLS)
    assert "test-secret" not in str(err.value) and "test-key" not in str(err.value)
    assert "bad request from *** / ***" in str(err.value)


def test_a_redirect_is_a_clear_error_not_an_empty_page(server: AlpacaFakeServer) -> None:
    server.faults.append(Fault("status", 301, headers={"Location": "https://elsewhere/v2"}))
    with pytest.raises(SourceError, match=r"redirect .*HTTP 301 to 'https://elsewhere/v2'"):
        _source(server).fetch(SYMBOLS, *JAN, SYMBOLS)


def test_a_refused_connection_fails_after_the_retries(recorded: pl.DataFrame) -> None:
    with AlpacaFakeServer(recorded) as gone:
        url = gone.url
    source = AlpacaBarSource(
        AlpacaSourceConfig(url_override=url, max_retries=2),
        Timeframe.parse("15m"),
        api_key="test-key",
        secret_key="test-secret",
        sleep=lambda s: None,
    )
    with pytest.raises(SourceError, match=r"still failed after 3 tries \(last: ConnectionError\)"):
        source.fetch(SYMBOLS, *JAN, SYMBOLS)


def test_prices_are_adjusted_by_default_and_the_basis_is_in_the_name(
    server: AlpacaFakeServer,
) -> None:
    source = _source(server)
    assert source.adjustment == "all" and source.name == "alpaca:iex:all"
    source.fetch(SYMBOLS, JAN[0], JAN[0] + timedelta(days=1), SYMBOLS)
    assert {r["adjustment"] for r in server.requests} == {"all"}
    raw = _source(server, adjustment="raw")
    assert raw.name != source.name


def test_fetching_up_to_covered_until_returns_only_final_bars(
    server: AlpacaFakeServer, recorded: pl.DataFrame
) -> None:
    source = _source(server, feed="sip")
    as_of = datetime(2019, 1, 15, 15, 31, 20, tzinfo=UTC)
    until = source.covered_until(as_of)
    assert until == datetime(2019, 1, 15, 15, 15, tzinfo=UTC)
    raw = source.fetch(SYMBOLS, JAN[0], until, SYMBOLS)
    assert raw["ts"].max() == until - timedelta(minutes=15)
    assert raw.height == _expected(recorded, SYMBOLS, JAN[0], until).height


def test_keys_that_cannot_be_sent_are_refused_without_showing_them() -> None:
    for key, secret in [("key\n", "secret"), ("key", "sécret"), (" key", "secret")]:
        with pytest.raises(SourceError, match="cannot be sent in an HTTP header") as err:
            AlpacaBarSource(
                AlpacaSourceConfig(), Timeframe.parse("15m"), api_key=key, secret_key=secret
            )
        assert "sécret" not in str(err.value) and "key\n" not in str(err.value)


def test_bars_with_values_of_the_wrong_type_are_kept_for_quarantine(
    server: AlpacaFakeServer,
) -> None:
    bars = [
        {"t": "2019-01-02T15:00:00Z", "o": 1.5, "h": 2.0, "l": 1.0, "c": 1.75, "v": 100},
        {"t": "2019-01-02T15:15:00Z", "o": {"x": 1}, "h": "2", "l": 1, "c": 1.5, "v": "lots"},
    ]
    body = json.dumps({"bars": {"AAPL": bars}, "next_page_token": None})
    server.faults.append(Fault("body", body=body, content_type="application/json"))
    raw = _source(server).fetch(["AAPL"], JAN[0], JAN[0] + timedelta(days=1), ["AAPL"])
    assert raw.height == 2
    good, bad = raw.sort("ts").iter_rows(named=True)
    assert good["open"] == 1.5 and good["volume"] == 100 and good["parse_error"] is None
    assert bad["open"] is None and bad["high"] == 2.0 and bad["volume"] is None
    assert "'o' (open): cannot parse" in bad["parse_error"]
    assert "'v' (volume): cannot parse lots" in bad["parse_error"]
