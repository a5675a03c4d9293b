"""One partition of the feature matrix, with the checks that go with it."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import polars as pl

from pipelines.checks import CheckDefinition, CheckOutcome, check_table
from pipelines.features.build import FeatureConfig, build_features
from pipelines.features.checks import (
    constant_features,
    lookahead_violations,
    missing_after_warmup,
    stream_mismatches,
)
from pipelines.features.program import ProgramError
from pipelines.features.registry import FeatureRegistry
from pipelines.features.stream import FeatureStream


def history_days(registry: FeatureRegistry, config: FeatureConfig) -> int:
    """Calendar days of bars to load before a window so that every feature is warm in it."""
    sessions = math.ceil(registry.history_bars / config.bars_per_session) + 1
    return sessions * 7 // 5 + 10


@dataclass(frozen=True)
class FeaturePartition:
    """``matrix`` (rows with ``ts`` in the window) and its check results."""

    matrix: pl.DataFrame
    null_share: dict[str, float]
    nonfinite: dict[str, int]
    constant: list[str]
    lookahead: list[str]
    cuts: list[datetime]
    stream: list[str]
    """Where the live path (the stream over the same bars) differs from the matrix."""


def cut_times(matrix: pl.DataFrame, key: str, n: int) -> list[datetime]:
    """``n`` bar times of ``matrix`` chosen from ``key`` (stable: the same key, the same cuts)."""
    times = matrix["ts"].unique().sort()
    if times.len() == 0:
        return []
    seed = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
    return sorted({times[(seed + 7919 * i) % times.len()] for i in range(n)})


def build_feature_partition(
    bars: pl.DataFrame,
    window: tuple[datetime, datetime],
    config: FeatureConfig,
    registry: FeatureRegistry,
    *,
    key: str,
    lookahead_cuts: int = 2,
    progress: Callable[[str], None] | None = None,
) -> FeaturePartition:
    """Features for bars with ``ts`` in ``window`` from ``bars`` that also hold the history
    before it; the look-ahead check rebuilds on data cut at ``lookahead_cuts`` times chosen
    from ``key``. ``progress`` (optional) is told of each stage as it ends."""
    done = progress or (lambda _: None)
    full = build_features(bars, config, registry)
    inside = pl.col("ts").is_between(window[0], window[1], closed="left")
    matrix = full.filter(inside)
    done(f"{matrix.height} rows x {len(registry)} features built from {bars.height} bars")
    cuts = cut_times(matrix, key, lookahead_cuts)
    lookahead = lookahead_violations(bars, config, cuts, registry, full=full)
    done(f"point-in-time check at {len(cuts)} cut times")
    null_share, nonfinite = missing_after_warmup(full, registry)
    try:
        streamed = FeatureStream(config, bars["symbol"].unique().to_list(), registry).run(bars)
        stream = stream_mismatches(full, streamed)
    except ProgramError as exc:  # a feature the live path cannot compute: the check says which
        stream = [str(exc)]
    done("live-path (stream) parity check")
    return FeaturePartition(
        matrix=matrix,
        null_share=null_share,
        nonfinite=nonfinite,
        constant=constant_features(matrix, registry),
        lookahead=lookahead,
        cuts=cuts,
        stream=stream,
    )


def feature_check_definitions(max_missing_share: float) -> dict[str, CheckDefinition]:
    """The checks of :func:`feature_checks`, for the asset's check specs and its verdicts."""
    return check_table(
        CheckDefinition(
            "finite_after_warmup", "no NaN or infinite value after warm-up", blocking=True
        ),
        CheckDefinition(
            "missing_after_warmup",
            f"at most {max_missing_share:.0%} undefined (null) per feature after warm-up",
            blocking=False,
        ),
        CheckDefinition(
            "constant_columns", "no feature is constant over the partition", blocking=False
        ),
        CheckDefinition(
            "point_in_time",
            "rebuilding on data cut at sampled times changes nothing before the cut",
            blocking=True,
        ),
        CheckDefinition(
            "stream_parity",
            "the live path, stepped bar by bar over the same bars, gives exactly this matrix",
            blocking=True,
        ),
    )


def feature_checks(part: FeaturePartition, max_missing_share: float) -> list[CheckOutcome]:
    checks = feature_check_definitions(max_missing_share)
    worst = dict(sorted(part.null_share.items(), key=lambda kv: -kv[1])[:5])
    return [
        checks["finite_after_warmup"].outcome(
            not part.nonfinite, {"nonfinite": part.nonfinite or "none"}
        ),
        checks["missing_after_warmup"].outcome(
            all(v <= max_missing_share for v in worst.values()), {"worst": worst}
        ),
        checks["constant_columns"].outcome(
            not part.constant, {"constant": part.constant or "none"}
        ),
        checks["point_in_time"].outcome(
            not part.lookahead,
            {
                "cuts": [c.isoformat() for c in part.cuts],
                "violations": part.lookahead[:10] or "none",
            },
        ),
        checks["stream_parity"].outcome(
            not part.stream,
            {"rows": part.matrix.height, "differences": part.stream[:10] or "none"},
        ),
    ]
