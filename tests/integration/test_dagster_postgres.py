"""Dagster on PostgreSQL: instance storage through dagster-postgres (as `make dev` does with
DAGSTER_PG_URL), the trading database on PostgreSQL, and the paper environment's Alpaca source
pointed at the local Alpaca-compatible server."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from quantdag.definitions import build_definitions
from quantdag.project import load_project
from quantdag.testing.alpaca_server import AlpacaFakeServer, sample_bars

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_paper_environment_materializes_on_postgres(
    pg_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster.postgres.yaml", dagster_home / "dagster.yaml")
    plain_url = pg_database.replace("postgresql+psycopg://", "postgresql://")
    monkeypatch.setenv("DAGSTER_PG_URL", plain_url)
    monkeypatch.setenv("QUANTDAG_DATABASE_URL", pg_database)
    monkeypatch.setenv("APCA_API_KEY_ID", "test-key")
    monkeypatch.setenv("APCA_API_SECRET_KEY", "test-secret")

    with AlpacaFakeServer(sample_bars()) as server:
        monkeypatch.setenv("APCA_DATA_URL", server.url)
        defs = build_definitions(load_project({"QUANTDAG_ENV": "paper"}))
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            job = defs.resolve_job_def("market_data_job")
            result = job.execute_in_process(partition_key="2019-01-01", instance=instance)
            assert result.success
            failed = [e.check_name for e in result.get_asset_check_evaluations() if not e.passed]
            assert "rows_accounted" not in failed and "bar_integrity" not in failed
            stored = instance.get_latest_materialization_event(dg.AssetKey("bars_15m"))
            assert stored is not None
            meta = stored.asset_materialization.metadata  # type: ignore[union-attr]
            assert meta["rows_in"].value == meta["rows_stored"].value > 10_000
        assert server.requests, "the Alpaca source was used"

    engine = sa.create_engine(pg_database)
    with engine.connect() as conn:
        by_tf = dict(
            conn.execute(sa.text("SELECT timeframe, count(*) FROM bars GROUP BY timeframe")).all()
        )
        runs = conn.execute(sa.text("SELECT count(*) FROM runs")).scalar()
    engine.dispose()
    assert set(by_tf) == {"15m", "60m", "1d"} and runs == 1
