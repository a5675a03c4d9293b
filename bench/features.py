"""Feature and label benchmarks on the regular-session bars of the shared 15-minute set.

``--mode full``: the whole feature matrix (count, seconds, peak memory of this process).
``--mode compare``: the common indicator subset by us and by pandas-ta (same process), and the
labels against the reference loop. ``--mode stream``: the live path (:class:`FeatureStream`) on
50 symbols: the latency of one update, and every row it gives compared with the batch matrix.
The TA-Lib figure comes from the benchmark environment (bench/peers/talib_features.py), run
by bench.run.
Each mode prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
import warnings
from pathlib import Path

import numpy as np
import polars as pl

from pipelines.bars.validate import validate_bars
from pipelines.config import ColumnMap, FileSourceConfig
from pipelines.data.sources import FileBarSource
from pipelines.features import (
    FeatureConfig,
    FeatureRegistry,
    FeatureStream,
    build_features,
    feature_registry,
)
from pipelines.features.checks import stream_mismatches
from pipelines.labels import BarrierConfig, label_triple_barrier
from pipelines.timeframes import Timeframe

TF = Timeframe.parse("15m")
CONFIG = FeatureConfig(TF)
SUBSET = (
    "trend_sma_20",
    "trend_ema_20",
    "trend_wma_20",
    "momentum_rsi_14",
    "momentum_macd_12_26_line",
    "momentum_macd_12_26_signal",
    "momentum_macd_12_26_hist",
    "volatility_atr_14",
    "volatility_natr_14",
    "volatility_bb_20_pctb",
    "volatility_bb_20_width",
    "momentum_stoch_14_k",
    "momentum_stoch_14_d",
    "momentum_willr_14",
    "momentum_cci_20",
    "trend_adx_14",
    "trend_dip_14",
    "trend_dim_14",
    "trend_aroon_25_up",
    "trend_aroon_25_down",
    "volume_obv_20",
    "volume_mfi_14",
    "momentum_roc_10",
)


def regular_bars(shared: Path) -> pl.DataFrame:
    path = shared / "us_equities_15min_2020_2022_av.parquet"
    cfg = FileSourceConfig(
        path=str(shared),
        pattern=path.name,
        format="parquet",
        columns=ColumnMap(symbol="symbol"),
        label="end",
    )
    raw = FileBarSource(cfg, TF).read_file(path, None)
    return validate_bars(
        raw, universe=raw["symbol"].unique().to_list(), timeframe=TF, session="regular"
    ).bars


def subset_registry() -> FeatureRegistry:
    full = feature_registry(CONFIG)
    reg = FeatureRegistry()
    for name in SUBSET:
        reg.add(full[name])
    return reg


def pandas_ta_subset(bars: pl.DataFrame) -> int:
    import pandas_ta as ta

    n = 0
    for _, g in bars.to_pandas().groupby("symbol", sort=False):
        h, lo, c, v = g.high, g.low, g.close, g.volume
        out = [
            ta.sma(c, 20),
            ta.ema(c, 20),
            ta.wma(c, 20),
            ta.rsi(c, 14),
            ta.macd(c, 12, 26, 9),
            ta.atr(h, lo, c, 14),
            ta.natr(h, lo, c, 14),
            ta.bbands(c, 20, 2),
            ta.stoch(h, lo, c, 14, 3, 3),
            ta.willr(h, lo, c, 14),
            ta.cci(h, lo, c, 20),
            ta.adx(h, lo, c, 14),
            ta.aroon(h, lo, 25),
            ta.obv(c, v),
            ta.mfi(h, lo, c, v, 14),
            ta.roc(c, 10),
        ]
        n += len(out)
    return n


def best_of(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def full(shared: Path) -> dict[str, object]:
    bars = regular_bars(shared)
    registry = feature_registry(CONFIG)
    build_features(bars.filter(pl.col("symbol") == "AAPL").head(2000), CONFIG)  # JIT warm-up
    t0 = time.perf_counter()
    matrix = build_features(bars, CONFIG, registry)
    seconds = time.perf_counter() - t0
    return {
        "features.n_features": len(registry),
        "features.rows": matrix.height,
        "features.full_matrix_s": round(seconds, 3),
        "features.peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def compare(shared: Path, bars_out: Path, repeats: int) -> dict[str, object]:
    bars = regular_bars(shared)
    bars.select("symbol", "ts", "open", "high", "low", "close", "volume").write_parquet(bars_out)
    subset = subset_registry()
    ours_s = best_of(lambda: build_features(bars, CONFIG, subset), repeats)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pandas_ta_s = best_of(lambda: pandas_ta_subset(bars), max(1, repeats // 2))

    symbols = bars["symbol"].unique().sort().to_list()
    config = BarrierConfig()
    labels_s = best_of(lambda: label_triple_barrier(bars, config), repeats)
    events = label_triple_barrier(bars, config).labels.height
    from tests.labels.test_triple_barrier import reference_labels

    two = bars.filter(pl.col("symbol").is_in(symbols[:2]))
    t0 = time.perf_counter()
    ref_events = reference_labels(two, config).height
    ref_s = time.perf_counter() - t0
    return {
        "features.subset_n": len(subset),
        "features.subset_s": round(ours_s, 4),
        "features.pandas_ta_subset_s": round(pandas_ta_s, 4),
        "features.speedup_vs_pandas_ta": round(pandas_ta_s / ours_s, 2),
        "labels.events": events,
        "labels.full_s": round(labels_s, 4),
        "labels.reference_events_per_s": round(ref_events / ref_s),
        "labels.speedup_vs_reference": round((ref_s / ref_events) / (labels_s / events), 1),
        "_ours_subset_s": ours_s,
    }


def fifty_symbols(bars: pl.DataFrame) -> pl.DataFrame:
    """The shared set's symbols and, to make 50, copies of the first ones renamed ``X.B``."""
    symbols = bars["symbol"].unique().sort().to_list()
    extra = [
        bars.filter(pl.col("symbol") == s).with_columns(symbol=pl.lit(f"{s}.B"))
        for s in symbols[: 50 - len(symbols)]
    ]
    return pl.concat([bars, *extra])


