"""The live tests' session: 2019-02-15 of the bundled 1-minute sample (24 symbols), the
15-minute history before it, a small model trained on that history, and the local Alpaca
server replaying it (see :mod:`quantdag.testing.live`)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import polars as pl
import pytest

from pipelines.backtest.broker import BrokerConfig, CostModel
from pipelines.bars.validate import validate_bars
from pipelines.config import FileSourceConfig, load_settings
from pipelines.data.sources import FileBarSource
from pipelines.execution.path import path_config
from pipelines.labels.partition import barrier_config
from pipelines.timeframes import Timeframe
from quantdag.testing.alpaca_server import LocalAlpaca
from quantdag.testing.live import Day, quick_model
from tests.conftest import ROOT, SAMPLE_SETTINGS

SESSION = date(2019, 2, 15)
OPEN = datetime(2019, 2, 15, 14, 30, tzinfo=UTC)
CLOSE = datetime(2019, 2, 15, 21, 0, tzinfo=UTC)
GRACE = timedelta(seconds=2)
CASH = Decimal("1000000")
TF = Timeframe.parse("15m")


def _minute_sample() -> pl.DataFrame:
    settings, universe = load_settings(ROOT / "config" / "settings.1m.yaml")
    cfg = settings.environments["local"].source
    assert isinstance(cfg, FileSourceConfig)
    src = FileBarSource(cfg, universe.base_timeframe, root=ROOT)
    raw = pl.concat(src.read_file(p, s) for p, s in src.files())
    day = raw.filter(pl.col("ts").dt.convert_time_zone("America/New_York").dt.date() == SESSION)
    result = validate_bars(
        day,
        universe=day["symbol"].unique().to_list(),
        timeframe=Timeframe.parse("1m"),
        session="regular",
    )
    return result.bars


@pytest.fixture(scope="session")
def day(sample_bars: pl.DataFrame) -> Day:
    from assets.backtest import BacktestConfig, configurations

    settings, _ = load_settings(SAMPLE_SETTINGS)
    history = sample_bars.filter(pl.col("ts") < OPEN)
    grid, selected = configurations(BacktestConfig(), settings)
    path = path_config(settings.trading, strategy="model", bar_minutes=15, calendar="XNYS")
    # No square-root impact: the venue does not know the labels' volatility. Costs otherwise
    # as in the backtest (slippage, spread, commission), and a participation cap that binds.
    fills = BrokerConfig(
        CostModel(slippage_bps=1.0, half_spread_bps=1.0, commission_bps=0.5, impact_k=0.0),
        participation=0.02,
        max_leverage=1.0,
    )
    return Day(
        SESSION,
        _minute_sample(),
        history,
        quick_model(history),
        grid[selected],
        path,
        fills,
        barrier_config(settings.labels),
        CASH,
        GRACE,
    )


def replay_server(day: Day, **options: Any) -> LocalAlpaca:
    """The local Alpaca replaying ``day``, filling with its fill model (``options``: more of
    :class:`LocalAlpaca`'s, e.g. ``rate_limit_per_min``); use it as a context manager."""
    return LocalAlpaca(
        day.minutes.select("symbol", "ts", "open", "high", "low", "close", "volume"),
        cash=CASH,
        fill=day.fills,
        fill_minutes=15,
        fill_latency_s=30.0,
        **options,
    )


@pytest.fixture
def server(day: Day) -> Iterator[LocalAlpaca]:
    """The local Alpaca replaying the session, filling with the day's fill model."""
    with replay_server(day) as srv:
        yield srv
