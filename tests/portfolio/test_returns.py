"""ReturnsWindow: the closes it holds are exactly those pushed, in order, and nothing later;
the covariance (hence the weights) at a bar does not depend on any bar after it."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime

import numpy as np
import numpy.typing as npt
import polars as pl
import pytest

from pipelines.portfolio.config import PortfolioConfig
from pipelines.portfolio.returns import ReturnsWindow, window_at
from pipelines.portfolio.weights import portfolio_weights
from tests.portfolio.conftest import sample_closes

pytestmark = pytest.mark.unit
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


class Reference:
    """Every pushed bar as a dense row, the obvious way."""

    def __init__(self, lookback: int, n: int) -> None:
        self.lookback, self.rows = lookback, [np.full(n, np.nan)][:0]
        self.n = n

    def push(self, ids: I64, close: F64) -> None:
        self.n = max(self.n, int(ids.max()) + 1 if ids.size else 0)
        row = np.full(self.n, np.nan)
        row[ids] = close
        self.rows.append(row)

    def closes(self) -> F64:
        rows = self.rows[-(self.lookback + 1) :]
        return np.array([np.r_[r, np.full(self.n - r.size, np.nan)] for r in rows]).reshape(
            len(rows), self.n
        )

    def returns(self, ids: I64) -> F64:
        c = self.closes()
        c = np.column_stack([c[:, i] if i < self.n else np.full(len(c), np.nan) for i in ids])
        r = c[1:] / c[:-1] - 1.0 if len(c) > 1 else np.empty((0, ids.size))
        return r[~np.isnan(r).any(axis=1)]


def _random_bar(rng: np.random.Generator, n: int) -> tuple[I64, F64]:
    ids = np.flatnonzero(rng.random(n) < 0.8).astype(np.int64)
    return ids, rng.uniform(10, 200, ids.size)


def test_the_window_holds_exactly_the_last_closes_pushed() -> None:
    """Many more pushes than the window holds (so it moves buffers), subsets of symbols, a
    growing universe, copies pushed apart: always the reference's closes and returns."""
    rng = np.random.default_rng(7)
    window, ref = ReturnsWindow(5, 3), Reference(5, 3)
    forks: list[tuple[ReturnsWindow, Reference]] = []
    n = 3
    for step in range(60):
        if step in (20, 41):
            n += 2  # new symbols appear
        ids, close = _random_bar(rng, n)
        window.push(ids, close)
        ref.push(ids, close)
        if step % 9 == 0:  # a copy taken here and pushed on its own later
            copy = Reference(5, ref.n)
            copy.rows = list(ref.rows)
            forks.append((window.copy(), copy))
        for w, r in [(window, ref), *forks]:
            if w is not window:
                ids, close = _random_bar(rng, n)
                w.push(ids, close)
                r.push(ids, close)
            np.testing.assert_array_equal(w.closes(), r.closes())
            asked = np.array([0, 2, n - 1, n + 3], dtype=np.int64)  # n + 3: never pushed
            np.testing.assert_array_equal(w.returns(asked[:3]), r.returns(asked[:3]))
            assert w.returns(asked).shape == (0, 4)
    assert window.bars == 6 and window.n_symbols == 7


def test_a_push_reallocates_only_every_lookback_plus_one_bars() -> None:
    window = ReturnsWindow(20, 4)
    ids, close = np.arange(4), np.full(4, 10.0)
    buffers = set()
    for _ in range(210):
        window.push(ids, close)
        buffers.add(id(window._buf))
    assert len(buffers) <= 210 // 21 + 1


def test_a_subset_push_leaves_the_others_without_a_bar() -> None:
    w = ReturnsWindow(3, 2)
    w.push(np.array([0, 1]), np.array([100.0, 50.0]))
    w.push(np.array([0]), np.array([101.0]))
    w.push(np.array([0, 1]), np.array([102.0, 51.0]))
    np.testing.assert_allclose(w.returns(np.array([0])), [[0.01], [102 / 101 - 1]])
    assert w.returns(np.array([0, 1])).shape == (0, 2)
    np.testing.assert_array_equal(w.last_closes(np.array([1, 0, 5])), [51.0, 102.0, np.nan])
    w.push(np.array([0]), np.array([103.0]))
    np.testing.assert_array_equal(w.last_closes(np.array([1])), [51.0])  # its last bar's


def test_new_ids_grow_the_window_with_no_past() -> None:
    w = ReturnsWindow(4)
    w.push(np.array([0]), np.array([10.0]))
    w.push(np.array([0, 3]), np.array([11.0, 40.0]))
    w.push(np.array([0, 3]), np.array([12.0, 44.0]))
    assert w.n_symbols == 4
    np.testing.assert_allclose(w.returns(np.array([3, 0])), [[0.1, 12 / 11 - 1]])
    assert np.isnan(w.closes()[0, 3])


