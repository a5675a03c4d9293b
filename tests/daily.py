"""The bundled daily sample (``config/daily``), read and validated once per test session."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import polars as pl

from pipelines.bars.validate import validate_bars
from pipelines.config import FileSourceConfig, LabelSettings, load_settings
from pipelines.data.sources import FileBarSource

ROOT = Path(__file__).resolve().parent.parent
DAILY_SETTINGS = ROOT / "config" / "daily" / "settings.yaml"


def daily_label_settings() -> LabelSettings:
    return load_settings(DAILY_SETTINGS)[0].labels


@cache
def daily_sample_bars() -> pl.DataFrame:
    """Every bar of the bundled daily sample (24 symbols, 2018-01-02..2019-02-15), validated:
    one bar per symbol and session, ``ts`` the session's regular open (UTC)."""
    settings, universe = load_settings(DAILY_SETTINGS)
    cfg = settings.environments["local"].source
    assert isinstance(cfg, FileSourceConfig)
    source = FileBarSource(cfg, universe.base_timeframe, root=ROOT)
    raw = pl.concat(source.read_file(p, s) for p, s in source.files())
    result = validate_bars(
        raw,
        universe=universe.symbol_names,
        timeframe=universe.base_timeframe,
        session=universe.session,
    )
    assert result.rows_in == result.rows_stored + result.rows_quarantined
    return result.bars
