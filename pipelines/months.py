"""Which months a model may learn from: every month of the span must be materialized for each
asset it is built from, and must have passed their blocking checks.

The records are plain data (gathered from the Dagster instance by the training-set asset), so
the decision is testable without Dagster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

import polars as pl


class PartitionState(StrEnum):
    """What is known of one month of one asset; the value reads as the reason it is unusable."""

    MATERIALIZED = "materialized"
    FAILED = "latest materialization failed"
    IN_PROGRESS = "being materialized"
    MISSING = "never materialized"


@dataclass(frozen=True)
class PartitionRecord:
    """One month of one asset: its state and the blocking checks whose latest evaluation for
    this month failed."""

    state: PartitionState
    failed_checks: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainingMonths:
    """The months to train on, in order, and the months of the span left out with why."""

    used: tuple[str, ...]
    left_out: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def describe_left_out(self) -> str:
        """One line per month left out, e.g. ``2019-02-01: bars_15m failed bar_integrity``."""
        return "\n".join(f"{m}: {'; '.join(why)}" for m, why in self.left_out.items())


_MISSING = PartitionRecord(PartitionState.MISSING)


class MonthsRefusedError(ValueError):
    """Months of the span are unusable and gaps were not allowed (or no month is usable)."""


def select_training_months(
    keys: Sequence[str],
    records: Mapping[str, Mapping[str, PartitionRecord]],
    *,
    allow_gaps: bool,
) -> TrainingMonths:
    """The months to train on, or :class:`MonthsRefusedError` naming the unusable ones.

    ``keys`` are every month (partition key) in time order; ``records`` map each asset the
    training set depends on to its records by month (a month absent is never materialized).
    The span runs from the first to the last month that any asset holds (materialized, failed
    or in progress). A month of the span is unusable when an asset is not materialized for it
    or failed a blocking check there. Unusable months are refused unless ``allow_gaps``, in
    which case they are left out and listed.

    >>> ok = PartitionRecord(PartitionState.MATERIALIZED)
    >>> recs = {"features": {"2019-01-01": ok, "2019-03-01": ok}}
    >>> select_training_months(["2019-01-01", "2019-02-01", "2019-03-01"], recs,
    ...                        allow_gaps=True).left_out
    {'2019-02-01': ('features never materialized',)}
    """
    if not records:
        raise ValueError("select_training_months needs the records of at least one asset")
    unknown = sorted({k for recs in records.values() for k in recs} - set(keys))
    if unknown:
        raise ValueError(f"records for months {unknown} that are not among the partition keys")
    held = [
        k
        for k in keys
        if any(r.get(k, _MISSING).state is not PartitionState.MISSING for r in records.values())
    ]
    if not held:
        raise MonthsRefusedError(
            f"no month of {', '.join(records)} has been materialized: materialize their "
            "partitions before the training set"
        )
    span = keys[keys.index(held[0]) : keys.index(held[-1]) + 1]
    left_out: dict[str, tuple[str, ...]] = {}
    for month in span:
        reasons = []
        for asset, recs in records.items():
            rec = recs.get(month, _MISSING)
            if rec.state is not PartitionState.MATERIALIZED:
                reasons.append(f"{asset} {rec.state.value}")
            if rec.failed_checks:
                reasons.append(f"{asset} failed blocking check {', '.join(rec.failed_checks)}")
        if reasons:
            left_out[month] = tuple(reasons)
    used = tuple(m for m in span if m not in left_out)
    result = TrainingMonths(used, left_out)
    if left_out and not allow_gaps:
        raise MonthsRefusedError(
            f"training_set refuses {len(left_out)} of {len(span)} months "
            f"({span[0]} to {span[-1]}):\n{result.describe_left_out()}\n"
            "Re-materialize those partitions of the assets named (after fixing what failed), or "
            "train without them by setting the run config `allow_gaps: true` "
            "(ops: {training_set: {config: {allow_gaps: true}}})."
        )
    if not used:
        raise MonthsRefusedError(
            f"no usable month in {span[0]} to {span[-1]}:\n{result.describe_left_out()}\n"
            "Re-materialize those partitions of the assets named (after fixing what failed)."
        )
    return result


def rows_in_windows(
    frame: pl.DataFrame, windows: Sequence[tuple[datetime, datetime]]
) -> pl.DataFrame:
    """The rows of ``frame`` whose ``ts`` lies in one of the half-open ``windows``."""
    inside = pl.lit(False)
    for start, end in windows:
        inside = inside | pl.col("ts").is_between(start, end, closed="left")
    return frame.filter(inside)
