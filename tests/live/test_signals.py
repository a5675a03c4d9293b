"""The live signals (streamed features -> model -> p0, volatility) equal the ones the backtest
reads for the same bars with the same model."""

from __future__ import annotations

import numpy as np
import polars as pl

from pipelines.config import load_settings
from pipelines.features import FeatureConfig
from pipelines.features.stream import FeatureStream
from pipelines.labels.partition import barrier_config
from pipelines.live.signals import ModelSignals
from quantdag.testing.live import Day, backtest_of
from tests.conftest import SAMPLE_SETTINGS
from tests.live.conftest import TF


def test_streamed_signals_equal_the_backtest_s(day: Day) -> None:
    settings, _ = load_settings(SAMPLE_SETTINGS)
    stream = FeatureStream(FeatureConfig(TF, "regular", "XNYS"), day.symbols)
    live = ModelSignals(
        day.fit, stream, sizing=day.sizing, barriers=barrier_config(settings.labels)
    )
    live.warm(day.history)
    _, expected = backtest_of(day)
    expected = expected.sort("symbol", "ts")
    rows = []
    hashes = set()
    for _, bars in day.day_bars().sort("ts", "symbol").group_by("ts", maintain_order=True):
        got = live.on_bars(bars)
        hashes.add(got.features_sha256)
        for s, p in got.predictions.items():
            rows.append({"symbol": s, "ts": bars["ts"][0], **p})
    got_frame = pl.DataFrame(rows).sort("symbol", "ts")
    assert got_frame.height == expected.height > 500
    assert got_frame["ts"].equals(expected["ts"])
    assert len(hashes) == 26  # one feature digest a bar time, each different
    np.testing.assert_allclose(got_frame["prob"], expected["prob"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        got_frame["volatility"], expected["volatility"], rtol=1e-12, equal_nan=True
    )
    assert (got_frame["p0"] == day.fit.base_rate).all()


def test_the_std_volatility_is_computed_from_the_bars_seen(day: Day) -> None:
    """Barriers on the standard deviation of returns: not a feature of the stream, recomputed
    from the bars seen so far, equal to the labels' own."""
    from pipelines.backtest.model_backtest import signal_volatility
    from pipelines.labels.triple_barrier import BarrierConfig

    barriers = BarrierConfig(volatility="std", volatility_window=20)
    stream = FeatureStream(FeatureConfig(TF, "regular", "XNYS"), day.symbols)
    live = ModelSignals(day.fit, stream, sizing=day.sizing, barriers=barriers)
    live.warm(day.history)
    bars = day.day_bars().sort("ts", "symbol")
    every = pl.concat([day.history.select(bars.columns), bars])
    expected = signal_volatility(every, barriers)
    for _, at in list(bars.group_by("ts", maintain_order=True))[:3]:
        got = live.on_bars(at)
        want = at.select("symbol", "ts").join(expected, on=["symbol", "ts"], how="left")
        np.testing.assert_allclose(got.signals.volatility, want["volatility"], rtol=1e-12)
