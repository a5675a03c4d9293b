"""The data side of the local Alpaca: minute bars replayed on a clock, the fill bars built from
them exactly as the backtest builds its bars, and the historical-bars REST answer.

Times are UTC; a bar's ``ts`` is its START, as Alpaca stamps bars. A minute bar [m-1min, m)
closes at m; a fill bar (``fill_minutes`` long, session-anchored, shortened at early closes:
:func:`pipelines.bars.aggregate.aggregate_bars`) closes at its ``end``.
"""

from __future__ import annotations

import base64
from bisect import bisect_left, bisect_right
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgpack
import numpy as np
import polars as pl

from pipelines.bars.aggregate import aggregate_bars
from pipelines.bars.calendar import Session, session_dates, sessions_between
from pipelines.data.schema import STORED_BAR_SCHEMA
from pipelines.execution.batch import BarBatch
from pipelines.timeframes import Timeframe

MINUTE = timedelta(minutes=1)
BAR_COLUMNS = ["symbol", "ts", "open", "high", "low", "close", "volume"]
REST_COLUMNS = [*BAR_COLUMNS, "vwap", "trade_count"]
PRICE_COLUMNS = ("open", "high", "low", "close", "volume")
_UNITS = {"Min": 1, "T": 1, "Hour": 60, "H": 60, "Day": 1440, "D": 1440}


def stored(bars: pl.DataFrame) -> pl.DataFrame:
    """``bars`` (symbol, ts, open, high, low, close, volume[, vwap, trade_count]) with the
    stored schema's other columns filled in, as :func:`aggregate_bars` wants them."""
    extra = {
        "vwap": pl.lit(None, pl.Float64),
        "trade_count": pl.lit(None, pl.Int64),
        "bar_count": pl.lit(1, pl.Int32),
        "flags": pl.lit(0, pl.Int32),
    }
    missing = [v.alias(k) for k, v in extra.items() if k not in bars.columns]
    return bars.with_columns(missing).select(
        [pl.col(k).cast(v) for k, v in STORED_BAR_SCHEMA.items()]
    )


def _number(x: float) -> float | int:
    return int(x) if float(x).is_integer() else float(x)


@dataclass(frozen=True)
class FillBar:
    """The fill bars of one bucket [``start``, ``end``) as a :class:`BarBatch` (ts = start)."""

    start: datetime
    end: datetime
    batch: BarBatch


