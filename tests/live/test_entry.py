"""The live entry point's refusals: they say what to set, never a traceback from deep inside."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from pipelines.config import LIVE_CONFIRMATION
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


@pytest.mark.parametrize(
    ("environment", "env", "refused"),
    [
        # paper must never reach the real-money host, whatever APCA_API_BASE_URL says
        ("paper", {"APCA_API_BASE_URL": "https://api.alpaca.markets"}, "sends orders to paper-api"),
        ("paper", {"APCA_API_BASE_URL": "https://evil.example.com"}, "sends orders to paper-api"),
        ("paper", {"APCA_DATA_URL": "https://data.example.com"}, "not an alpaca.markets host"),
        ("paper", {"APCA_API_BASE_URL": "http://paper-api.alpaca.markets"}, "https/wss"),
        ("live", {"APCA_API_BASE_URL": "https://paper-api.alpaca.markets"}, "sends orders to api"),
        # local reaches the project's own server only: a key in the environment stays unused
        ("local", {"QUANTDAG_ALPACA_URL": "https://api.alpaca.markets"}, "loopback only"),
        ("local", {"QUANTDAG_ALPACA_URL": "https://paper-api.alpaca.markets"}, "loopback only"),
        ("local", {"QUANTDAG_ALPACA_URL": "http://10.0.0.5:8765"}, "loopback only"),
    ],
)
def test_an_endpoint_of_another_environment_is_refused(
    environment: str, env: dict[str, str], refused: str
) -> None:
    extra = {"QUANTDAG_LIVE_CONFIRM": LIVE_CONFIRMATION} if environment == "live" else {}
    project = _project(environment, extra)
    keys = {"APCA_API_KEY_ID": "AKxyz123", "APCA_API_SECRET_KEY": "s3cr3t"}
    with pytest.raises(LiveConfigError, match=refused) as err:
        connection(project, {**keys, **env})
    assert "s3cr3t" not in str(err.value) and "AKxyz123" not in str(err.value)


@pytest.mark.parametrize(
    ("environment", "env"),
    [
        ("paper", {}),
        ("paper", {"APCA_API_BASE_URL": "https://paper-api.alpaca.markets"}),
        ("paper", {"APCA_API_BASE_URL": "http://127.0.0.1:8765"}),
        ("local", {"QUANTDAG_ALPACA_URL": "http://127.0.0.1:8765"}),
        ("local", {"QUANTDAG_ALPACA_URL": "http://localhost:9000"}),
    ],
)
def test_the_endpoints_of_the_environment_are_accepted(
    environment: str, env: dict[str, str]
) -> None:
    project = _project(environment, {})
    keys = {"APCA_API_KEY_ID": "AKxyz123", "APCA_API_SECRET_KEY": "s3cr3t"}
    conn = connection(project, {**keys, **env})
    assert conn.paper


def _project(environment: str, extra: dict[str, str]) -> Any:
    return load_project({"QUANTDAG_ENV": environment, **extra})
