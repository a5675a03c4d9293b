"""One partition of triple-barrier labels with their weights."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import polars as pl

from pipelines.checks import CheckDefinition, CheckOutcome, check_table
from pipelines.config import LabelSettings
from pipelines.labels.triple_barrier import BarrierConfig, label_triple_barrier
from pipelines.labels.weights import sample_weights


def barrier_config(settings: LabelSettings) -> BarrierConfig:
    return BarrierConfig(
        profit_take=settings.profit_take,
        stop_loss=settings.stop_loss,
        max_holding_bars=settings.max_holding_bars,
        volatility=settings.volatility,
        volatility_window=settings.volatility_window,
        cut_at_session_close=settings.cut_at_session_close,
    )


def label_padding_days(settings: LabelSettings, bars_per_session: int) -> tuple[int, int]:
    """Calendar days of bars to load before (volatility warm-up) and after (horizon) a window."""
    warm = 20 * settings.volatility_window
    before = (math.ceil(warm / bars_per_session) + 1) * 7 // 5 + 7
    after = (math.ceil(settings.max_holding_bars / bars_per_session) + 1) * 7 // 5 + 5
    return before, after


def label_months_reading(session: date, after_days: int, first_month: date) -> tuple[date, ...]:
    """First days of the months before ``session``'s whose label partitions read bars of
    ``session``, latest first, none before ``first_month``.

    A month's labels load bars up to ``after_days`` calendar days past its end (the horizon, see
    :func:`label_padding_days`), so a session that close to a month's end changes them. Example:
    with ``after_days=7``, the session of 2019-03-04 changes February's labels
    (``(date(2019, 2, 1),)``) and the session of 2019-03-11 changes none.
    """
    months: list[date] = []
    end = session.replace(day=1)  # the end of the month before the session's
    while (session - end).days < after_days:
        start = (end - timedelta(days=1)).replace(day=1)
        if start < first_month:
            break
        months.append(start)
        end = start
    return tuple(months)


@dataclass(frozen=True)
class LabelPartition:
    labels: pl.DataFrame
    unlabelled: int
    distribution: dict[str, int]
    max_bars_held: int


def build_label_partition(
    bars: pl.DataFrame, window: tuple[datetime, datetime], settings: LabelSettings
) -> LabelPartition:
    """Labels and sample weights of the events (every bar, long side) with ``ts`` in
    ``window``; ``bars`` also hold the history and horizon around it. Weights are computed among
    the window's labels."""
    config = barrier_config(settings)
    events = bars.filter(pl.col("ts").is_between(window[0], window[1], closed="left")).select(
        "symbol", "ts"
    )
    result = label_triple_barrier(bars, config, events=events)
    weighted = sample_weights(result.labels, bars, decay=settings.decay)
    counts = weighted["label"].value_counts()
    distribution = {str(k): int(v) for k, v in counts.iter_rows()}
    held = int(weighted["bars_held"].max() or 0) if weighted.height else 0  # type: ignore[arg-type]
    return LabelPartition(weighted, result.unlabelled, distribution, held)


LABEL_CHECKS = check_table(
    CheckDefinition(
        "label_balance", "each of the -1 and +1 labels holds at least 10%", blocking=False
    ),
    CheckDefinition(
        "within_vertical_barrier", "no label is held past its vertical barrier", blocking=True
    ),
)
"""The checks of :func:`label_checks`, for the asset's check specs and its verdicts."""


def label_checks(part: LabelPartition, settings: LabelSettings) -> list[CheckOutcome]:
    total = max(part.labels.height, 1)
    shares = {k: v / total for k, v in part.distribution.items()}
    return [
        LABEL_CHECKS["label_balance"].outcome(
            min(shares.get("-1", 0.0), shares.get("1", 0.0)) >= 0.10, {"shares": shares}
        ),
        LABEL_CHECKS["within_vertical_barrier"].outcome(
            part.max_bars_held <= settings.max_holding_bars,
            {"max_bars_held": part.max_bars_held, "max_holding_bars": settings.max_holding_bars},
        ),
    ]
