"""Concurrent runs on one SQLite trading database: first-time migrations, ingestion of the same
month, and a writer kept waiting longer than it may."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pipelines.config import ValidationConfig, load_settings
from pipelines.data.ingest import ingest_window
from pipelines.data.sources import FileBarSource
from pipelines.data.store import BarStore, StoreError
from tests.conftest import SAMPLE_SETTINGS, SCHEMA_HEAD

pytestmark = pytest.mark.unit
JAN = (datetime(2019, 1, 1, 5, tzinfo=UTC), datetime(2019, 2, 1, 5, tzinfo=UTC))
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def run_together(*calls: Callable[[], Any]) -> list[Any]:
    """Run ``calls`` in threads released at the same instant; return their results, or raise
    the first exception one of them raised."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(i: int, call: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            results[i] = call()
        except BaseException as exc:  # reported to the test below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    if errors:
        raise errors[0]
    return results


def ingest_month(url: str, source: FileBarSource) -> Callable[[], Any]:
    """A call ingesting January of the sample through its own store, as a separate run would."""
    _, universe = load_settings(SAMPLE_SETTINGS)

    def call() -> Any:
        return ingest_window(
            source,
            BarStore(url),
            universe,
            ValidationConfig(),
            JAN,
            as_of=NOW,
            batch="jan",
            refetch=True,
        )

    return call


def test_first_migrations_at_once(tmp_path: Path) -> None:
    for i in range(4):
        url = f"sqlite:///{tmp_path / f'fresh{i}.db'}"
        versions = run_together(*(BarStore(url).migrate for _ in range(4)))
        assert versions == [SCHEMA_HEAD] * 4
        BarStore(url).require_schema()


def test_first_migrations_from_separate_processes(tmp_path: Path) -> None:
    # SQLite's file locks between processes are not those between threads of one process.
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    go = tmp_path / "go"
    code = (
        "import sys, time, pathlib\n"
        "from pipelines.data.store import BarStore\n"
        "store = BarStore(sys.argv[1])\n"
        "pathlib.Path(sys.argv[3]).touch()\n"
        "while not pathlib.Path(sys.argv[2]).exists(): time.sleep(0.005)\n"
        "print(store.migrate())\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, url, str(go), str(tmp_path / f"ready{i}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        for i in range(3)
    ]
    deadline = time.monotonic() + 30
    while len(list(tmp_path.glob("ready*"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()  # all have imported: they start together
    outs = [p.communicate(timeout=60) for p in procs]
    assert [(p.returncode, out.strip()) for p, (out, _) in zip(procs, outs, strict=True)] == [
        (0, SCHEMA_HEAD)
    ] * 3, [err for _, err in outs]


def test_two_runs_ingesting_the_same_month(tmp_path: Path, sample_source: FileBarSource) -> None:
    url = f"sqlite:///{tmp_path / 'trading.db'}"
    BarStore(url).migrate()
    reports = run_together(ingest_month(url, sample_source), ingest_month(url, sample_source))
    assert all(r.accounted for r in reports)
    assert sum(r.bars_changed for r in reports) == reports[0].rows_stored  # one stored them

    ref_url = f"sqlite:///{tmp_path / 'reference.db'}"
    BarStore(ref_url).migrate()
    ingest_month(ref_url, sample_source)()
    got = BarStore(url).read_bars(timeframe="15m", start=JAN[0], end=JAN[1])
    want = BarStore(ref_url).read_bars(timeframe="15m", start=JAN[0], end=JAN[1])
    assert got.height == reports[0].rows_stored and got.equals(want)


def _hold_write_lock(path: Path, seconds: float, held: threading.Event) -> None:
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("DELETE FROM ingest_coverage")
        held.set()
        time.sleep(seconds)
        other.execute("COMMIT")
    finally:
        other.close()


def test_a_writer_waits_for_another(tmp_path: Path, sample_bars: pl.DataFrame) -> None:
    path = tmp_path / "trading.db"
    store = BarStore(f"sqlite:///{path}", busy_timeout=20)
    store.migrate()
    held = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(path, 1.5, held))
    holder.start()
    held.wait(10)
    t0 = time.monotonic()
    assert store.upsert_bars(sample_bars, timeframe="15m", source="t") == sample_bars.height
    holder.join()
    assert time.monotonic() - t0 > 1.0  # it waited, then wrote
    assert store.count_bars() == sample_bars.height


def test_a_writer_kept_waiting_too_long_gets_a_clear_error(
    tmp_path: Path, sample_source: FileBarSource, sample_bars: pl.DataFrame
) -> None:
    path = tmp_path / "trading.db"
    store = BarStore(f"sqlite:///{path}", busy_timeout=0.5)
    store.migrate()
    held = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(path, 4, held))
    holder.start()
    held.wait(10)
    try:
        message = rf"{path} is locked by another writer: waited 0\.5 s.*busy timeout"
        with pytest.raises(StoreError, match=message):
            store.upsert_bars(sample_bars, timeframe="15m", source="t")
        assert store.migrate() == SCHEMA_HEAD  # at the newest schema already: no lock needed
        _, universe = load_settings(SAMPLE_SETTINGS)
        with pytest.raises(StoreError, match=message):
            ingest_window(
                sample_source, store, universe, ValidationConfig(), JAN, as_of=NOW, batch="j"
            )
    finally:
        holder.join()
    assert store.count_bars() == 0
