"""Shared fixtures: the bundled sample, the shared real data, the real local PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import sqlalchemy as sa

from pipelines.config import FileSourceConfig, load_settings
from pipelines.data.sources import FileBarSource

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_SETTINGS = ROOT / "config" / "settings.yaml"
SHARED = Path(os.environ.get("QUANTDAG_SHARED_DATA", ROOT.parent / "shared" / "data"))
SCHEMA_HEAD = "0006"  # the newest migration of the trading database (a new one moves this)
PG_ADMIN_URL = os.environ.get(
    "QUANTDAG_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def shared_file(name: str) -> Path:
    """A file of ../shared/data, or a skip saying why it is needed and where it was looked for."""
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"needs the real data set {name}, looked for it in {SHARED} (absent here)")
    return path


@pytest.fixture(scope="session")
def sample_source() -> FileBarSource:
    settings, universe = load_settings(SAMPLE_SETTINGS)
    cfg = settings.environments["local"].source
    assert isinstance(cfg, FileSourceConfig)
    return FileBarSource(cfg, universe.base_timeframe, root=ROOT)


@pytest.fixture(scope="session")
def sample_raw(sample_source: FileBarSource) -> pl.DataFrame:
    """Every row of the bundled 15-minute sample, normalised (raw schema)."""
    return pl.concat(sample_source.read_file(p, s) for p, s in sample_source.files())


@pytest.fixture(scope="session")
def sample_bars(sample_raw: pl.DataFrame) -> pl.DataFrame:
    """The bundled 15-minute sample validated (every row is clean): stored-bar schema."""
    from pipelines.bars.validate import validate_bars
    from pipelines.timeframes import Timeframe

    result = validate_bars(
        sample_raw,
        universe=sample_raw["symbol"].unique().to_list(),
        timeframe=Timeframe.parse("15m"),
        session="regular",
    )
    assert result.rows_quarantined == 0
    return result.bars


def shared_av_bars(
    symbols: list[str], before: str | None = None, session: str = "regular"
) -> pl.DataFrame | None:
    """Validated bars of ``symbols`` (``session``: regular or extended hours) from the shared
    15-minute set (bar starts before the ISO date ``before``), or None where it is absent."""
    from datetime import datetime

    from pipelines.bars.validate import validate_bars
    from pipelines.config import ColumnMap
    from pipelines.timeframes import Timeframe

    path = SHARED / "us_equities_15min_2020_2022_av.parquet"
    if not path.exists():
        return None
    tf = Timeframe.parse("15m")
    cfg = FileSourceConfig(
        path=str(path.parent),
        pattern=path.name,
        format="parquet",
        columns=ColumnMap(symbol="symbol"),
        label="end",
    )
    raw = FileBarSource(cfg, tf).read_file(path, None).filter(pl.col("symbol").is_in(symbols))
    bars = validate_bars(raw, universe=symbols, timeframe=tf, session=session).bars  # type: ignore[arg-type]
    if before is not None:
        bars = bars.filter(pl.col("ts") < datetime.fromisoformat(before + "T00:00:00+00:00"))
    return bars


def _pg_available() -> bool:
    try:
        with sa.create_engine(PG_ADMIN_URL).connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return True
    except sa.exc.OperationalError:
        return False


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The admin URL of the real local PostgreSQL. In CI its absence is a failure."""
    if not _pg_available():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}; .ci/run should start it")
        pytest.skip(f"PostgreSQL is not reachable at {PG_ADMIN_URL}")
    return PG_ADMIN_URL


@pytest.fixture
def pg_database(pg_server: str) -> Iterator[str]:
    """A fresh, empty database on the local PostgreSQL, dropped after the test."""
    name = f"quantdag_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(pg_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = pg_server.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Each phase's report on the item (``rep_setup``, ``rep_call``), for fixtures that act on
    a failure (the browser tests' screenshots)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
