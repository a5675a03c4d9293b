"""A re-fetch supersedes what the previous fetch of its window stored, and rows PostgreSQL could
not hold before (long names, NUL bytes) are stored or quarantined as on SQLite.

The scenarios are functions of a store so that tests/integration/test_store_reconcile_postgres.py
runs the very same ones on the real PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from pipelines.config import (
    ColumnMap,
    FileSourceConfig,
    SymbolSpec,
    UniverseConfig,
    ValidationConfig,
)
from pipelines.data.ingest import IngestReport, ingest_window
from pipelines.data.sources import FileBarSource
from pipelines.data.store import BarStore

pytestmark = pytest.mark.unit
JAN = (datetime(2019, 1, 1, 5, tzinfo=UTC), datetime(2019, 2, 1, 5, tzinfo=UTC))
FEB = (datetime(2019, 2, 1, 5, tzinfo=UTC), datetime(2019, 3, 1, 5, tzinfo=UTC))
NOW = datetime(2026, 1, 1, tzinfo=UTC)
HEADER = "timestamp,open,high,low,close,volume"
UNIVERSE = UniverseConfig(
    name="t",
    timeframe="15m",
    history_start=date(2019, 1, 1),
    symbols=(SymbolSpec(symbol="AAPL"), SymbolSpec(symbol="MSFT")),
)


def _bar(stamp: str, close: str = "1.5") -> str:
    return f"{stamp},1,2,0.5,{close},100"


def _day(day: str, n: int) -> list[str]:
    """``n`` regular-session 15-minute bars of ``day`` (New York wall clock, stamped at end)."""
    stamps = [f"{9 + (45 + 15 * i) // 60:02d}:{(45 + 15 * i) % 60:02d}:00" for i in range(n)]
    return [_bar(f"{day} {t}") for t in stamps]


def _write(directory: Path, symbol: str, rows: list[str]) -> None:
    (directory / f"{symbol}_15min.csv").write_text("\n".join([HEADER, *rows]) + "\n")


def _per_symbol_source(directory: Path) -> FileBarSource:
    cfg = FileSourceConfig(
        path=str(directory),
        pattern="{symbol}_15min.csv",
        format="csv",
        timezone="America/New_York",
        label="end",
    )
    return FileBarSource(cfg, UNIVERSE.base_timeframe)


def _ingest(source: FileBarSource, store: BarStore, window: tuple[datetime, datetime], batch: str):  # type: ignore[no-untyped-def]
    return ingest_window(
        source, store, UNIVERSE, ValidationConfig(), window, as_of=NOW, batch=batch, refetch=True
    )


def _stored(store: BarStore, window: tuple[datetime, datetime]) -> int:
    return store.read_bars(timeframe="15m", start=window[0], end=window[1]).height


def check_refetch_reconciles(store: BarStore, tmp_path: Path) -> None:
    """Fix a bad row at the source and re-fetch: its quarantine row goes, its bar is stored;
    delete a row at the source and re-fetch: its bar goes. Rows in the source for the window
    = bars stored + rows quarantined, after every fetch."""
    src_dir = tmp_path / "bars"
    src_dir.mkdir()
    aapl = _day("2019-01-04", 6)
    bad = aapl.copy()
    bad[2] = _bar("2019-01-04 10:15:00", close="1.5x")  # unparseable close
    bad.insert(4, _bar("2019-01-04 10:2?:00"))  # unparseable time: anchored to the row before
    feb = _day("2019-02-04", 3)
    _write(src_dir, "AAPL", bad + feb)
    _write(src_dir, "MSFT", _day("2019-01-04", 5))
    source = _per_symbol_source(src_dir)

    first = _ingest(source, store, JAN, "jan")
    assert first.accounted and (first.rows_in, first.rows_quarantined) == (12, 2)
    assert _stored(store, JAN) == 10 and store.count_quarantine() == 2
    _ingest(source, store, FEB, "feb")
    assert _stored(store, FEB) == 3

    same = _ingest(source, store, JAN, "jan-again")
    assert (same.bars_changed, same.bars_deleted, same.quarantine_added) == (0, 0, 0)
    assert same.quarantine_removed == 0
    assert store.count_quarantine() == 2

    _write(src_dir, "AAPL", aapl + feb)  # both bad rows fixed (the second one removed)
    fixed = _ingest(source, store, JAN, "jan-fixed")
    assert fixed.accounted and (fixed.rows_in, fixed.rows_quarantined) == (11, 0)
    assert fixed.bars_changed == 1  # the fixed bar
    assert (fixed.quarantine_removed, fixed.bars_deleted) == (2, 0)
    assert store.count_quarantine() == 0
    assert _stored(store, JAN) == fixed.rows_in == 11

    _write(src_dir, "MSFT", _day("2019-01-04", 5)[:-1])  # the last MSFT bar is gone at the source
    gone = _ingest(source, store, JAN, "jan-deleted")
    assert gone.accounted and gone.rows_in == 10
    assert (gone.bars_changed, gone.bars_deleted) == (0, 1)  # the deleted bar
    msft = store.read_bars(timeframe="15m", start=JAN[0], end=JAN[1], symbols=["MSFT"])
    assert msft.height == 4 and _stored(store, JAN) == 10
    assert _stored(store, FEB) == 3  # another window of the same files is left alone


def check_refetch_keeps_other_windows_quarantine(store: BarStore, tmp_path: Path) -> None:
    """A row without a parsed time belongs to the window of the row before it: a fetch of
    another window of the same file neither removes nor duplicates it."""
    src_dir = tmp_path / "bars"
    src_dir.mkdir()
    jan = _day("2019-01-04", 3)
    jan.insert(2, _bar("garbage"))
    _write(src_dir, "AAPL", jan + _day("2019-02-04", 3))
    _write(src_dir, "MSFT", _day("2019-01-04", 3))
    source = _per_symbol_source(src_dir)
    _ingest(source, store, JAN, "jan")
    assert store.quarantine_by_batch("jan") == {"unparseable_value": 1}
    feb = _ingest(source, store, FEB, "feb")
    assert feb.rows_quarantined == 0 and store.count_quarantine() == 1
    again = _ingest(source, store, JAN, "jan2")
    assert again.quarantine_added == 0 and store.count_quarantine() == 1


def hostile_batch(tmp_path: Path) -> FileBarSource:
    """One file whose directory name overflows the old 64-character source column and whose
    rows hold a symbol of 80 characters and NUL bytes in a symbol, a price and a time."""
    src_dir = tmp_path / ("d" * 70)
    src_dir.mkdir()
    rows = [
        "symbol,timestamp,open,high,low,close,volume",
        "AAPL,2019-01-04 09:45:00,1,2,0.5,1.5,100",
        "AAPL,2019-01-04 10:00:00,1,2,0.5,1.5,100",
        "AAPL,2019-01-04 10:15:00,1,2,0.5,1\x005,100",
        "AAPL,2019-01-04 10:3\x000:00,1,2,0.5,1.5,100",
        "MSFT,2019-01-04 10:00:00,1,2,0.5,1.5,100",
        "MS\x00FT,2019-01-04 10:00:00,1,2,0.5,1.5,100",
        "A" * 80 + ",2019-01-04 10:00:00,1,2,0.5,1.5,100",
    ]
    (src_dir / "bars.csv").write_text("\n".join(rows) + "\n")
    cfg = FileSourceConfig(
        path=str(src_dir),
        pattern="*.csv",
        format="csv",
        columns=ColumnMap(symbol="symbol"),
        timezone="America/New_York",
        label="end",
    )
    return FileBarSource(cfg, UNIVERSE.base_timeframe)


def ingest_hostile_batch(store: BarStore, tmp_path: Path) -> tuple[IngestReport, list[tuple]]:  # type: ignore[type-arg]
    """Ingest :func:`hostile_batch`; return the report and what the store holds, comparable
    across databases."""
    source = hostile_batch(tmp_path)
    report = _ingest(source, store, JAN, "hostile")
    bars = store.read_bars(timeframe="15m", start=JAN[0], end=JAN[1])
    q = store.read_quarantine(start=JAN[0], end=JAN[1], batch="hostile")
    held = sorted(bars.select("symbol", "ts", "close").rows()) + sorted(
        q.select("source", "source_file", "source_row", "symbol", "rule", "detail", "raw").rows()
    )
    return report, held


def test_refetch_reconciles_on_sqlite(tmp_path: Path) -> None:
    store = BarStore(f"sqlite:///{tmp_path / 'trading.db'}")
    store.migrate()
    check_refetch_reconciles(store, tmp_path)


def test_refetch_keeps_other_windows_quarantine_on_sqlite(tmp_path: Path) -> None:
    store = BarStore(f"sqlite:///{tmp_path / 'trading.db'}")
    store.migrate()
    check_refetch_keeps_other_windows_quarantine(store, tmp_path)


def test_hostile_rows_are_stored_or_quarantined_on_sqlite(tmp_path: Path) -> None:
    store = BarStore(f"sqlite:///{tmp_path / 'trading.db'}")
    store.migrate()
    report, held = ingest_hostile_batch(store, tmp_path)
    assert report.accounted and (report.rows_in, report.rows_stored) == (7, 3)
    assert report.by_reason == {"symbol_not_in_universe": 2, "unparseable_value": 2}
    assert store.count_bars() == 3 and store.count_quarantine() == 4
    text = " ".join(str(v) for row in held for v in row)
    assert "\x00" not in text and "MS\\x00FT" in text  # NUL kept visible, as the text \x00
    assert {s for s, *_ in store.bar_counts().rows()} == {"AAPL", "MSFT"}


def test_a_universe_change_keeps_the_quarantine_of_files_not_read(tmp_path: Path) -> None:
    """Rows of a symbol that left the universe were not fetched again: a fetch of another
    symbol does not take their quarantine rows for its own."""
    store = BarStore(f"sqlite:///{tmp_path / 'trading.db'}")
    store.migrate()
    src = tmp_path / "src"
    src.mkdir()
    _write(src, "AAPL", _day("2019-01-04", 2))
    _write(src, "MSFT", [*_day("2019-01-04", 1), _bar("2019-01-04 10:15:00", "n/a")])
    source = _per_symbol_source(src)
    _ingest(source, store, JAN, "jan")
    assert store.count_quarantine() == 1
    _write(src, "TSLA", _day("2019-01-04", 2))
    changed = UNIVERSE.model_copy(
        update={"symbols": (SymbolSpec(symbol="AAPL"), SymbolSpec(symbol="TSLA"))}
    )
    report = ingest_window(
        source, store, changed, ValidationConfig(), JAN, as_of=NOW, batch="jan2", refetch=True
    )
    assert report.quarantine_removed == 0 and store.count_quarantine() == 1


def _multi_symbol_source(directory: Path) -> FileBarSource:
    cfg = FileSourceConfig(
        path=str(directory),
        pattern="*.csv",
        columns=ColumnMap(symbol="symbol"),
        timezone="America/New_York",
        label="end",
    )
    return FileBarSource(cfg, UNIVERSE.base_timeframe)


def test_a_file_removed_at_the_source_takes_its_quarantine_rows_along(tmp_path: Path) -> None:
    """Quarantine rows of a file that is gone (removed or renamed) are superseded by the next
    fetch of their window: the identity counts the source as it is now."""
    store = BarStore(f"sqlite:///{tmp_path / 'trading.db'}")
    store.migrate()
    src = tmp_path / "src"
    src.mkdir()
    head = "symbol,timestamp,open,high,low,close,volume"
    (src / "main.csv").write_text(f"{head}\nAAPL,2019-01-04 09:45,1,2,0.5,1.5,100\n")
    (src / "junk.csv").write_text(f"{head}\nSPY,2019-01-04 09:45,1,2,0.5,1.5,100\n")
    source = _multi_symbol_source(src)
    first = _ingest(source, store, JAN, "jan")
    assert (first.rows_stored, first.rows_quarantined) == (1, 1)
    (src / "junk.csv").unlink()
    again = _ingest(source, store, JAN, "jan2")
    assert again.quarantine_removed == 1 and store.count_quarantine() == 0


def test_a_timeless_row_found_by_a_later_window_is_kept_by_the_earlier_one(
    tmp_path: Path,
) -> None:
    """A row without a parsed time moves to February when its January neighbour is removed;
    re-fetching February claims it, so a later re-fetch of January leaves it alone."""
    store = BarStore(f"sqlite:///{tmp_path / 'trading.db'}")
    store.migrate()
    src = tmp_path / "src"
    src.mkdir()
    _write(src, "AAPL", [_bar("2019-01-31 15:45:00"), _bar("garbage"), _bar("2019-02-04 09:45:00")])
    _write(src, "MSFT", _day("2019-01-04", 1))
    source = _per_symbol_source(src)
    _ingest(source, store, JAN, "jan")
    _ingest(source, store, FEB, "feb")
    assert store.count_quarantine() == 1
    _write(src, "AAPL", [_bar("garbage"), _bar("2019-02-04 09:45:00")])
    feb = _ingest(source, store, FEB, "feb2")
    assert feb.rows_quarantined == 1
    jan = _ingest(source, store, JAN, "jan2")
    assert jan.rows_quarantined == 0 and jan.quarantine_removed == 0
    assert store.count_quarantine() == 1


def test_overlapping_requests_count_a_foreign_row_once(tmp_path: Path) -> None:
    """When symbols are covered to different points, one ingestion makes overlapping requests;
    a row of no universe symbol in a shared file is counted (and quarantined) once."""
    store = BarStore(f"sqlite:///{tmp_path / 'trading.db'}")
    store.migrate()
    src = tmp_path / "src"
    src.mkdir()
    head = "symbol,timestamp,open,high,low,close,volume"
    rows = [
        "AAPL,2019-01-04 09:45,1,2,0.5,1.5,100",
        "MSFT,2019-01-04 09:45,1,2,0.5,1.5,100",
        "SPY,2019-01-22 09:45,1,2,0.5,1.5,100",
        "AAPL,2019-01-22 09:45,1,2,0.5,1.5,100",
        "MSFT,2019-01-22 09:45,1,2,0.5,1.5,100",
    ]
    (src / "all.csv").write_text("\n".join([head, *rows]) + "\n")
    source = _multi_symbol_source(src)
    half = (JAN[0], datetime(2019, 1, 15, 5, tzinfo=UTC))
    only_aapl = UNIVERSE.model_copy(update={"symbols": (SymbolSpec(symbol="AAPL"),)})
    ingest_window(source, store, only_aapl, ValidationConfig(), half, as_of=NOW, batch="a")
    report = ingest_window(source, store, UNIVERSE, ValidationConfig(), JAN, as_of=NOW, batch="b")
    assert len(report.requests) == 2 and report.requests[0].start != report.requests[1].start
    assert report.accounted and report.rows_quarantined == 1  # SPY, once
    assert store.count_quarantine() == 1  # and stored once, not superseded by the second request


def test_a_refetch_of_a_truncated_file_forgets_the_coverage_it_no_longer_holds(
    tmp_path: Path,
) -> None:
    """Fetched as the file grows (two days, then the third), re-fetched while the vendor
    rewrites it (one day left), fetched again once it is whole: every day is stored, none is
    left "covered" without its bars."""
    store = BarStore(f"sqlite:///{tmp_path / 'trading.db'}")
    store.migrate()
    src = tmp_path / "src"
    src.mkdir()
    days = ["2019-01-04", "2019-01-07", "2019-01-08"]
    only = UNIVERSE.model_copy(update={"symbols": (SymbolSpec(symbol="MSFT"),)})

    def run(upto: int, batch: str, refetch: bool = False) -> None:
        _write(src, "MSFT", [r for d in days[:upto] for r in _day(d, 26)])
        ingest_window(
            _per_symbol_source(src),
            store,
            only,
            ValidationConfig(),
            JAN,
            as_of=NOW,
            batch=batch,
            refetch=refetch,
        )

    run(2, "a")
    run(3, "b")
    assert _stored(store, JAN) == 78
    run(1, "c", refetch=True)
    assert _stored(store, JAN) == 26
    run(3, "d")
    assert _stored(store, JAN) == 78