class ReplayData:
    """Minute bars grouped by the time they close, fill bars by the time they close, and the
    session windows; the REST frames of the bars closed by a given time."""

    def __init__(
        self,
        minute_bars: pl.DataFrame,
        *,
        ids: dict[str, int],
        fill_minutes: int,
        calendar: str,
        session: Session,
        history: pl.DataFrame | None = None,
    ) -> None:
        if minute_bars.height == 0:
            raise ValueError("LocalAlpaca needs minute bars to replay; the frame is empty")
        self.session: Session = session
        self.calendar = calendar
        self.minutes = stored(minute_bars).sort("ts", "symbol")
        dupes = self.minutes.select(pl.struct("symbol", "ts").is_duplicated().any()).item()
        if dupes:
            raise ValueError("the minute bars have duplicate (symbol, ts) rows; drop them first")
        self.fill_tf = Timeframe.parse(f"{fill_minutes}m")
        fill = aggregate_bars(
            self.minutes,
            source=Timeframe.parse("1m"),
            target=self.fill_tf,
            session=session,
            calendar=calendar,
            with_end=True,
        ).sort("end", "symbol")
        self.fill_frame = fill
        self.fill_bars: dict[datetime, FillBar] = {}
        for (end,), part in fill.group_by("end", maintain_order=True):
            starts = part["ts"].unique()
            if starts.len() != 1:
                raise ValueError(f"fill bars of different starts end at {end}")
            start = starts.item()
            names = part["symbol"].to_list()
            col = {c: part[c].cast(pl.Float64).to_numpy() for c in PRICE_COLUMNS}
            batch = BarBatch(
                start,
                names,
                np.array([ids[s] for s in names], dtype=np.int64),
                col["open"],
                col["high"],
                col["low"],
                col["close"],
                col["volume"],
                np.zeros(len(names)),  # no volatility: LocalAlpaca refuses impact_k > 0
            )
            self.fill_bars[end] = FillBar(start, end, batch)  # type: ignore[arg-type]
        self.fill_starts = sorted(b.start for b in self.fill_bars.values())
        self.fill_ends = {b.start: b.end for b in self.fill_bars.values()}
        # Bar messages by the minute they close at.
        self.messages: dict[datetime, list[dict[str, Any]]] = defaultdict(list)
        for r in self.minutes.iter_rows(named=True):
            self.messages[r["ts"] + MINUTE].append(bar_message(r))
        first = self.minutes["ts"].min()
        last = self.minutes["ts"].max()
        assert isinstance(first, datetime) and isinstance(last, datetime)
        self.first, self.last = first, last
        days = session_dates(pl.lit(first)), session_dates(pl.lit(last))
        d0, d1 = (pl.select(d).item() for d in days)
        window = sessions_between(calendar, d0 - timedelta(days=7), d1 + timedelta(days=7))
        w = window.window(session)
        self.session_bounds: list[tuple[datetime, datetime]] = list(
            zip(w["start"].to_list(), w["end"].to_list(), strict=True)
        )
        self.regular_bounds: list[tuple[datetime, datetime]] = list(
            zip(w["reg_open"].to_list(), w["reg_close"].to_list(), strict=True)
        )
        self.session_ends = [e for s, e in self.session_bounds if first <= e and s <= last]
        self.events = sorted(set(self.messages) | set(self.fill_bars) | set(self.session_ends))
        self.history = None if history is None else stored(history)
        self.history_minutes: int | None = None
        if self.history is not None and self.history.height:
            step = (
                self.history.sort("symbol", "ts")
                .select(pl.col("ts").diff().over("symbol").dt.total_minutes().min())
                .item()
            )
            self.history_minutes = int(step) if step is not None else None
        self._cache: dict[tuple[int, int], pl.DataFrame] = {}
        self._minute_ends = sorted(self.messages)

    def next_fill_start(self, received: datetime, latency: timedelta, after: datetime) -> datetime:
        """The first fill bar an order received at ``received`` is eligible for: the first
        starting at s with ``received <= s + latency`` and ending after ``after`` (the
        last boundary whose fills are done); :data:`NEVER` when none is left."""
        i = bisect_left(self.fill_starts, received - latency)
        while i < len(self.fill_starts):
            s = self.fill_starts[i]
            if self.fill_ends[s] > after:
                return s
            i += 1
        return NEVER

    def closed(self, now: datetime, minutes: int) -> pl.DataFrame:
        """Bars of ``minutes`` (1, N minutes or 1440 = a day) that have closed by ``now``: the
        history at that timeframe, then those built from the replayed minute bars."""
        closed_count = bisect_right(self._minute_ends, now)
        key = (minutes, closed_count)
        if key not in self._cache:
            done = self.minutes.filter(pl.col("ts") + MINUTE <= now)
            if minutes == 1:
                frame = done
            else:
                tf = Timeframe.parse("1d" if minutes == 1440 else f"{minutes}m")
                frame = aggregate_bars(
                    done,
                    source=Timeframe.parse("1m"),
                    target=tf,
                    session=self.session,
                    calendar=self.calendar,
                    as_of=now,
                )
            frame = frame.select(REST_COLUMNS)
            if self.history is not None and self.history_minutes == minutes:
                old = self.history.select(REST_COLUMNS).filter(pl.col("ts") < self.first)
                frame = pl.concat([old, frame])
            self._cache = {key: frame.sort("symbol", "ts")}
        return self._cache[key]

    def update(self, symbol: str, ts: datetime, values: dict[str, float]) -> dict[str, Any]:
        """Change the stored minute bar (``symbol``, ``ts``) and return its new bar message."""
        hit = (pl.col("symbol") == symbol) & (pl.col("ts") == ts)
        if not self.minutes.select(hit.any()).item():
            raise KeyError(f"no minute bar {symbol} at {ts.isoformat()}")
        bad = set(values) - {"open", "high", "low", "close", "volume"}
        if bad:
            raise ValueError(f"update_bar: unknown fields {sorted(bad)}")
        self.minutes = self.minutes.with_columns(
            pl.when(hit).then(pl.lit(v)).otherwise(pl.col(k)).cast(self.minutes.schema[k]).alias(k)
            for k, v in values.items()
        )
        self._cache.clear()
        row = self.minutes.filter(hit).row(0, named=True)
        msg = bar_message(row)
        msgs = self.messages[ts + MINUTE]
        for i, m in enumerate(msgs):
            if m["S"] == symbol:
                msgs[i] = msg
        return {**msg, "T": "u"}


