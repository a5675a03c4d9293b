"""The live entry point's refusals: they say what to set, never a traceback from deep inside."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from pipelines.data.store import BarStore
from quantdag.live import LiveConfigError, build_session, connection, load_model
from quantdag.project import load_project


def test_no_stored_history_is_refused_with_what_to_do(tmp_path: Path) -> None:
    db = BarStore(f"sqlite:///{tmp_path / 'empty.db'}")
    db.migrate()
    with pytest.raises(LiveConfigError, match=r"no 15m bars(.|\n)*make run"):
        build_session(
            load_project({"QUANTDAG_ENV": "local"}),
            session=date(2019, 2, 15),
            attempt=1,
            run_id="t",
            fit=None,  # type: ignore[arg-type]
            broker=None,  # type: ignore[arg-type]
            feed=None,  # type: ignore[arg-type]
            db=db,
            clock=lambda: datetime(2019, 2, 15, 14, tzinfo=UTC),
        )


def test_paper_needs_keys_from_the_environment_and_hides_them() -> None:
    project = load_project({"QUANTDAG_ENV": "paper"})
    with pytest.raises(LiveConfigError, match="APCA_API_KEY_ID and APCA_API_SECRET_KEY"):
        connection(project, {})
    conn = connection(project, {"APCA_API_KEY_ID": "AKxyz123", "APCA_API_SECRET_KEY": "s3cr3t"})
    assert conn.paper and "AKxyz123" not in repr(conn) and "s3cr3t" not in repr(conn)


def test_a_model_other_than_the_champion_is_refused_outside_local(tmp_path: Path) -> None:
    project = load_project({"QUANTDAG_ENV": "paper"})
    with pytest.raises(LiveConfigError, match="local environment only"):
        load_model(project, tmp_path, {"QUANTDAG_LIVE_MODEL_VERSION": "1"})
