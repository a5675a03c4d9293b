"""The numba kernels that stand in for polars definitions give the same floats, to the last bit,
on real bars (the sample and, where present, the shared 15-minute set)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pipelines.features import kernels
from pipelines.features.build import _starts
from pipelines.features.expr import to_polars
from pipelines.features.library import STOCH_HELPER, WILDER_HELPERS, S
from tests.conftest import shared_av_bars

pytestmark = pytest.mark.unit


def _same_bits(bars: pl.DataFrame) -> None:
    bars = bars.sort(S, "ts")
    helpers = {**WILDER_HELPERS, **STOCH_HELPER}
    reference = bars.select(to_polars(e).alias(n) for n, e in helpers.items())
    starts = _starts(bars[S])
    h, lo, c = (bars[x].to_numpy() for x in ("high", "low", "close"))
    atr, dip, dim = kernels.wilder_directional(h, lo, c, starts, 14)
    ours = {"_atr_14": atr, "_dip_14": dip, "_dim_14": dim}
    ours["_stoch_14"] = kernels.stochastic_k(h, lo, c, starts, 14)
    for name, values in ours.items():
        expected = reference[name].to_numpy()  # polars nulls come out as NaN
        assert np.array_equal(values, expected, equal_nan=True), name


def test_kernels_equal_polars_on_the_sample(sample_bars: pl.DataFrame) -> None:
    _same_bits(sample_bars)


def test_kernels_equal_polars_on_shared_data() -> None:
    bars = shared_av_bars(["AAPL", "JPM", "XOM", "TSLA"])
    if bars is None:
        pytest.skip("needs the shared 15-minute set in ../shared/data (absent here)")
    _same_bits(bars)
