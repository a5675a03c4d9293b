"""One partition of triple-barrier labels with their weights."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Literal

import polars as pl

from pipelines.checks import CheckDefinition, CheckOutcome, check_table
from pipelines.config import LabelSettings
from pipelines.labels.triple_barrier import BarrierConfig, label_triple_barrier
from pipelines.labels.weights import sample_weights
from pipelines.timeframes import Timeframe


def barrier_config(settings: LabelSettings) -> BarrierConfig:
    return BarrierConfig(
        profit_take=settings.profit_take,
        stop_loss=settings.stop_loss,
        max_holding_bars=settings.max_holding_bars,
        volatility=settings.volatility,
        volatility_window=settings.volatility_window,
        cut_at_session_close=settings.cut_at_session_close,
    )


def check_label_settings(settings: LabelSettings, timeframe: Timeframe) -> None:
    """Refuse label settings that cannot label bars of ``timeframe``: cutting at the session
    close on daily bars (a daily bar is the whole session, so every label would end at its
    own bar and none would be made)."""
    if timeframe.is_daily and settings.cut_at_session_close:
        raise ValueError(
            "labels.cut_at_session_close is true but the source's bars are daily: a daily bar "
            "is a whole session, so no label could be made; set `cut_at_session_close: false` "
            "in the settings' labels section (daily labels span sessions)"
        )


def label_padding_days(settings: LabelSettings, bars_per_session: int) -> tuple[int, int]:
    """Calendar days of bars to load before (volatility warm-up) and after (horizon) a window.

    Both are counted in sessions first (``bars_per_session`` is 1 for daily bars, so
    ``max_holding_bars: 10`` there is ten sessions), then turned into calendar days by
    :func:`calendar_days`, with a margin. The horizon also allows for an unscheduled closure
    (up to the four weekdays after 11 September 2001) once it is ten sessions or longer: a
    missing bar there would leave a label unmade. Example: daily bars with
    ``max_holding_bars: 10`` and ``volatility_window: 14`` load 414 days before a window and
    21 after it; 15-minute bars with ``max_holding_bars: 16`` load 23 and 7.
    """
    warm = 20 * settings.volatility_window
    before = calendar_days(math.ceil(warm / bars_per_session) + 1) + 7
    horizon = math.ceil(settings.max_holding_bars / bars_per_session) + 1
    after = calendar_days(horizon) + 5 + min(4, horizon // 10)
    return before, after


def calendar_days(sessions: int) -> int:
    """Calendar days that ``sessions`` consecutive exchange sessions take at most, less a
    margin the caller adds: seven for every five sessions, and one for every twenty (about
    ten holidays in 252 sessions). Example: ``calendar_days(10) == 14``."""
    return sessions * 7 // 5 + sessions // 20


def label_months_reading(
    session: date,
    after_days: int,
    first_month: date,
    grain: Literal["month", "year"] = "month",
) -> tuple[date, ...]:
    """First days of the partitions (months, or years with ``grain="year"``: a daily source)
    before ``session``'s whose label partitions read bars of ``session``, latest first, none
    before ``first_month`` (the first partition's first day).

    A partition's labels load bars up to ``after_days`` calendar days past its end (the
    horizon, see :func:`label_padding_days`), so a session that close to its end changes them.
    Example: with ``after_days=7``, the session of 2019-03-04 changes February's labels
    (``(date(2019, 2, 1),)``) and the session of 2019-03-11 changes none; with
    ``grain="year"`` and ``after_days=20`` the session of 2019-01-02 changes 2018's.
    """
    months: list[date] = []
    end = _period_start(session, grain)  # the end of the period before the session's
    while (session - end).days < after_days:
        start = _period_start(end - timedelta(days=1), grain)
        if start < first_month:
            break
        months.append(start)
        end = start
    return tuple(months)


def _period_start(day: date, grain: Literal["month", "year"]) -> date:
    return day.replace(month=1, day=1) if grain == "year" else day.replace(day=1)


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
