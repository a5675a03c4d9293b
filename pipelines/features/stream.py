"""The live path's features: one bar time at a time, equal to the batch matrix.

:class:`FeatureStream` holds, for a fixed universe, the state every feature needs (windows,
recursions, kernels, the day's session figures, the open 60-minute and daily buckets) and
advances it with each new bar time. Its rows equal the rows that
:func:`~pipelines.features.build_features` computes for the same bars: every value equal and
every null in the same place, for every feature (the path-dependent ones included), because
both run the same definitions (:mod:`pipelines.features.expr`) and the streaming programs repeat
polars' arithmetic (:mod:`pipelines.features.program`). ``tests/features/test_stream.py``
checks it bar by bar.

The contract that makes this hold:

- every symbol's bar of a bar time arrives in one :meth:`FeatureStream.update` (the
  cross-sectional features of that time are computed from them), and bar times only move on;
- the stream sees each symbol's bars from the same first bar as the batch build it is compared
  with: recursive features (EMAs, Wilder's smoothing, PSAR, ...) depend on their seed. Warm a
  stream with :meth:`FeatureStream.warm` over the history the batch matrix was built from; from
  fewer bars the values agree to the precision the warm-up lengths give (about 1e-9 relative).

Example::

    stream = FeatureStream(FeatureConfig(Timeframe.parse("15m")), symbols)
    stream.warm(history)                # warm-up (run(history) also returns the rows)
    rows = stream.update(bars_at_t)     # one row per symbol with a bar at t
    x = rows.matrix(model.features)     # NaN where a feature is null
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from pipelines.bars.calendar import Session, sessions_between
from pipelines.features import stream_kernels as SK
from pipelines.features.build import (
    BASE_CONTEXT,
    BETA_60,
    DAILY_CONTEXT,
    HOURLY_CONTEXT,
    OPENING_RANGE_MINUTES,
    RETURN_1,
    XS_BASES,
    FeatureConfig,
    FeatureInputError,
    feature_registry,
)
from pipelines.features.expr import Node, col
from pipelines.features.program import Program, ProgramError, compile_program, run_program
from pipelines.features.registry import FeatureRegistry

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]

BAR_FIELDS = ("open", "high", "low", "close", "volume")
MINUTE_US = 60_000_000
DAY_US = 86_400_000_000
EPOCH = date(1970, 1, 1)


@dataclass(frozen=True)
class FeatureRows:
    """The features of one bar time: one row per symbol that had a bar, in symbol order."""

    ts: datetime
    symbols: tuple[str, ...]
    names: tuple[str, ...]
    values: F64
    """(rows, features); where ``valid`` is false the feature is null and the value is NaN."""
    valid: B

    def frame(self) -> pl.DataFrame:
        """As a frame shaped like the batch matrix: ``symbol``, ``ts``, one column per feature."""
        n = len(self.symbols)
        head = [
            pl.Series("symbol", self.symbols, pl.String),
            pl.Series("ts", [self.ts] * n, pl.Datetime("us", "UTC")),
        ]
        if np.isnan(self.values[self.valid]).any():
            # A defined NaN must stay NaN: build column by column.
            columns = []
            for j, name in enumerate(self.names):
                series = pl.Series(name, self.values[:, j], pl.Float64)
                if not self.valid[:, j].all():
                    series = series.scatter(np.flatnonzero(~self.valid[:, j]), None)
                columns.append(series)
            return pl.DataFrame([*head, *columns])
        # Every NaN marks a null: one series for all columns, then slices of it.
        flat = pl.Series(np.ascontiguousarray(self.values.T).ravel(), nan_to_null=True)
        return pl.DataFrame(
            [*head, *(flat.slice(j * n, n).alias(name) for j, name in enumerate(self.names))]
        )

    def matrix(self, columns: Sequence[str]) -> F64:
        """The values of ``columns`` in that order, NaN where null (a model's input)."""
        index = {n: j for j, n in enumerate(self.names)}
        missing = [c for c in columns if c not in index]
        if missing:
            raise FeatureInputError(f"the stream does not compute {missing}")
        out: F64 = self.values[:, [index[c] for c in columns]]
        return out


class _Sessions:
    """Session windows by New York date, in microseconds since the epoch (UTC)."""

    def __init__(self, calendar: str, session: Session) -> None:
        self.calendar = calendar
        self.session = session
        self.windows: dict[int, tuple[int, int, int, int, int, int]] = {}
        self.covered: set[int] = set()

    def window(self, day: int) -> tuple[int, int, int, int, int, int]:
        """(start, end, regular open, regular close, extended open, extended close); KeyError
        where ``day`` has no session."""
        if day not in self.covered:
            first = EPOCH + timedelta(days=day)
            try:
                cal = sessions_between(self.calendar, first, first + timedelta(days=366))
            except ValueError as exc:  # the calendar's data ends before this date
                raise FeatureInputError(str(exc)) from None
            frame = cal.window(self.session).select(
                pl.col("session_date"),
                *(
                    pl.col(c).dt.epoch("us")
                    for c in ("start", "end", "reg_open", "reg_close", "ext_open", "ext_close")
                ),
            )
            last = day
            for row in frame.iter_rows():
                last = (row[0] - EPOCH).days
                self.windows[last] = tuple(row[1:])  # type: ignore[assignment]
            # Only the days up to the calendar's last session count as covered.
            self.covered.update(range(day, max(last, day) + 1))
        if day not in self.windows:
            raise KeyError(day)
        return self.windows[day]


class FeatureStream:
    """Incremental features of a fixed universe (see the module docstring for the contract).

    ``symbols`` is the universe: bars of other symbols are refused. As in the batch build, the
    index proxy of the rolling beta is SPY when the universe holds it, else the equal-weight
    universe.
    """

    def __init__(
        self,
        config: FeatureConfig,
        symbols: Sequence[str],
        registry: FeatureRegistry | None = None,
    ) -> None:
        if not symbols:
            raise FeatureInputError("a feature stream needs at least one symbol")
        if len(set(symbols)) != len(symbols):
            raise FeatureInputError("the stream's universe names a symbol twice")
        self.config = config
        self.registry = registry or feature_registry(config)
        self.symbols = tuple(sorted(symbols))
        self._index = {s: i for i, s in enumerate(self.symbols)}
        self._sessions = _Sessions(config.calendar, config.session)
        self._hourly = 60 % config.timeframe.minutes == 0
        self._names = tuple(self.registry.names)
        self._compile()
        n = len(self.symbols)
        self._clock = np.iinfo(np.int64).min
        self._session = np.zeros((n, SK.SESSION_COLUMNS))
        self._session[:, SK.DAY] = -1.0
        self._buckets = {
            "hour": np.zeros((n, SK.BUCKET_COLUMNS)),
            "day": np.zeros((n, SK.BUCKET_COLUMNS)),
        }
        hour_names = list(HOURLY_CONTEXT)
        day_names = list(DAILY_CONTEXT)
        self._context = {
            "hour": (
                hour_names,
                np.zeros((n, len(hour_names))),
                np.zeros((n, len(hour_names)), bool),
            ),
            "day": (day_names, np.zeros((n, len(day_names))), np.zeros((n, len(day_names)), bool)),
        }
        self._states = {name: prog.new_state(n) for name, prog in self._programs.items()}

    # -- construction ------------------------------------------------------------------------

    def _compile(self) -> None:
        reg = self.registry
        base: dict[str, Node] = {}
        warmups: dict[str, int] = {}
        self._xs: list[str] = []
        for spec in reg:
            if spec.node is not None:
                base[spec.name] = spec.node
            elif spec.category == "mtf" and (
                spec.name in HOURLY_CONTEXT or spec.name in DAILY_CONTEXT
            ):
                base[spec.name] = col(spec.name)  # the context column, masked below
            elif spec.category == "mtf" and spec.name in BASE_CONTEXT:
                base[spec.name] = BASE_CONTEXT[spec.name]
            elif spec.category == "xs" and _xs_feature(spec.name):
                self._xs.append(spec.name)
                continue
            else:
                raise ProgramError(
                    f"feature {spec.name} has no streaming definition: define it with "
                    "pipelines.features.expr (a FeatureSpec with a node) so that the live path "
                    "can compute it"
                )
            warmups[spec.name] = spec.warmup
        for name in self._xs:
            for needed in _xs_inputs(name):
                if needed not in base:
                    raise ProgramError(f"{name} needs the feature {needed} in the registry")
        if self._xs:
            base["_r1"] = RETURN_1
        self._programs: dict[str, Program] = {"base": compile_program(base, warmups)}
        if set(self._programs["base"].inputs) & set(HOURLY_CONTEXT) and not self._hourly:
            raise ProgramError("60-minute context needs a base timeframe that divides 60 minutes")
        self._programs["hour"] = compile_program(HOURLY_CONTEXT)
        self._programs["day"] = compile_program(DAILY_CONTEXT)
        if "xs_beta_60" in self._xs:
            self._programs["beta"] = compile_program({"xs_beta_60": BETA_60})
        outputs = self._programs["base"].outputs
        self._out_columns = np.array(
            [j for j, name in enumerate(self._names) if name in outputs], dtype=np.int64
        )
        self._out_slots = np.array(
            [outputs[name] for name in self._names if name in outputs], dtype=np.int64
        )
        unknown = (
            set(self._programs["base"].inputs)
            - set(BAR_FIELDS)
            - _SESSION_INPUTS
            - set(HOURLY_CONTEXT)
            - set(DAILY_CONTEXT)
        )
        if unknown:
            raise ProgramError(
                f"the definitions read columns the stream does not provide: {unknown}"
            )

    # -- stepping ----------------------------------------------------------------------------

    def run(self, bars: pl.DataFrame) -> pl.DataFrame:
        """Feed ``bars`` (any number of bar times, in any row order) through :meth:`update`,
        time by time; returns the rows, sorted like the batch matrix."""
        return pl.concat([rows.frame() for rows in self._feed(bars)]).sort("symbol", "ts")

    def warm(self, bars: pl.DataFrame) -> None:
        """:meth:`run` without keeping the rows: a warm-up over history."""
        for _ in self._feed(bars):
            pass

    def _feed(self, bars: pl.DataFrame) -> Iterator[FeatureRows]:
        if bars.height == 0:
            raise FeatureInputError("no bars to feed the stream")
        ordered = bars.sort("ts", "symbol")
        ts = ordered["ts"].dt.epoch("us").to_numpy()
        bounds = np.flatnonzero(np.r_[True, ts[1:] != ts[:-1], True])
        for a, b in itertools.pairwise(bounds):
            yield self.update(ordered.slice(int(a), int(b - a)))

    def update(self, bars: pl.DataFrame) -> FeatureRows:
        """The features of one bar time: ``bars`` holds that time's bar of every symbol that
        has one (columns ``symbol``, ``ts``, ``open``, ``high``, ``low``, ``close``,
        ``volume``)."""
        missing = {"symbol", "ts", *BAR_FIELDS} - set(bars.columns)
        if missing:
            raise FeatureInputError(f"bars lack column(s) {sorted(missing)}")
        if bars.height == 0:
            raise FeatureInputError("no bars in this update")
        ts_col = bars.get_column("ts")
        dtype = ts_col.dtype
        if not isinstance(dtype, pl.Datetime) or dtype.time_zone is None:
            raise FeatureInputError(
                f"ts must be a time-zone-aware datetime (bar starts in UTC), not {dtype}"
            )
        if dtype != pl.Datetime("us", "UTC"):
            ts_col = ts_col.dt.convert_time_zone("UTC").dt.cast_time_unit("us")
        ts = ts_col.to_numpy().view(np.int64)
        if ts.min() != ts.max():
            raise FeatureInputError(
                f"one update takes the bars of one time; got {np.unique(ts).size} times "
                "(use FeatureStream.warm or run for a history)"
            )
        columns = []
        for name in BAR_FIELDS:
            column = bars.get_column(name)
            if column.null_count():
                sym = bars.filter(pl.col(name).is_null())["symbol"][0]
                raise FeatureInputError(
                    f"{sym} has a missing or NaN {name} at {_dt(int(ts[0]))}; validation "
                    "quarantines such bars, build features from validated bars"
                )
            columns.append(column.to_numpy())
        return self.update_arrays(int(ts[0]), bars.get_column("symbol").to_list(), *columns)

    def update_arrays(
        self,
        ts_us: int,
        symbols: Sequence[str],
        open_: Any,
        high: Any,
        low: Any,
        close: Any,
        volume: Any,
    ) -> FeatureRows:
        """:meth:`update` on plain arrays: ``ts_us`` is the bars' start (microseconds since the
        epoch, UTC), the fields are in the order of ``symbols``."""
        rows, fields = self._check(ts_us, symbols, (open_, high, low, close, volume))
        n = rows.shape[0]
        tf_us = self.config.timeframe.minutes * MINUTE_US
        bar_end = ts_us + tf_us
        day = (ts_us - 5 * 3600 * 1_000_000) // DAY_US
        try:
            start, end, reg_open, reg_close, ext_open, ext_close = self._sessions.window(day)
        except KeyError:
            raise FeatureInputError(
                f"{self.symbols[rows[0]]} has a bar at {_dt(ts_us)} on no session of "
                f"{self.config.calendar}; build features from validated bars"
            ) from None
        if not start <= ts_us < end:
            raise FeatureInputError(
                f"{self.symbols[rows[0]]} has a bar at {_dt(ts_us)} outside the "
                f"{self.config.session} session; build features from validated bars"
            )
        o, h, lo, c, v = fields
        base = self._programs["base"]
        bst = self._states["base"]
        slots = base.inputs
        for name, values in zip(BAR_FIELDS, fields, strict=True):
            if name in slots:
                bst.vals[rows, slots[name]] = values
                bst.ok[rows, slots[name]] = 1
        # Session columns (the same for every symbol at this time, but the day's figures).
        or_end = reg_open + OPENING_RANGE_MINUTES * MINUTE_US
        in_or = reg_open <= ts_us < or_end
        since = _total_minutes(ts_us - start)
        tf_minutes = self.config.timeframe.minutes
        scalars = {
            "_tod_frac": since / _total_minutes(end - start),
            "_bars_since_open": float(since // tf_minutes),
            "_bars_to_close": float(_total_minutes(end - bar_end) // tf_minutes),
        }
        for name, value in scalars.items():
            if name in slots:
                bst.vals[rows, slots[name]] = value
                bst.ok[rows, slots[name]] = 1
        out = np.zeros((n, 3))
        out_ok = np.zeros((n, 3), dtype=np.uint8)
        SK.session_step(
            rows, o, h, lo, c, v, day, in_or, ts_us >= or_end, self._session, out, out_ok
        )
        for j, name in enumerate(("_or_pos", "_gap", "_vwap_dist")):
            if name in slots:
                bst.vals[rows, slots[name]] = out[:, j]
                bst.ok[rows, slots[name]] = out_ok[:, j]
        # Higher timeframes: buckets that closed by this bar's end, then their context.
        if self._hourly:
            if reg_open <= ts_us < reg_close:
                seg_start, seg_end = reg_open, reg_close
            elif ts_us < reg_open:
                seg_start, seg_end = ext_open, reg_open
            else:
                seg_start, seg_end = reg_close, ext_close
            b = seg_start + ((ts_us - seg_start) // (60 * MINUTE_US)) * 60 * MINUTE_US
            self._advance("hour", rows, fields, bar_end, b, min(b + 60 * MINUTE_US, seg_end), True)
        self._advance(
            "day", rows, fields, bar_end, reg_open, reg_close, reg_open <= ts_us < reg_close
        )
        for names, values, valid in self._context.values():
            for j, name in enumerate(names):
                if name in slots:
                    bst.vals[rows, slots[name]] = values[rows, j]
                    bst.ok[rows, slots[name]] = valid[rows, j]
        run_program(base, bst, rows)
        values = np.full((n, len(self._names)), np.nan)
        valid = np.zeros((n, len(self._names)), dtype=bool)
        ok = bst.ok[rows][:, self._out_slots] != 0
        valid[:, self._out_columns] = ok
        values[:, self._out_columns] = np.where(ok, bst.vals[rows][:, self._out_slots], np.nan)
        if self._xs:
            self._cross_section(rows, values, valid, bst)
        self._clock = ts_us
        return FeatureRows(
            ts=_dt(ts_us),
            symbols=tuple(self.symbols[i] for i in rows),
            names=self._names,
            values=values,
            valid=valid,
        )

    def _advance(
        self,
        kind: str,
        rows: I64,
        fields: tuple[F64, ...],
        bar_end: int,
        start: int,
        end: int,
        inside: bool,
    ) -> None:
        o, h, lo, c, _ = fields
        closed = np.zeros(2 * rows.shape[0], dtype=np.int64)
        ohlc = np.zeros((2 * rows.shape[0], 4))
        count = SK.bucket_step(
            rows, o, h, lo, c, bar_end, start, end, inside, self._buckets[kind], closed, ohlc
        )
        if count == 0:
            return
        prog, st = self._programs[kind], self._states[kind]
        names, values, valid = self._context[kind]
        done = 0
        while done < count:
            # A symbol can close two buckets at one time (an unfinished one, then its new one):
            # each batch of programs steps a symbol once.
            seen: set[int] = set()
            batch = []
            while done < count and closed[done] not in seen:
                seen.add(int(closed[done]))
                batch.append(done)
                done += 1
            idx = rows[closed[batch]]
            order = np.argsort(idx, kind="stable")
            idx, picked = idx[order], np.array(batch)[order]
            for j, field in enumerate(("open", "high", "low", "close")):
                if field in prog.inputs:
                    st.vals[idx, prog.inputs[field]] = ohlc[picked, j]
                    st.ok[idx, prog.inputs[field]] = 1
            run_program(prog, st, idx)
            for j, name in enumerate(names):
                slot = prog.outputs[name]
                values[idx, j] = st.vals[idx, slot]
                valid[idx, j] = st.ok[idx, slot] != 0

    def _cross_section(self, rows: I64, values: F64, valid: B, bst: Any) -> None:
        position = {n: j for j, n in enumerate(self._names)}
        steps = bst.steps[rows]  # bars seen, this one included
        warm = {name: self.registry[name].warmup for name in self._xs}
        results: dict[str, tuple[F64, B]] = {}
        n = rows.shape[0]
        for base in XS_BASES:
            wanted = [f"xs_rank_1_{base}", f"xs_zscore_1_{base}"]
            if not any(w in warm for w in wanted):
                continue
            j = position[base]
            rank, rank_ok = np.zeros(n), np.zeros(n, dtype=bool)
            z, z_ok = np.zeros(n), np.zeros(n, dtype=bool)
            SK.cross_section(values[:, j].copy(), valid[:, j].copy(), rank, rank_ok, z, z_ok)
            results[wanted[0]] = (rank, rank_ok)
            results[wanted[1]] = (z, z_ok)
        if "xs_relstrength_20" in warm:
            j = position["statistical_ret_20"]
            rel, rel_ok = np.zeros(n), np.zeros(n, dtype=bool)
            SK.demean(values[:, j].copy(), valid[:, j].copy(), rel, rel_ok)
            results["xs_relstrength_20"] = (rel, rel_ok)
        if "xs_beta_60" in warm:
            slot = self._programs["base"].outputs["_r1"]
            r1, r1_ok = bst.vals[rows, slot].copy(), bst.ok[rows, slot] != 0
            if "SPY" in self._index:
                spy = np.flatnonzero(rows == self._index["SPY"])
                idx_value = float(r1[spy[0]]) if spy.size and r1_ok[spy[0]] else np.nan
                idx_ok = bool(spy.size and r1_ok[spy[0]])
            else:
                idx_value = SK.demean(r1, r1_ok, np.zeros(n), np.zeros(n, dtype=bool))
                idx_ok = bool(r1_ok.any())
            prog, st = self._programs["beta"], self._states["beta"]
            st.vals[rows, prog.inputs["_r1"]] = r1
            st.ok[rows, prog.inputs["_r1"]] = r1_ok
            st.vals[rows, prog.inputs["_idx"]] = idx_value
            st.ok[rows, prog.inputs["_idx"]] = idx_ok
            run_program(prog, st, rows)
            slot = prog.outputs["xs_beta_60"]
            results["xs_beta_60"] = (st.vals[rows, slot].copy(), st.ok[rows, slot] != 0)
        for name, (x, ok) in results.items():
            j = position[name]
            ok = ok & (steps > warm[name])
            valid[:, j] = ok
            values[:, j] = np.where(ok, x, np.nan)

    def _check(
        self, ts_us: int, symbols: Sequence[str], columns: Sequence[Any]
    ) -> tuple[I64, tuple[F64, ...]]:
        if not symbols:
            raise FeatureInputError("no bars in this update")
        try:
            rows = np.array([self._index[s] for s in symbols], dtype=np.int64)
        except KeyError as exc:
            raise FeatureInputError(
                f"{exc.args[0]} is not in the stream's universe {list(self.symbols)}"
            ) from None
        order = np.argsort(rows, kind="stable")
        rows = rows[order]
        if rows.size > 1 and (rows[1:] == rows[:-1]).any():
            dup = self.symbols[rows[1:][rows[1:] == rows[:-1]][0]]
            raise FeatureInputError(
                f"duplicate bars reached the feature layer ({dup} at {_dt(ts_us)}); this is a "
                "bug upstream: validation must quarantine duplicates before features are built"
            )
        if ts_us <= self._clock:
            stale = ts_us < self._clock
            raise FeatureInputError(
                f"bars at {_dt(ts_us)} arrived after the features at {_dt(self._clock)} were "
                "computed: "
                + (
                    "bar times must only move on (out-of-order bars are a bug upstream)"
                    if stale
                    else "deliver every symbol's bar of one time in a single update"
                )
            )
        fields = []
        for name, column in zip(BAR_FIELDS, columns, strict=True):
            values = np.asarray(column, dtype=np.float64)[order]
            if values.shape != rows.shape:
                raise FeatureInputError(f"{name} has {values.size} values for {rows.size} bars")
            bad = np.isnan(values)
            if bad.any():
                raise FeatureInputError(
                    f"{self.symbols[rows[np.flatnonzero(bad)[0]]]} has a missing or NaN {name} "
                    f"at {_dt(ts_us)}; validation quarantines such bars, build features from "
                    "validated bars"
                )
            fields.append(np.ascontiguousarray(values))
        return rows, tuple(fields)


_SESSION_INPUTS = {
    "_tod_frac",
    "_bars_since_open",
    "_bars_to_close",
    "_or_pos",
    "_gap",
    "_vwap_dist",
}


def _xs_feature(name: str) -> bool:
    return name in ("xs_relstrength_20", "xs_beta_60") or any(
        name in (f"xs_rank_1_{b}", f"xs_zscore_1_{b}") for b in XS_BASES
    )


def _xs_inputs(name: str) -> list[str]:
    if name == "xs_relstrength_20":
        return ["statistical_ret_20"]
    if name == "xs_beta_60":
        return []
    return [name.split("_1_", 1)[1]]


def _total_minutes(micros: int) -> int:
    """Whole minutes of a duration, truncated towards zero (polars' ``dt.total_minutes``)."""
    return micros // MINUTE_US if micros >= 0 else -(-micros // MINUTE_US)


def _dt(ts_us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ts_us)