def test_to_dict_round_trips_through_json() -> None:
    rng = np.random.default_rng(3)
    w = ReturnsWindow(6, 4)
    for _ in range(9):
        w.push(*_random_bar(rng, 4))
    text = json.dumps(w.to_dict(), allow_nan=False)
    back = ReturnsWindow.from_dict(json.loads(text))
    assert back == w and back is not w
    np.testing.assert_array_equal(back.returns(np.arange(4)), w.returns(np.arange(4)))
    bar = _random_bar(rng, 4)
    back.push(*bar)
    assert back != w
    w.push(*bar)
    assert back == w
    assert ReturnsWindow.from_dict(ReturnsWindow(3).to_dict()) == ReturnsWindow(3)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda w: w.push(np.array([-1]), np.array([1.0])), "ids must be >= 0"),
        (lambda w: w.push(np.array([0]), np.array([0.0])), "a close must be a finite price > 0"),
        (lambda w: w.push(np.array([1]), np.array([np.nan])), "close of symbol id 1 is nan"),
        (lambda w: w.push(np.array([0, 1]), np.array([1.0])), "one close per id"),
        (lambda w: w.push(np.array([0.0]), np.array([1.0])), "integer symbol ids"),
        (lambda w: w.returns(np.array([-2])), "ids must be >= 0"),
    ],
)
def test_bad_pushes_are_refused(call: Callable[[ReturnsWindow], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(ReturnsWindow(3, 2))


def test_from_dict_refuses_a_damaged_value() -> None:
    with pytest.raises(ValueError, match="needs"):
        ReturnsWindow.from_dict({"lookback": 3, "closes": []})
    with pytest.raises(ValueError, match="at most lookback"):
        ReturnsWindow.from_dict({"lookback": 1, "n_symbols": 1, "closes": [[1.0]] * 3})
    with pytest.raises(ValueError, match="finite prices > 0"):
        ReturnsWindow.from_dict({"lookback": 2, "n_symbols": 1, "closes": [[-1.0]]})


# Point in time ---------------------------------------------------------------------------

SYMBOLS = ["AAPL", "BAC", "GLD", "JPM", "MSFT", "SPY", "TSLA", "XLP"]
LOOKBACK = 60
Bars = list[tuple[datetime, I64, F64]]
Feed = Callable[[ReturnsWindow, Bars, int], None]


def _bars(frame: pl.DataFrame) -> Bars:
    ids_of = {s: i for i, s in enumerate(SYMBOLS)}
    frame = frame.sort("ts", "symbol")
    ids = frame["symbol"].replace_strict(ids_of, return_dtype=pl.Int64).to_numpy()
    close = frame["close"].to_numpy()
    stamps = frame["ts"].to_list()
    starts = [0, *(i for i in range(1, len(stamps)) if stamps[i] != stamps[i - 1])]
    ends = [*starts[1:], len(stamps)]
    return [(stamps[a], ids[a:b], close[a:b]) for a, b in zip(starts, ends, strict=True)]


def honest(window: ReturnsWindow, bars: Bars, i: int) -> None:
    window.push(bars[i][1], bars[i][2])


def peeking(window: ReturnsWindow, bars: Bars, i: int) -> None:
    """The classic off-by-one: the bar's "close" read from the next row."""
    j = min(i + 1, len(bars) - 1)
    window.push(bars[j][1], bars[j][2])


def decisions(frame: pl.DataFrame, feed: Feed, at: set[datetime]) -> dict[datetime, F64]:
    """Stream ``frame`` bar time by bar time as the decision path does; at the times ``at``,
    the window's returns of every symbol and the HRP weights on them (one array)."""
    bars = _bars(frame)
    window = ReturnsWindow(LOOKBACK, len(SYMBOLS))
    config = PortfolioConfig(method="hrp", lookback=LOOKBACK)
    ids = np.arange(len(SYMBOLS))
    sides = np.array([1.0, -1.0, 1.0, 1.0, -1.0, 1.0, -1.0, 1.0])
    out = {}
    for i, (ts, _, _) in enumerate(bars):
        feed(window, bars, i)
        if ts in at:
            r = window.returns(ids)
            w, note = portfolio_weights(config, r, sides, np.ones(len(SYMBOLS)))
            assert note == ""
            out[ts] = np.r_[r.ravel(), w]
    return out


def assert_point_in_time(frame: pl.DataFrame, feed: Feed) -> None:
    """At each checked t: the same returns and weights from the whole frame, from the frame
    cut after t, and from the frame with every close after t changed."""
    times = frame["ts"].unique().sort().to_list()
    checked = [times[100], times[250], times[len(times) // 2]]
    full = decisions(frame, feed, set(checked))
    for t in checked:
        later = pl.col("ts") > t
        cut = decisions(frame.filter(~later), feed, {t})
        moved = frame.with_columns(
            close=pl.when(later).then(pl.col("close") * 1.5).otherwise(pl.col("close"))
        )
        changed = decisions(moved, feed, {t})
        np.testing.assert_array_equal(cut[t], full[t], err_msg=f"truncated after {t}")
        np.testing.assert_array_equal(changed[t], full[t], err_msg=f"closes after {t} changed")


@pytest.fixture(scope="module")
def frame_15m() -> pl.DataFrame:
    return sample_closes("eqker_15min", SYMBOLS)


def test_covariance_and_weights_at_t_ignore_every_bar_after_t(frame_15m: pl.DataFrame) -> None:
    assert_point_in_time(frame_15m, honest)


def test_the_check_catches_a_feed_that_reads_one_bar_ahead(frame_15m: pl.DataFrame) -> None:
    with pytest.raises(AssertionError, match="truncated after"):
        assert_point_in_time(frame_15m, peeking)


def test_window_at_is_the_streamed_window(frame_15m: pl.DataFrame) -> None:
    bars = _bars(frame_15m)
    streamed = ReturnsWindow(LOOKBACK, len(SYMBOLS))
    for i in range(301):
        honest(streamed, bars, i)
    t = bars[300][0]
    assert window_at(frame_15m, SYMBOLS, t, LOOKBACK) == streamed
    assert window_at(frame_15m.filter(pl.col("ts") <= t), SYMBOLS, t, LOOKBACK) == streamed
    with pytest.raises(ValueError, match="not in `symbols`"):
        window_at(frame_15m, SYMBOLS[:-1], t, LOOKBACK)
