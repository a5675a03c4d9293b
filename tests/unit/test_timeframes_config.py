from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import (
    LIVE_CONFIRMATION,
    ConfigError,
    Settings,
    UniverseConfig,
    load_model,
    load_settings,
    selected_environment,
)
from pipelines.timeframes import Timeframe

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "minutes", "daily"),
    [
        ("1m", 1, False),
        ("15m", 15, False),
        ("60m", 60, False),
        ("1h", 60, False),
        ("1d", 1440, True),
    ],
)
def test_timeframe_parse(text: str, minutes: int, daily: bool) -> None:
    tf = Timeframe.parse(text)
    assert (tf.minutes, tf.is_daily) == (minutes, daily)


def test_timeframe_rejects_nonsense_with_an_example() -> None:
    with pytest.raises(ValueError, match="for example '1m'"):
        Timeframe.parse("15 minutes")


def test_timeframe_divides() -> None:
    assert Timeframe.parse("5m").divides(Timeframe.parse("15m"))
    assert not Timeframe.parse("15m").divides(Timeframe.parse("5m"))
    assert Timeframe.parse("15m").divides(Timeframe.parse("1d"))


@pytest.mark.parametrize("name", ["settings.yaml", "settings.1m.yaml"])
def test_shipped_settings_load(name: str) -> None:
    settings, universe = load_settings(ROOT / "config" / name)
    assert set(settings.environments) == {"local", "paper", "live"}
    assert len(universe.symbols) == 24
    assert all(universe.base_timeframe.divides(t) for t in universe.target_timeframes)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_unknown_key_names_file_key_and_suggestion(tmp_path: Path) -> None:
    text = (ROOT / "config" / "settings.yaml").read_text().replace("columns:", "colums:", 1)
    path = _write(tmp_path, "settings.yaml", text)
    with pytest.raises(ConfigError) as err:
        load_model(path, Settings)
    message = str(err.value)
    assert str(path) in message
    assert "environments.local.source.files.colums: unknown key" in message
    assert "did you mean 'columns'" in message


def test_universe_typo_is_an_error(tmp_path: Path) -> None:
    text = (ROOT / "config" / "universe.yaml").read_text().replace("session:", "sesion:")
    path = _write(tmp_path, "universe.yaml", text)
    with pytest.raises(ConfigError, match=r"sesion: unknown key \(did you mean 'session'\?\)"):
        load_model(path, UniverseConfig)


def test_aggregate_target_must_be_a_multiple(tmp_path: Path) -> None:
    text = (ROOT / "config" / "universe.yaml").read_text().replace("[60m, 1d]", "[5m]")
    path = _write(tmp_path, "universe.yaml", text)
    with pytest.raises(ConfigError, match="5m cannot be built from 15m bars"):
        load_model(path, UniverseConfig)


def test_duplicate_symbol_is_an_error(tmp_path: Path) -> None:
    text = (ROOT / "config" / "universe.yaml").read_text() + "  - {symbol: AAPL}\n"
    path = _write(tmp_path, "universe.yaml", text)
    with pytest.raises(ConfigError, match="symbol AAPL is listed twice"):
        load_model(path, UniverseConfig)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_model(tmp_path / "nope.yaml", Settings)
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_model(_write(tmp_path, "bad.yaml", "a: [1, 2"), Settings)


def test_environment_switch() -> None:
    assert selected_environment({}) == "local"
    assert selected_environment({"QUANTDAG_ENV": "paper"}) == "paper"
    with pytest.raises(ConfigError, match="not an environment"):
        selected_environment({"QUANTDAG_ENV": "prod"})
    with pytest.raises(ConfigError, match="explicit opt-in"):
        selected_environment({"QUANTDAG_ENV": "live"})
    live = {"QUANTDAG_ENV": "live", "QUANTDAG_LIVE_CONFIRM": LIVE_CONFIRMATION}
    assert selected_environment(live) == "live"


def test_each_environment_has_its_holdout() -> None:
    from quantdag.project import load_project

    settings = str(ROOT / "config" / "settings.yaml")
    local = load_project({"QUANTDAG_SETTINGS": settings, "QUANTDAG_ENV": "local"})
    paper = load_project({"QUANTDAG_SETTINGS": settings, "QUANTDAG_ENV": "paper"})
    assert local.research.holdout.start is not None and local.research.holdout.symbols
    # A live account's new sessions are never held out of its nightly training.
    assert paper.research.holdout.start is None and not paper.research.holdout.symbols


def test_a_holdout_symbol_outside_the_universe_is_refused_in_any_block(tmp_path: Path) -> None:
    text = (ROOT / "config" / "settings.yaml").read_text()
    text = text.replace("universe: universe.yaml", f"universe: {ROOT / 'config' / 'universe.yaml'}")
    text = text.replace("holdout: {start: null, symbols: []}", "holdout: {symbols: [NOPE]}", 1)
    path = _write(tmp_path, "settings.yaml", text)
    with pytest.raises(ConfigError, match=r"environments\.paper\.research\.holdout\.symbols: NOPE"):
        load_settings(path)
