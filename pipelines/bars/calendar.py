"""Exchange sessions from ``exchange_calendars``: regular hours, early closes, extended hours.

Extended hours are 04:00-09:30 (pre-market) and the close to 20:00 (post-market) New York time;
on an early-close day the post-market ends at 17:00.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, time
from functools import lru_cache
from typing import Literal

import exchange_calendars as xcals
import pandas as pd
import polars as pl

NEW_YORK = "America/New_York"
PRE_MARKET_OPEN = time(4, 0)
POST_MARKET_CLOSE = time(20, 0)
EARLY_POST_MARKET_CLOSE = time(17, 0)

Session = Literal["regular", "extended"]

SESSION_SCHEMA = {
    "session_date": pl.Date(),
    "open": pl.Datetime("us", "UTC"),
    "close": pl.Datetime("us", "UTC"),
    "ext_open": pl.Datetime("us", "UTC"),
    "ext_close": pl.Datetime("us", "UTC"),
    "early_close": pl.Boolean(),
}


@dataclass(frozen=True)
class SessionCalendar:
    """Sessions of one exchange between two dates, as a frame with :data:`SESSION_SCHEMA`.

    Example: ``sessions_between("XNYS", date(2019, 11, 29), date(2019, 11, 29))`` has one row
    with open 14:30 UTC, close 18:00 UTC and ``early_close`` true.
    """

    name: str
    frame: pl.DataFrame

    def window(self, session: Session) -> pl.DataFrame:
        """The tradable window of each session: ``start`` and ``end`` for the configured
        session, beside ``reg_open``/``reg_close``, ``ext_open``/``ext_close`` and
        ``early_close``."""
        start, end = ("open", "close") if session == "regular" else ("ext_open", "ext_close")
        return self.frame.select(
            "session_date",
            pl.col(start).alias("start"),
            pl.col(end).alias("end"),
            pl.col("open").alias("reg_open"),
            pl.col("close").alias("reg_close"),
            "ext_open",
            "ext_close",
            "early_close",
        )


def _wall_clock(d: pl.Expr, t: time) -> pl.Expr:
    return (
        d.cast(pl.Datetime("us"))
        .dt.offset_by(f"{t.hour}h{t.minute}m")
        .dt.replace_time_zone(NEW_YORK)
        .dt.convert_time_zone("UTC")
    )


class CalendarRangeError(ValueError):
    """A date range the exchange calendar cannot describe; the message names its bounds."""


@lru_cache(maxsize=16)
def exchange_calendar(calendar: str, first_year: int, last_year: int) -> xcals.ExchangeCalendar:
    """``calendar`` built for whole years ``first_year``..``last_year`` (cached).

    exchange_calendars' own default window is "20 years before today to one year after" as
    of the wall clock, so a calendar built without bounds answers differently on different
    days: the bounds here come from the data, never from the clock.
    """
    start, end = pd.Timestamp(first_year, 1, 1), pd.Timestamp(last_year, 12, 31)
    try:
        return xcals.get_calendar(calendar, start=start, end=end)
    except (ValueError, OverflowError, pd.errors.OutOfBoundsDatetime) as exc:
        raise CalendarRangeError(
            f"calendar {calendar} cannot describe {first_year}..{last_year}: {exc}"
        ) from None


@lru_cache(maxsize=32)
def sessions_between(calendar: str, first: date, last: date) -> SessionCalendar:
    """All sessions of ``calendar`` (an exchange_calendars name such as ``XNYS``) from ``first``
    to ``last`` inclusive. The calendar is built for those years, whatever today's date is."""
    if last < first:
        raise ValueError(f"sessions_between: {last} is before {first}")
    cal = exchange_calendar(calendar, first.year, last.year)
    lo, hi = pd.Timestamp(first), pd.Timestamp(last)
    sched = cal.schedule.loc[lo:hi]
    regular_close = pd.Series(
        [cal.closes[d].tz_convert(NEW_YORK).time() for d in sched.index], index=sched.index
    )
    frame = pl.DataFrame(
        {
            "session_date": [d.date() for d in sched.index],
            "open": sched["open"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(),
            "close": sched["close"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(),
            "early_close": (regular_close < time(16, 0)).to_numpy(),
        }
    ).with_columns(
        pl.col("open", "close").dt.cast_time_unit("us").dt.replace_time_zone("UTC"),
    )
    frame = frame.with_columns(
        ext_open=_wall_clock(pl.col("session_date"), PRE_MARKET_OPEN),
        ext_close=pl.when(pl.col("early_close"))
        .then(_wall_clock(pl.col("session_date"), EARLY_POST_MARKET_CLOSE))
        .otherwise(_wall_clock(pl.col("session_date"), POST_MARKET_CLOSE)),
    ).select(list(SESSION_SCHEMA))
    return SessionCalendar(name=calendar, frame=frame.cast(SESSION_SCHEMA))  # type: ignore[arg-type]


def session_dates(ts: pl.Expr) -> pl.Expr:
    """The New York calendar date of a UTC timestamp expression."""
    return ts.dt.convert_time_zone(NEW_YORK).dt.date()


def session_dates_within_hours(ts: pl.Expr) -> pl.Expr:
    """The New York date of a UTC timestamp known to lie between 01:00 and 24:00 New York
    time (every bar of an extended or regular session does): ``ts - 5h`` has the right date in
    both EST (UTC-5) and EDT (UTC-4), without a per-row time-zone conversion."""
    return (ts - pl.duration(hours=5)).dt.date()


def segment_bounds(session: Session) -> tuple[pl.Expr, pl.Expr]:
    """Start and end of the session segment holding each bar, as expressions over ``ts`` and the
    columns of :meth:`SessionCalendar.window`. Regular session: the regular hours. Extended: the
    pre-market, the regular session or the post-market, whichever holds the bar."""
    if session == "regular":
        return pl.col("reg_open"), pl.col("reg_close")
    ts = pl.col("ts")
    start = (
        pl.when(ts < pl.col("reg_open"))
        .then(pl.col("ext_open"))
        .when(ts < pl.col("reg_close"))
        .then(pl.col("reg_open"))
        .otherwise(pl.col("reg_close"))
    )
    end = (
        pl.when(ts < pl.col("reg_open"))
        .then(pl.col("reg_open"))
        .when(ts < pl.col("reg_close"))
        .then(pl.col("reg_close"))
        .otherwise(pl.col("ext_close"))
    )
    return start, end
