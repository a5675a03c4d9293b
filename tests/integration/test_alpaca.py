"""The real alpaca-py client against the project's Alpaca-compatible server on 127.0.0.1,
serving recorded real bars (the bundled sample)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime
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
    with pytest.raises(SourceError, match=r"still failed after 4 tries \(last: HTTP 429\)"):
        source.fetch(SYMBOLS, *JAN, SYMBOLS)


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