def stream(shared: Path, measured: int) -> dict[str, object]:
    """The live path on 50 symbols: the stream warmed over all but the last ``measured`` bar
    times, then one update per bar time, timed; every row it gave equal to the batch matrix."""
    bars = fifty_symbols(regular_bars(shared)).select(
        "symbol", "ts", "open", "high", "low", "close", "volume"
    )
    registry = feature_registry(CONFIG)
    times = bars["ts"].unique().sort()
    cut = times[-measured]
    engine = FeatureStream(CONFIG, bars["symbol"].unique().to_list(), registry)
    t0 = time.perf_counter()
    warm = engine.run(bars.filter(pl.col("ts") < cut))
    warm_s = time.perf_counter() - t0
    live = bars.filter(pl.col("ts") >= cut).sort("ts", "symbol")
    updates, with_frame, frames = [], [], []
    for _, group in live.group_by("ts", maintain_order=True):
        t0 = time.perf_counter()
        rows = engine.update(group)
        rows.matrix(rows.names)
        t1 = time.perf_counter()
        frames.append(rows.frame())
        t2 = time.perf_counter()
        updates.append((t1 - t0) * 1000)
        with_frame.append((t2 - t0) * 1000)
    got = pl.concat([warm, *frames]).sort("symbol", "ts")
    batch = build_features(bars, CONFIG, registry)
    return {
        "features.stream_symbols": bars["symbol"].n_unique(),
        "features.stream_updates": len(updates),
        "features.stream_p50_ms": round(float(np.percentile(updates, 50)), 3),
        "features.stream_p99_ms": round(float(np.percentile(updates, 99)), 3),
        "features.stream_frame_p99_ms": round(float(np.percentile(with_frame, 99)), 3),
        "features.stream_bar_times_per_s": round(times.len() / (warm_s + sum(updates) / 1000)),
        "features.stream_rows_compared": got.height,
        "features.stream_equals_batch": not stream_mismatches(batch, got),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=("full", "compare", "stream"), required=True)
    parser.add_argument("--shared", type=Path, required=True)
    parser.add_argument("--bars-out", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--measured", type=int, default=300, help="bar times timed (stream)")
    args = parser.parse_args()
    if args.mode == "full":
        print(json.dumps(full(args.shared)))
    elif args.mode == "stream":
        print(json.dumps(stream(args.shared, args.measured)))
    else:
        print(json.dumps(compare(args.shared, args.bars_out, args.repeats)))


if __name__ == "__main__":
    main()
