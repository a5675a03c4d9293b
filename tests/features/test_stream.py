"""Streaming parity: the live path's features, stepped one bar time at a time, equal the batch
matrix on the same bars, for every feature (path-dependent, multi-timeframe and cross-sectional
included): every value equal and every null in the same place. Also the stream's bad input."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl
import pytest

from pipelines.features import (
    FeatureConfig,
    FeatureInputError,
    FeatureStream,
    build_features,
    feature_registry,
)
from pipelines.features.checks import stream_mismatches
from pipelines.features.program import ProgramError
from pipelines.features.registry import FeatureSpec
from pipelines.timeframes import Timeframe
from tests.conftest import shared_av_bars

pytestmark = pytest.mark.unit
TF = Timeframe.parse("15m")
CONFIG = FeatureConfig(TF)


def assert_same_rows(batch: pl.DataFrame, stream: pl.DataFrame) -> None:
    """Equal keys, and per feature: nulls at the same places, equal values elsewhere."""
    assert stream_mismatches(batch, stream) == []


def test_stream_equals_the_batch_matrix_on_the_sample(sample_bars: pl.DataFrame) -> None:
    batch = build_features(sample_bars, CONFIG)
    stream = FeatureStream(CONFIG, sample_bars["symbol"].unique().to_list())
    rows = stream.run(sample_bars)
    assert_same_rows(batch, rows)
    # Every category is exercised, SPY is the beta's index here; most features are defined.
    defined = [n for n in batch.columns[2:] if batch[n].drop_nulls().len() > 0]
    assert len(defined) >= 150


def test_warm_then_step_equals_the_batch_on_shared_data() -> None:
    """Warm-up over history, then single updates: the live path's way of using the stream.
    Six symbols without SPY, so the beta's index is the equal-weight universe."""
    bars = shared_av_bars(["AAPL", "MSFT", "JPM", "XOM", "TSM", "ENPH"], before="2021-03-01")
    if bars is None:
        pytest.skip("needs the shared 15-minute set in ../shared/data (absent here)")
    batch = build_features(bars, CONFIG)
    times = bars["ts"].unique().sort()
    cut = times[len(times) * 3 // 4]
    stream = FeatureStream(CONFIG, bars["symbol"].unique().to_list())
    stream.warm(bars.filter(pl.col("ts") < cut))
    frames = []
    for _, group in (
        bars.filter(pl.col("ts") >= cut).sort("symbol").group_by("ts", maintain_order=True)
    ):
        frames.append(stream.update(group.sample(fraction=1.0, shuffle=True, seed=7)).frame())
    live = pl.concat(frames).sort("symbol", "ts")
    assert_same_rows(batch.filter(pl.col("ts") >= cut), live)


def test_stream_equals_the_batch_in_extended_hours() -> None:
    """Pre-market, regular and post-market segments: the session columns, the opening range
    and the 60-minute buckets of every segment."""
    bars = shared_av_bars(["AAPL", "JPM", "TSLA"], before="2020-12-01", session="extended")
    if bars is None:
        pytest.skip("needs the shared 15-minute set in ../shared/data (absent here)")
    config = FeatureConfig(TF, session="extended")
    stream = FeatureStream(config, ["AAPL", "JPM", "TSLA"])
    rows = stream.run(bars)
    assert bars.filter(pl.col("ts").dt.hour() < 13).height > 0  # pre-market bars are there
    assert_same_rows(build_features(bars, config), rows)


def test_stream_equals_the_batch_on_one_minute_bars() -> None:
    from pipelines.bars.validate import validate_bars
    from pipelines.config import FileSourceConfig, load_settings
    from pipelines.data.sources import FileBarSource
    from tests.conftest import ROOT

    settings, universe = load_settings(ROOT / "config" / "settings.1m.yaml")
    files = settings.environments["local"].source
    assert isinstance(files, FileSourceConfig)
    source = FileBarSource(files, universe.base_timeframe, root=ROOT)
    raw = pl.concat(source.read_file(p, s) for p, s in source.files())
    raw = raw.filter(pl.col("symbol").is_in(["AAPL", "JPM", "MSFT"]))
    tf = Timeframe.parse("1m")
    bars = validate_bars(raw, universe=["AAPL", "JPM", "MSFT"], timeframe=tf, session="regular")
    config = FeatureConfig(tf)
    rows = FeatureStream(config, ["AAPL", "JPM", "MSFT"]).run(bars.bars)
    assert_same_rows(build_features(bars.bars, config), rows)


def test_stream_equals_the_batch_on_degenerate_input(sample_bars: pl.DataFrame) -> None:
    """Flat prices with zero volume, a universe of one, a symbol with a single bar: the stream
    gives the batch's defined values (never inf or NaN), row for row."""
    flat = sample_bars.filter(pl.col("symbol") == "VIX").with_columns(
        open=pl.lit(15.0), high=pl.lit(15.0), low=pl.lit(15.0), close=pl.lit(15.0), volume=0.0
    )
    one_bar = sample_bars.filter(pl.col("symbol") == "MSFT").head(1)
    for bars in (flat, pl.concat([flat, one_bar])):
        symbols = bars["symbol"].unique().to_list()
        batch = build_features(bars, CONFIG)
        rows = FeatureStream(CONFIG, symbols).run(bars)
        assert_same_rows(batch, rows)
        values = rows.select(pl.exclude("symbol", "ts")).to_numpy()
        assert np.isfinite(values[~np.isnan(values)]).all()
        assert not rows.select(pl.exclude("symbol", "ts").is_nan().any()).row(0).count(True)


def test_a_difference_is_reported_with_its_row(sample_bars: pl.DataFrame) -> None:
    bars = sample_bars.filter(pl.col("symbol").is_in(["AAPL", "MSFT"]))
    batch = build_features(bars, CONFIG)
    stream = FeatureStream(CONFIG, ["AAPL", "MSFT"]).run(bars)
    off = stream.with_columns(
        pl.when(pl.int_range(pl.len()) == 500)
        .then(pl.col("momentum_rsi_14") * (1 + 1e-15))
        .otherwise(pl.col("momentum_rsi_14"))
        .alias("momentum_rsi_14")
    )
    problems = stream_mismatches(batch, off)
    assert len(problems) == 1 and problems[0].startswith("momentum_rsi_14 differs at 1 rows")


def test_rows_frame_and_matrix(sample_bars: pl.DataFrame) -> None:
    stream = FeatureStream(CONFIG, ["AAPL", "MSFT"])
    two = sample_bars.filter(pl.col("symbol").is_in(["AAPL", "MSFT"]))
    last_ts = two["ts"].max()
    stream.warm(two.filter(pl.col("ts") < last_ts))
    rows = stream.update(two.filter(pl.col("ts") == last_ts))
    frame = rows.frame()
    assert frame["symbol"].to_list() == ["AAPL", "MSFT"]
    x = rows.matrix(["momentum_rsi_14", "trend_sma_200"])
    assert x.shape == (2, 2)
    assert np.array_equal(x[:, 0], frame["momentum_rsi_14"].to_numpy())
    # A defined NaN stays NaN in the frame (the column-by-column path), a null stays null.
    values = rows.values.copy()
    values[0, 0] = np.nan
    odd = type(rows)(rows.ts, rows.symbols, rows.names, values, rows.valid)
    col = odd.frame()[rows.names[0]]
    assert col.is_nan()[0] and col.null_count() == int((~rows.valid[:, 0]).sum())


def test_stream_bad_input(sample_bars: pl.DataFrame) -> None:
    aapl = sample_bars.filter(pl.col("symbol") == "AAPL").sort("ts")
    stream = FeatureStream(CONFIG, ["AAPL", "MSFT"])
    first = aapl.head(1)
    with pytest.raises(FeatureInputError, match=r"ZZZ is not in the stream's universe"):
        stream.update(first.with_columns(symbol=pl.lit("ZZZ")))
    with pytest.raises(FeatureInputError, match=r"duplicate bars reached the feature layer \(AAPL"):
        stream.update(pl.concat([first, first]))
    with pytest.raises(FeatureInputError, match=r"NaN close at"):
        stream.update(first.with_columns(close=pl.lit(float("nan"))))
    with pytest.raises(FeatureInputError, match=r"missing or NaN volume"):
        stream.update(first.with_columns(volume=pl.lit(None, pl.Float64)))
    with pytest.raises(FeatureInputError, match=r"one update takes the bars of one time"):
        stream.update(aapl.head(2))
    with pytest.raises(FeatureInputError, match=r"ts must be a time-zone-aware datetime"):
        stream.update(first.with_columns(pl.col("ts").dt.replace_time_zone(None)))
    with pytest.raises(FeatureInputError, match=r"lack column\(s\) \['volume'\]"):
        stream.update(first.drop("volume"))
    saturday = first.with_columns(ts=pl.datetime(2019, 1, 5, 15, time_zone="UTC"))
    with pytest.raises(FeatureInputError, match=r"on no session of XNYS"):
        stream.update(saturday)
    night = first.with_columns(ts=pl.col("ts").dt.truncate("1d") + timedelta(hours=3))
    with pytest.raises(FeatureInputError, match=r"(outside the regular session|on no session)"):
        stream.update(night)
    stream.update(aapl.slice(1, 1))
    with pytest.raises(FeatureInputError, match=r"bar times must only move on"):
        stream.update(first)
    msft_same_time = sample_bars.filter(
        (pl.col("symbol") == "MSFT") & (pl.col("ts") == aapl["ts"][1])
    )
    with pytest.raises(FeatureInputError, match=r"deliver every symbol's bar of one time"):
        stream.update(msft_same_time)


def test_a_feature_without_a_definition_is_refused() -> None:
    reg = feature_registry(CONFIG)
    reg.add(
        FeatureSpec(
            "statistical_opaque_1",
            "statistical",
            ("close",),
            0,
            "a feature written straight in polars",
            lambda: pl.col("close") * 2.0,
        )
    )
    with pytest.raises(ProgramError, match=r"statistical_opaque_1 has no streaming definition"):
        FeatureStream(CONFIG, ["AAPL"], reg)
