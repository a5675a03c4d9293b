"""Checks on a feature matrix: missing values after warm-up, constant columns, look-ahead, and
the live path's equality with it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import numpy as np
import polars as pl

from pipelines.features.build import FeatureConfig, build_features
from pipelines.features.registry import FeatureRegistry


def missing_after_warmup(
    matrix: pl.DataFrame, registry: FeatureRegistry
) -> tuple[dict[str, float], dict[str, int]]:
    """Per feature, past its warm-up (counted per symbol from the first row of ``matrix``): the
    share of null values (undefined, e.g. illiquidity without volume) and the number of NaN or
    infinite values (always a bug: features are defined or null)."""
    idx = matrix.select(pl.int_range(pl.len()).over("symbol").alias("_i"))["_i"]
    null_share, nonfinite = {}, {}
    for spec in registry:
        col = matrix[spec.name].filter(idx >= spec.warmup)
        if col.len() == 0:
            continue
        null_share[spec.name] = col.null_count() / col.len()
        if col.dtype.is_float():
            bad = (col.is_nan() | col.is_infinite()).fill_null(False).sum()
            if bad:
                nonfinite[spec.name] = int(bad)
    return null_share, nonfinite


def constant_features(matrix: pl.DataFrame, registry: FeatureRegistry) -> list[str]:
    """Features with a single distinct non-null value over the whole matrix."""
    counts = matrix.select(pl.col(n).drop_nulls().n_unique() for n in registry.names)
    return [n for n in registry.names if counts[n][0] <= 1 and matrix[n].drop_nulls().len() > 1]


def lookahead_violations(
    bars: pl.DataFrame,
    config: FeatureConfig,
    cuts: Sequence[datetime],
    registry: FeatureRegistry | None = None,
    full: pl.DataFrame | None = None,
) -> list[str]:
    """For each cut time t, rebuild the features on the bars up to t and report every feature
    whose value at or before t differs from the full build (a look-ahead). Empty when none."""
    full = build_features(bars, config, registry) if full is None else full
    problems = []
    for cut in cuts:
        truncated = build_features(bars.filter(pl.col("ts") <= cut), config, registry)
        left = full.filter(pl.col("ts") <= cut)
        if not left.select("symbol", "ts").equals(truncated.select("symbol", "ts")):
            problems.append(f"rows up to {cut} differ after truncation")
            continue
        for name in full.columns[2:]:
            a, b = left[name], truncated[name]
            same = (a == b).fill_null(False) | (a.is_null() & b.is_null())
            if a.dtype.is_float():
                same = same | (a.is_nan() & b.is_nan()).fill_null(False)
            if not same.all():
                i = int((~same).arg_max())  # type: ignore[arg-type]
                problems.append(
                    f"{name} at {left['symbol'][i]} {left['ts'][i]} changed when the data after "
                    f"{cut} was removed: {a[i]!r} (full) vs {b[i]!r} (truncated)"
                )
    return problems


def stream_mismatches(batch: pl.DataFrame, streamed: pl.DataFrame) -> list[str]:
    """Every feature whose streamed rows (:meth:`FeatureStream.run`) differ from the batch
    matrix of the same bars, with its first differing row; empty when they are equal: the same
    keys, nulls at the same places and equal values elsewhere (NaN equal to NaN)."""
    if streamed.columns != batch.columns:
        return [f"the stream's columns differ from the matrix's: {streamed.columns[:5]}..."]
    if not streamed.select("symbol", "ts").equals(batch.select("symbol", "ts")):
        return ["the stream's rows (symbol, ts) differ from the matrix's"]
    problems = []
    for name in batch.columns[2:]:
        a, b = batch[name], streamed[name]
        a_null, b_null = a.is_null().to_numpy(), b.is_null().to_numpy()
        av, bv = a.to_numpy().astype(float), b.to_numpy().astype(float)
        same = ((av == bv) | (np.isnan(av) & np.isnan(bv)) | a_null) & (a_null == b_null)
        if not same.all():
            i = int(np.flatnonzero(~same)[0])
            problems.append(
                f"{name} differs at {int((~same).sum())} rows, first {batch['symbol'][i]} "
                f"{batch['ts'][i]}: batch {a[i]!r}, stream {b[i]!r}"
            )
    return problems