NEVER = datetime.max.replace(tzinfo=UTC)


def bar_message(r: dict[str, Any]) -> dict[str, Any]:
    """A stream bar message (``T: b``) of a row; ``t`` is the bar start as a msgpack
    Timestamp (packed as ext type -1, as Alpaca sends it)."""
    msg: dict[str, Any] = {
        "T": "b",
        "S": r["symbol"],
        "o": float(r["open"]),
        "h": float(r["high"]),
        "l": float(r["low"]),
        "c": float(r["close"]),
        "v": _number(r["volume"]),
        "t": msgpack.Timestamp.from_datetime(r["ts"]),
    }
    # alpaca-py's Bar model requires both keys; null where the recording has no value.
    msg["vw"] = None if r.get("vwap") is None else float(r["vwap"])
    msg["n"] = None if r.get("trade_count") is None else int(r["trade_count"])
    return msg


def timeframe_minutes(tf: str) -> int:
    """Minutes of an Alpaca timeframe string: ``1Min`` 1, ``15Min`` 15, ``1Hour`` 60,
    ``1Day`` 1440."""
    unit = next((u for u in _UNITS if tf.endswith(u)), None)
    if unit is None or not tf.removesuffix(unit).isdigit():
        raise ValueError(f"invalid timeframe {tf!r}")
    return int(tf.removesuffix(unit)) * _UNITS[unit]


def bars_page(frame: pl.DataFrame, q: Any, page_limit: int) -> dict[str, Any]:
    """One page of ``GET /v2/stocks/bars`` from ``frame`` (sorted by symbol, ts), paged across
    symbols with an opaque ``next_page_token``, as Alpaca pages."""
    symbols = q["symbols"].split(",")
    start = _parse_time(q["start"]) if q.get("start") else None
    end = _parse_time(q["end"]) if q.get("end") else None
    limit = min(int(q.get("limit") or page_limit), page_limit)
    offset = int(base64.b64decode(q["page_token"]).decode()) if q.get("page_token") else 0
    part = frame.filter(pl.col("symbol").is_in(symbols))
    if start is not None:
        part = part.filter(pl.col("ts") >= start)
    if end is not None:
        part = part.filter(pl.col("ts") <= end)
    if q.get("sort") == "desc":
        part = part.sort("symbol", "ts", descending=[False, True])
    page = part.slice(offset, limit)
    out: dict[str, list[dict[str, Any]]] = {}
    for r in page.iter_rows(named=True):
        bar = {
            "t": r["ts"].strftime("%Y-%m-%dT%H:%M:%SZ"),
            "o": r["open"],
            "h": r["high"],
            "l": r["low"],
            "c": r["close"],
            "v": _number(r["volume"]),
            # alpaca-py's Bar model requires both keys; null where the recording has none.
            "n": None if r.get("trade_count") is None else int(r["trade_count"]),
            "vw": None if r.get("vwap") is None else float(r["vwap"]),
        }
        out.setdefault(r["symbol"], []).append(bar)
    more = offset + limit < part.height
    token = base64.b64encode(str(offset + limit).encode()).decode() if more else None
    return {"bars": out, "next_page_token": token}


def _parse_time(text: str) -> datetime:
    if len(text) == 10:
        text += "T00:00:00Z"
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def sample_minute_bars(session: date | None = None) -> pl.DataFrame:
    """The bundled 1-minute sample (``data/sample/eqker_1min``) as Alpaca would serve it:
    symbol, ts (UTC bar START), open, high, low, close, volume; only the New York session
    ``session`` (e.g. ``date(2019, 2, 15)``) when given. The files hold New York wall-clock
    bar END labels; ``config/settings.1m.yaml`` tells the project's file reader so."""
    from pipelines.config import FileSourceConfig, load_settings
    from pipelines.data.sources import FileBarSource
    from quantdag.project import PROJECT_ROOT

    settings, universe = load_settings(PROJECT_ROOT / "config" / "settings.1m.yaml")
    cfg = settings.environments["local"].source
    assert isinstance(cfg, FileSourceConfig)
    source = FileBarSource(cfg, universe.base_timeframe, root=PROJECT_ROOT)
    frame = pl.concat([source.read_file(p, s) for p, s in source.files()]).select(BAR_COLUMNS)
    if session is not None:
        frame = frame.filter(session_dates(pl.col("ts")) == session)
        if frame.height == 0:
            raise ValueError(f"the 1-minute sample has no bars on {session}")
    return frame.sort("symbol", "ts")
