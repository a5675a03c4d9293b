"""Bar timeframes: parsing and arithmetic.

A timeframe is written as an integer and a unit: ``1m``, ``5m``, ``15m``, ``60m`` (minutes),
``1h`` (an alias for ``60m``) or ``1d`` (one exchange session).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

_PATTERN = re.compile(r"^(?P<n>[1-9][0-9]*)(?P<unit>m|min|h|d)$")


@dataclass(frozen=True, order=True)
class Timeframe:
    """A bar length. Intraday timeframes are whole minutes; ``1d`` is one session.

    Example: ``Timeframe.parse("15m").minutes == 15``; ``Timeframe.parse("1d").is_daily``.
    """

    minutes: int
    is_daily: bool = False

    @classmethod
    def parse(cls, text: str) -> Timeframe:
        m = _PATTERN.match(text.strip().lower())
        if not m:
            raise ValueError(
                f"timeframe {text!r} is not understood: write a whole number and a unit, "
                "for example '1m', '5m', '15m', '60m' or '1d'"
            )
        n, unit = int(m["n"]), m["unit"]
        if unit == "d":
            if n != 1:
                raise ValueError(f"timeframe {text!r}: only '1d' (one session) is supported")
            return cls(minutes=24 * 60, is_daily=True)
        minutes = n * 60 if unit == "h" else n
        if minutes >= 24 * 60:
            raise ValueError(
                f"timeframe {text!r} is a day or longer: write '1d' for daily bars (one "
                "session, whatever its hours)"
            )
        return cls(minutes=minutes)

    @property
    def duration(self) -> timedelta:
        return timedelta(minutes=self.minutes)

    @property
    def micros(self) -> int:
        return self.minutes * 60_000_000

    @property
    def label(self) -> str:
        return "1d" if self.is_daily else f"{self.minutes}m"

    def divides(self, other: Timeframe) -> bool:
        """True when bars of ``other`` can be built from whole bars of ``self``."""
        if other.is_daily:
            return not self.is_daily
        return not self.is_daily and other.minutes % self.minutes == 0

    def __str__(self) -> str:
        return self.label
