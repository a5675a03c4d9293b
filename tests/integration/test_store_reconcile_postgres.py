"""Re-fetch reconciliation and hostile rows on the real PostgreSQL: the same scenarios as on
SQLite (tests/unit/test_store_reconcile.py), with the same outcome."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from pipelines.data.store import BarStore
from tests.unit.test_store_reconcile import (
    check_refetch_keeps_other_windows_quarantine,
    check_refetch_reconciles,
    ingest_hostile_batch,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_store(pg_database: str) -> BarStore:
    store = BarStore(pg_database)
    store.migrate()
    return store


def test_refetch_reconciles_on_postgres(pg_store: BarStore, tmp_path: Path) -> None:
    check_refetch_reconciles(pg_store, tmp_path)


def test_refetch_keeps_other_windows_quarantine_on_postgres(
    pg_store: BarStore, tmp_path: Path
) -> None:
    check_refetch_keeps_other_windows_quarantine(pg_store, tmp_path)


def test_hostile_rows_end_as_on_sqlite(pg_store: BarStore, tmp_path: Path) -> None:
    lite = BarStore(f"sqlite:///{tmp_path / 'trading.db'}")
    lite.migrate()
    (tmp_path / "pg").mkdir()
    (tmp_path / "lite").mkdir()
    pg_report, pg_held = ingest_hostile_batch(pg_store, tmp_path / "pg")
    lite_report, lite_held = ingest_hostile_batch(lite, tmp_path / "lite")
    assert pg_report.accounted and pg_report.rows_quarantined == 4
    for field in ("rows_in", "rows_stored", "rows_quarantined", "bars_changed", "by_reason"):
        assert getattr(pg_report, field) == getattr(lite_report, field), field
    assert pg_held == lite_held
    assert (pg_store.count_bars(), pg_store.count_quarantine()) == (3, 4)
    with pg_store.engine.connect() as conn:
        sources = conn.execute(sa.text("SELECT DISTINCT source FROM bars")).scalars().all()
    assert sources == ["files:" + "d" * 70]
