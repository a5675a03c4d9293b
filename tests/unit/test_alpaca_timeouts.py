"""Every Alpaca request has a connect and a read timeout: a server that takes the connection and
never answers ends in a ``SourceError`` after the bounded retries, within seconds."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from pipelines.config import AlpacaSourceConfig
from pipelines.data.alpaca import AlpacaBarSource
from pipelines.data.normalise import SourceError
from pipelines.timeframes import Timeframe

pytestmark = pytest.mark.unit


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A listening socket that is never read from: the kernel completes the connection, the
    request is sent, and no answer ever comes."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_a_server_that_never_answers_fails_with_a_source_error_in_seconds(
    silent_url: str,
) -> None:
    sleeps: list[float] = []
    source = AlpacaBarSource(
        AlpacaSourceConfig(
            url_override=silent_url,
            connect_timeout_s=0.5,
            read_timeout_s=0.2,
            max_retries=2,
            backoff_base_s=0.01,
            backoff_cap_s=0.02,
        ),
        Timeframe.parse("15m"),
        api_key="key-id-value",
        secret_key="secret-key-value",
        sleep=sleeps.append,
    )
    assert source.timeout == (0.5, 0.2)
    started = time.monotonic()
    with pytest.raises(SourceError) as err:
        source.fetch(
            ["AAPL"], datetime(2024, 1, 2, tzinfo=UTC), datetime(2024, 1, 3, tzinfo=UTC), ["AAPL"]
        )
    assert time.monotonic() - started < 3
    message = str(err.value)
    assert "still failed after 3 tries (last: ReadTimeout)" in message
    assert f"{silent_url}/v2/stocks/bars (AAPL, 2024-01-02T00:00Z..2024-01-03T00:00Z" in message
    assert "key-id-value" not in message and "secret-key-value" not in message
    assert source.requests_made == 3 and len(sleeps) == 2
    assert all(0 <= s <= c for s, c in zip(sleeps, [0.01, 0.02], strict=True))


def test_the_defaults_bound_every_request() -> None:
    source = AlpacaBarSource(
        AlpacaSourceConfig(), Timeframe.parse("15m"), api_key="k", secret_key="s"
    )
    assert source.timeout == (5.0, 30.0)


@pytest.fixture
def full_backlog_url() -> Iterator[str]:
    """A listening socket whose accept queue is full: Linux drops further SYNs, so a new
    connection is never established."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(0)
        address = sock.getsockname()
        fillers = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(4)]
        try:
            for f in fillers:
                f.setblocking(False)
                f.connect_ex(address)
            time.sleep(0.05)
            yield f"http://127.0.0.1:{address[1]}"
        finally:
            for f in fillers:
                f.close()


def test_a_connection_that_is_never_established_times_out(full_backlog_url: str) -> None:
    source = AlpacaBarSource(
        AlpacaSourceConfig(
            url_override=full_backlog_url, connect_timeout_s=0.2, read_timeout_s=30, max_retries=1
        ),
        Timeframe.parse("15m"),
        api_key="k",
        secret_key="s",
        sleep=lambda s: None,
    )
    started = time.monotonic()
    with pytest.raises(SourceError, match=r"still failed after 2 tries \(last: ConnectTimeout\)"):
        source.fetch(
            ["AAPL"], datetime(2024, 1, 2, tzinfo=UTC), datetime(2024, 1, 3, tzinfo=UTC), ["AAPL"]
        )
    assert time.monotonic() - started < 3


@pytest.fixture
def trickle_url() -> Iterator[str]:
    """A server that answers 200 and then sends one byte every 0.2 s, for ever: no single
    read waits long enough to trip the read timeout."""
    import threading

    stop = threading.Event()

    def handle(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100000000\r\n\r\n"
            )
            try:
                while not stop.is_set():
                    conn.sendall(b" ")
                    time.sleep(0.2)
            except OSError:
                pass

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sock.settimeout(0.2)

        def serve() -> None:
            while not stop.is_set():
                try:
                    conn, _ = sock.accept()
                except OSError:
                    continue
                threading.Thread(target=handle, args=(conn,), daemon=True).start()

        threading.Thread(target=serve, daemon=True).start()
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
        stop.set()


def test_a_response_trickling_in_ends_at_the_response_deadline(trickle_url: str) -> None:
    source = AlpacaBarSource(
        AlpacaSourceConfig(
            url_override=trickle_url,
            connect_timeout_s=0.5,
            read_timeout_s=1.0,
            response_timeout_s=1.0,
            max_retries=0,
        ),
        Timeframe.parse("15m"),
        api_key="key-id-value",
        secret_key="secret-key-value",
    )
    import threading

    outcome: list[BaseException] = []

    def fetch() -> None:
        try:
            source.fetch(
                ["AAPL"],
                datetime(2024, 1, 2, tzinfo=UTC),
                datetime(2024, 1, 3, tzinfo=UTC),
                ["AAPL"],
            )
        except BaseException as exc:  # the test inspects whatever ended it
            outcome.append(exc)

    # In a thread, so that a regression shows as a failure here rather than a hung suite.
    worker = threading.Thread(target=fetch, daemon=True)
    worker.start()
    worker.join(timeout=6)
    assert not worker.is_alive(), "the fetch was still reading the trickle after 6 s"
    assert len(outcome) == 1 and isinstance(outcome[0], SourceError)
    assert "Timeout" in str(outcome[0])
