"""Which earlier months' labels a new session changes (what the nightly rebuilds)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from pipelines.bars.calendar import sessions_between
from pipelines.config import LabelSettings
from pipelines.labels.partition import label_months_reading, label_padding_days

pytestmark = pytest.mark.unit
NY = ZoneInfo("America/New_York")


def _month_end(first_day: date) -> datetime:
    """The end of the month starting ``first_day``: the next New York midnight of a 1st, UTC."""
    nxt = (first_day + timedelta(days=32)).replace(day=1)
    return datetime(nxt.year, nxt.month, 1, tzinfo=NY).astimezone(UTC)


def test_the_settings_horizon_reaches_one_week_into_the_next_month() -> None:
    _, after = label_padding_days(LabelSettings(), bars_per_session=26)
    assert after == 7
    first = date(2019, 1, 1)
    assert label_months_reading(date(2019, 3, 1), after, first) == (date(2019, 2, 1),)
    assert label_months_reading(date(2019, 3, 7), after, first) == (date(2019, 2, 1),)
    assert label_months_reading(date(2019, 3, 8), after, first) == ()
    assert label_months_reading(date(2019, 1, 2), after, first) == ()  # no partition before


@pytest.mark.parametrize("after_days", [1, 7, 23, 40])
def test_months_are_those_whose_label_window_holds_the_session_open(after_days: int) -> None:
    """Against the window the labels asset loads (its end plus ``after_days`` days, as UTC
    instants), for every session of 2019-2020: DST changes and month ends included."""
    first = date(2019, 1, 1)
    months = [date(y, m, 1) for y in (2019, 2020) for m in range(1, 13)]
    sessions = sessions_between("XNYS", first, date(2020, 12, 31)).frame
    for day, opens in zip(sessions["session_date"], sessions["open"], strict=True):
        expected = tuple(
            m
            for m in reversed(months)
            if m < day.replace(day=1) and opens < _month_end(m) + timedelta(days=after_days)
        )
        assert label_months_reading(day, after_days, first) == expected, day
