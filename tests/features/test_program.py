"""The streaming program's instructions against polars, node by node, on inputs built to hit
the corners: nulls inside windows, NaN, infinities, signed zeros, flat stretches, windows of one.
Real-data parity of whole features is in test_stream.py; this pins down each primitive."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from pipelines.features import expr as X
from pipelines.features.expr import col, to_polars, when
from pipelines.features.program import compile_program, run_program

pytestmark = pytest.mark.unit

rng = np.random.default_rng(20261201)
N = 400


def _series(with_specials: bool) -> list[float | None]:
    values: list[float | None] = list(100.0 + np.cumsum(rng.normal(0.0, 1.0, N)))
    values[50:60] = [101.0] * 10  # a flat stretch
    if with_specials:
        for i in (5, 77, 78, 200, 333):
            values[i] = None
        values[120] = math.nan
        values[150] = math.inf
        values[151] = -math.inf
        values[260] = -0.0
        values[261] = 0.0
    return values


FRAME = pl.DataFrame(
    {
        "symbol": ["A"] * N + ["B"] * N,
        "ts": list(range(N)) * 2,
        "x": _series(True) + _series(False),
        "y": _series(False) + _series(True),
    },
    schema={"symbol": pl.String, "ts": pl.Int64, "x": pl.Float64, "y": pl.Float64},
)
x, y = col("x"), col("y")

NODES = {
    "sum3": X.rolling_sum(x, 3),
    "sum1": X.rolling_sum(x, 1),
    "mean5": X.rolling_mean(x, 5),
    "std4": X.rolling_std(x, 4),
    "std6_0": X.rolling_std(y, 6, ddof=0),
    "max5": X.rolling_max(x, 5),
    "min3": X.rolling_min(y, 3),
    "wsum4": X.rolling_sum(x.fill_null(0.0), 4, (-1.5, -0.5, 0.5, 1.5)),
    "wmean3": X.rolling_mean(y.fill_null(0.0), 3, (1.0, 2.0, 3.0)),
    "ewm_span": X.ewm_mean(x, span=9),
    "ewm_alpha": X.ewm_mean(y, alpha=0.3),
    "shift1": X.shift(x),
    "shift3": X.shift(y, 3),
    "gt": x > y,
    "ge": x >= y,
    "lt": x < y,
    "le": x <= y,
    "eq": x == y,
    "ne": x != y,
    "and": (x > 100.0) & (y > 100.0),
    "or": (x > 100.0) | (y < 100.0),
    "when": when(x > y, x - y, when(x < y, y, 0.0)),
    "when_null": when(x > 101.0, x),
    "max_h": X.max_horizontal(x, y, 100.0),
    "min_h": X.min_horizontal(x, y),
    "coalesce": X.coalesce(x, y, -1.0),
    "clip_lo": (x - 100.0).clip(lower_bound=0.0),
    "clip_hi": (x - 100.0).clip(upper_bound=1.0),
    "fill": x.fill_null(7.0),
    "is_null": x.is_null(),
    "abs_neg": (-(x - 100.0)).abs(),
    "log": (x - 99.0).log(),
    "exp": ((x - 100.0) / 7.0).exp(),
    "sqrt": (x - 100.0).sqrt(),
    "sin": x.sin(),
    "pow2": (x - 100.0) ** 2,
    "pow3": (x - 100.0) ** 3,
    "pow_half": x**0.5,
    "pow_15": x**1.5,
    "pow_col": (x / 100.0) ** (y / 100.0),
    "div_const": x / 3.0,
    "div_col": x / (y - 100.0),
    "lit_div": 1.0 / (x - 100.0),
    "index": X.row_index() * 1.0,
}


@pytest.mark.parametrize("name", list(NODES))
def test_instruction_equals_polars(name: str) -> None:
    node = NODES[name]
    batch = FRAME.sort("symbol", "ts").select(to_polars(node).alias(name))[name]
    program = compile_program({name: node})
    state = program.new_state(2)
    out = np.empty(2 * N)
    valid = np.empty(2 * N, dtype=bool)
    slot = program.outputs[name]
    data = {c: FRAME[c].to_numpy() for c in ("x", "y")}
    nulls = {c: FRAME[c].is_null().to_numpy() for c in ("x", "y")}
    for t in range(N):
        rows = np.array([0, 1], dtype=np.int64)
        for c, s in program.inputs.items():
            state.vals[rows, s] = data[c][[t, N + t]]
            state.ok[rows, s] = ~nulls[c][[t, N + t]]
        run_program(program, state, rows)
        out[[t, N + t]] = state.vals[rows, slot]
        valid[[t, N + t]] = state.ok[rows, slot] != 0
    expected = batch.cast(pl.Float64)
    assert np.array_equal(valid, expected.is_not_null().to_numpy()), name
    want = expected.to_numpy()[valid]
    got = out[valid]
    same = (want == got) | (np.isnan(want) & np.isnan(got))
    assert same.all(), f"{name}: first difference at {np.flatnonzero(~same)[:3]}"
