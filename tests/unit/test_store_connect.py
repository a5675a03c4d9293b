"""A PostgreSQL server that accepts connections and never answers fails the run after the
connect timeout, with an error naming the host and port and never the password."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from pipelines.data.store import BarStore, StoreError
from resources.trading_database import TradingDatabaseResource

pytestmark = pytest.mark.unit


@pytest.fixture
def silent_server() -> Iterator[int]:
    """The port of a local TCP server that accepts every connection and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:  # the server socket was closed: the test is over
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()
        for c in held:
            c.close()


def test_a_silent_server_fails_after_the_connect_timeout(silent_server: int) -> None:
    store = BarStore(
        f"postgresql://quant:hunter2@127.0.0.1:{silent_server}/trading", connect_timeout=2
    )
    t0 = time.monotonic()
    with pytest.raises(
        StoreError, match=rf"127\.0\.0\.1:{silent_server} did not answer within 2 s"
    ):
        store.migrate()
    assert time.monotonic() - t0 < 8
    with pytest.raises(StoreError) as err:
        store.count_bars()
    assert "hunter2" not in str(err.value) and "connect timeout" in str(err.value)


def test_the_timeout_in_the_url_wins_and_the_resource_passes_its_own(silent_server: int) -> None:
    url = f"postgresql://quant:hunter2@127.0.0.1:{silent_server}/trading?connect_timeout=2"
    t0 = time.monotonic()
    with pytest.raises(StoreError, match="did not answer within 2 s"):
        BarStore(url, connect_timeout=60).migrate()
    assert time.monotonic() - t0 < 8
    resource = TradingDatabaseResource(
        url=f"postgresql://quant:hunter2@127.0.0.1:{silent_server}/trading", connect_timeout_s=2
    )
    with pytest.raises(StoreError, match=f"127.0.0.1:{silent_server}") as err:
        resource.store()
    assert "hunter2" not in str(err.value)


def test_a_refused_connection_names_the_server() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    with pytest.raises(StoreError, match=rf"cannot connect .* at 127\.0\.0\.1:{port}") as err:
        BarStore(f"postgresql://quant:hunter2@127.0.0.1:{port}/trading").count_bars()
    assert "hunter2" not in str(err.value)
