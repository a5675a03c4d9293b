"""Parity with pandas-ta on real bars (the shared 15-minute set; the bundled sample when absent).

Tolerances, after each feature's warm-up: 1e-9 relative for windowed sums and extremes, 1e-6 for
recursive indicators (EMA, Wilder); near zero, the error is taken relative to a thousandth of the
feature's typical magnitude. Where
our definition differs on purpose, the comparison is made against pandas-ta's building blocks
assembled the documented way, and the difference is stated beside it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
import polars as pl
import pytest

from pipelines.features import FeatureConfig, build_features, feature_registry
from pipelines.timeframes import Timeframe
from tests.conftest import shared_av_bars

ta = pytest.importorskip("pandas_ta")
pytestmark = pytest.mark.unit
TF = Timeframe.parse("15m")
CONFIG = FeatureConfig(TF)
REGISTRY = feature_registry(CONFIG)
WINDOWED, RECURSIVE = 1e-9, 1e-6


@pytest.fixture(scope="module")
def frames(sample_bars: pl.DataFrame) -> tuple[pl.DataFrame, pd.DataFrame]:
    bars = shared_av_bars(["JPM"], before="2021-04-01")
    if bars is None:
        bars = sample_bars.filter(pl.col("symbol") == "AAPL")
    ours = build_features(bars, CONFIG)
    return ours, bars.to_pandas()


def _rel(b: pd.DataFrame, ma: pd.Series) -> pd.Series:
    return b.close / ma - 1


def _cols(frame: pd.DataFrame, i: int) -> pd.Series:
    return frame.iloc[:, i]


REFERENCES: dict[str, tuple[float, Callable[[pd.DataFrame], pd.Series]]] = {
    "trend_sma_20": (WINDOWED, lambda b: _rel(b, ta.sma(b.close, 20))),
    "trend_sma_200": (WINDOWED, lambda b: _rel(b, ta.sma(b.close, 200))),
    "trend_ema_20": (RECURSIVE, lambda b: _rel(b, ta.ema(b.close, 20))),
    "trend_ema_50": (RECURSIVE, lambda b: _rel(b, ta.ema(b.close, 50))),
    "trend_wma_20": (WINDOWED, lambda b: _rel(b, ta.wma(b.close, 20))),
    "trend_vwma_20": (WINDOWED, lambda b: _rel(b, ta.vwma(b.close, b.volume, 20))),
    "trend_hma_20": (WINDOWED, lambda b: _rel(b, ta.hma(b.close, 20))),
    "trend_dema_20": (RECURSIVE, lambda b: _rel(b, ta.dema(b.close, 20))),
    "trend_tema_20": (RECURSIVE, lambda b: _rel(b, ta.tema(b.close, 20))),
    "trend_kama_10": (RECURSIVE, lambda b: _rel(b, ta.kama(b.close, 10, 2, 30))),
    "trend_adx_14": (RECURSIVE, lambda b: _cols(ta.adx(b.high, b.low, b.close, 14), 0)),
    "trend_dip_14": (RECURSIVE, lambda b: _cols(ta.adx(b.high, b.low, b.close, 14), -2)),
    "trend_dim_14": (RECURSIVE, lambda b: _cols(ta.adx(b.high, b.low, b.close, 14), -1)),
    "trend_aroon_25_up": (WINDOWED, lambda b: _cols(ta.aroon(b.high, b.low, 25), 1)),
    "trend_aroon_25_down": (WINDOWED, lambda b: _cols(ta.aroon(b.high, b.low, 25), 0)),
    "trend_aroon_25_osc": (WINDOWED, lambda b: _cols(ta.aroon(b.high, b.low, 25), 2)),
    "trend_psar_0.02_dist": (
        WINDOWED,
        lambda b: _rel(
            b,
            _cols(ta.psar(b.high, b.low, b.close), 0).fillna(
                _cols(ta.psar(b.high, b.low, b.close), 1)
            ),
        ),
    ),
    "trend_ichimoku_9_tenkan": (
        WINDOWED,
        lambda b: _rel(b, (b.high.rolling(9).max() + b.low.rolling(9).min()) / 2),
    ),
    "momentum_rsi_7": (RECURSIVE, lambda b: ta.rsi(b.close, 7)),
    "momentum_rsi_14": (RECURSIVE, lambda b: ta.rsi(b.close, 14)),
    "momentum_rsi_21": (RECURSIVE, lambda b: ta.rsi(b.close, 21)),
    "momentum_stoch_14_k": (WINDOWED, lambda b: _cols(ta.stoch(b.high, b.low, b.close), 0)),
    "momentum_stoch_14_d": (WINDOWED, lambda b: _cols(ta.stoch(b.high, b.low, b.close), 1)),
    "momentum_stochrsi_14_k": (RECURSIVE, lambda b: _cols(ta.stochrsi(b.close), 0)),
    "momentum_stochrsi_14_d": (RECURSIVE, lambda b: _cols(ta.stochrsi(b.close), 1)),
    "momentum_willr_14": (WINDOWED, lambda b: ta.willr(b.high, b.low, b.close, 14)),
    # pandas-ta 0.4.71b0 computes CCI as tp - sma / (0.015 * mad) (operator precedence); we use
    # Lambert's definition, assembled here from pandas-ta's own hlc3, sma and mad.
    "momentum_cci_20": (
        WINDOWED,
        lambda b: (
            (ta.hlc3(b.high, b.low, b.close) - ta.sma(ta.hlc3(b.high, b.low, b.close), 20))
            / (0.015 * ta.mad(ta.hlc3(b.high, b.low, b.close), 20))
        ),
    ),
    "momentum_uo_7_14_28": (WINDOWED, lambda b: ta.uo(b.high, b.low, b.close)),
    "momentum_tsi_25_13": (RECURSIVE, lambda b: _cols(ta.tsi(b.close, 13, 25), 0)),
    "momentum_roc_10": (WINDOWED, lambda b: ta.roc(b.close, 10)),
    "momentum_macd_12_26_line": (RECURSIVE, lambda b: _cols(ta.macd(b.close), 0) / b.close),
    "momentum_macd_12_26_hist": (RECURSIVE, lambda b: _cols(ta.macd(b.close), 1) / b.close),
    "momentum_macd_12_26_signal": (RECURSIVE, lambda b: _cols(ta.macd(b.close), 2) / b.close),
    "volatility_atr_14": (RECURSIVE, lambda b: ta.atr(b.high, b.low, b.close, 14) / b.close),
    # pandas-ta's natr defaults to an EMA of the true range; ours (like TA-Lib) is Wilder's.
    "volatility_natr_14": (RECURSIVE, lambda b: ta.natr(b.high, b.low, b.close, 14, mamode="rma")),
    # Bollinger bands on the population standard deviation (ddof=0), as Bollinger and TA-Lib.
    # %B divides by the band width: the rolling variance's rounding is magnified (1e-6).
    "volatility_bb_20_pctb": (RECURSIVE, lambda b: _cols(ta.bbands(b.close, 20, 2, ddof=0), 4)),
    "volatility_bb_20_width": (WINDOWED, lambda b: _cols(ta.bbands(b.close, 20, 2, ddof=0), 3)),
    "volatility_donchian_20_pos": (
        WINDOWED,
        lambda b: (
            (b.close - _cols(ta.donchian(b.high, b.low, 20, 20), 0))
            / (
                _cols(ta.donchian(b.high, b.low, 20, 20), 2)
                - _cols(ta.donchian(b.high, b.low, 20, 20), 0)
            )
        ),
    ),
    "volume_obv_20": (
        WINDOWED,
        lambda b: ta.obv(b.close, b.volume).diff(20) / (20 * ta.sma(b.volume, 20)),
    ),
    "volume_ad_20": (
        WINDOWED,
        lambda b: ta.ad(b.high, b.low, b.close, b.volume).diff(20) / (20 * ta.sma(b.volume, 20)),
    ),
    "volume_cmf_20": (WINDOWED, lambda b: ta.cmf(b.high, b.low, b.close, b.volume, length=20)),
    # pandas-ta's PVT accumulates the percent rate of change; ours the fractional return.
    "volume_pvt_20": (
        WINDOWED,
        lambda b: ta.pvt(b.close, b.volume).diff(20) / (100 * 20 * ta.sma(b.volume, 20)),
    ),
    "volume_force_13": (
        RECURSIVE,
        lambda b: ta.efi(b.close, b.volume, 13) / (b.close * ta.sma(b.volume, 20)),
    ),
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_feature_matches_pandas_ta(frames: tuple[pl.DataFrame, pd.DataFrame], name: str) -> None:
    ours_frame, bars = frames
    tol, reference = REFERENCES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = np.asarray(reference(bars), dtype=float)
    ours = ours_frame[name].to_numpy().astype(float)
    start = REGISTRY[name].warmup
    if start >= len(ours) - 50:
        pytest.skip(f"{name}: the data has too few bars after its warm-up of {start}")
    a, b = ours[start:], ref[start:]
    both = ~np.isnan(a) & ~np.isnan(b)
    assert both.sum() > 0.95 * len(a), f"{name}: values missing after warm-up"
    # Relative error, with a floor at a thousandth of the typical magnitude so that values that
    # cross zero (distances, oscillators at their bounds) are not judged on their last digits.
    floor = 1e-3 * float(np.median(np.abs(b[both]))) + 1e-12
    err = np.abs(a[both] - b[both]) / np.maximum(np.abs(b[both]), floor)
    worst = int(np.argmax(err))
    assert err[worst] <= tol, (
        f"{name}: relative difference {err[worst]:.3g} > {tol} at bar {start + worst}"
    )


def test_mfi_differs_only_where_typical_price_repeats(
    frames: tuple[pl.DataFrame, pd.DataFrame],
) -> None:
    """pandas-ta counts a bar whose typical price equals the previous one as negative money
    flow; TA-Lib and we count it as neither. Away from such ties the two agree."""
    ours_frame, bars = frames
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = ta.mfi(bars.high, bars.low, bars.close, bars.volume, 14).to_numpy()
    tp = ((bars.high + bars.low + bars.close) / 3).to_numpy()
    # Equal up to rounding: (h + l + c) / 3 may round differently in pandas and polars.
    tie = np.r_[False, np.isclose(tp[1:], tp[:-1], rtol=1e-12, atol=0.0)]
    tie_in_window = pd.Series(tie).rolling(14, min_periods=1).max().to_numpy() > 0
    ours = ours_frame["volume_mfi_14"].to_numpy()
    keep = ~tie_in_window & ~np.isnan(ref) & ~np.isnan(ours)
    keep[:15] = False
    assert keep.sum() > 100
    np.testing.assert_allclose(ours[keep], ref[keep], rtol=1e-9)


def test_supertrend_matches_after_the_first_reversal(
    frames: tuple[pl.DataFrame, pd.DataFrame],
) -> None:
    """SuperTrend holds a band until the trend reverses, so an early ATR difference (seeding)
    lasts until the first reversal after the warm-up; from there the two agree."""
    ours_frame, bars = frames
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = ta.supertrend(bars.high, bars.low, bars.close, length=10, multiplier=3.0)
    ours_dir = ours_frame["trend_supertrend_10_dir"].to_numpy()
    start = REGISTRY["trend_supertrend_10_dir"].warmup
    flips = np.flatnonzero(np.diff(ours_dir[start:]) != 0)
    assert flips.size, "no reversal in the data"
    first = start + int(flips[0]) + 1
    np.testing.assert_array_equal(ours_dir[start:], ref.iloc[start:, 1].to_numpy())
    line = bars.close.to_numpy() / (1 + ours_frame["trend_supertrend_10_dist"].to_numpy())
    np.testing.assert_allclose(line[first:], ref.iloc[first:, 0].to_numpy(), rtol=1e-6)
