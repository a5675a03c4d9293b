"""The feature library: per-symbol indicators as polars expressions.

Every expression reads only the current and earlier bars of its own symbol (``over("symbol")``
on a frame sorted by symbol and time), so no feature looks ahead. Moving averages and bands are
expressed relative to the close (``close / ma - 1``) so that features are comparable across
symbols and prices. Where a denominator can be zero (a flat window, a zero-volume window) the
feature takes a stated neutral value instead of inf or NaN: 0 for z-scores, slopes and
distances, 50 for oscillators on a 0-100 scale, 0.5 for positions within a range.

Recursive indicators are exact recursions seeded at a symbol's first bar. Their warm-up leaves
the seed a weight near e^-20 (about 2e-9): ten periods for an EMA of span n (alpha = 2/(n+1)),
twenty for Wilder's smoothing (alpha = 1/n), more where they are chained.
"""

from __future__ import annotations

import math

from pipelines.features import expr as X
from pipelines.features.expr import Node, col, when
from pipelines.features.registry import FeatureRegistry, FeatureSpec

S = X.S
c, o, h, lo, v = (col(x) for x in ("close", "open", "high", "low", "volume"))


def lag(e: Node, k: int = 1) -> Node:
    return X.shift(e, k)


def sma(e: Node, n: int) -> Node:
    return X.rolling_mean(e, n)


def rsum(e: Node, n: int) -> Node:
    return X.rolling_sum(e, n)


def rstd(e: Node, n: int, ddof: int = 1) -> Node:
    return X.rolling_std(e, n, ddof)


def rmax(e: Node, n: int) -> Node:
    return X.rolling_max(e, n)


def rmin(e: Node, n: int) -> Node:
    return X.rolling_min(e, n)


def ema(e: Node, n: int) -> Node:
    return X.ewm_mean(e, span=n)


def rma(e: Node, n: int) -> Node:
    """Wilder's smoothing (alpha = 1/n)."""
    return X.ewm_mean(e, alpha=1.0 / n)


def wma(e: Node, n: int) -> Node:
    # Weighted windows refuse nulls; a null input only occurs inside the caller's warm-up.
    weights = tuple(float(i) for i in range(1, n + 1))
    return X.rolling_mean(e.fill_null(0.0), n, weights)


def div(a: Node, b: Node, default: float | None = 0.0) -> Node:
    """``a / b``, or ``default`` where ``b`` is zero or missing."""
    return when(b != 0, a / b, X.lit(default, float64=True))


def rel(ma: Node) -> Node:
    """Distance of the close from a level, as a fraction of the level."""
    return div(c, ma) - 1.0


def rcov(a: Node, b: Node, n: int) -> Node:
    return (sma(a * b, n) - sma(a, n) * sma(b, n)) * (n / (n - 1))


def zscore(e: Node, n: int) -> Node:
    return div(e - sma(e, n), rstd(e, n))


prev_close = lag(c)
true_range = X.max_horizontal(h, prev_close) - X.min_horizontal(lo, prev_close)
log_ret = (c / prev_close).log()
ret = c / prev_close - 1.0
typical = (h + lo + c) / 3.0


def atr(n: int) -> Node:
    return rma(X.coalesce(true_range, h - lo), n)


def rsi_of(e: Node, n: int) -> Node:
    d = e - lag(e)
    gain = rma(d.clip(lower_bound=0.0), n)
    loss = rma((-d).clip(lower_bound=0.0), n)
    return when((gain + loss) == 0, 50.0, 100.0 * gain / (gain + loss))


def stoch_k(e_close: Node, e_high: Node, e_low: Node, n: int) -> Node:
    hh, ll = rmax(e_high, n), rmin(e_low, n)
    return when(hh == ll, 50.0, 100.0 * (e_close - ll) / (hh - ll))


def macd_line(fast: int, slow: int) -> Node:
    return ema(c, fast) - ema(c, slow)


def dm_plus() -> Node:
    up, down = h - lag(h), lag(lo) - lo
    return when((up > down) & (up > 0), up, 0.0)


def dm_minus() -> Node:
    up, down = h - lag(h), lag(lo) - lo
    return when((down > up) & (down > 0), down, 0.0)


def di(dm: Node, n: int) -> Node:
    return div(100.0 * rma(dm.fill_null(0.0), n), atr(n))


def position(e: Node, low_: Node, high_: Node) -> Node:
    """Where ``e`` lies between ``low_`` (0) and ``high_`` (1); 0.5 on a flat range."""
    return when(high_ == low_, 0.5, (e - low_) / (high_ - low_))


def norm_cdf(x: Node) -> Node:
    """Standard normal CDF (Abramowitz and Stegun 7.1.26, |error| < 1.5e-7)."""
    z = x.abs() / math.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * z)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    erf = 1.0 - poly * (-(z * z)).exp()
    return when(x >= 0, 0.5 * (1.0 + erf), 0.5 * (1.0 - erf))


WILDER_HELPERS = {"_atr_14": atr(14), "_dip_14": di(dm_plus(), 14), "_dim_14": di(dm_minus(), 14)}
"""ATR(14) and the DI lines, which several features share: computed once, in one pass, by
:func:`pipelines.features.kernels.wilder_directional` (equal to these expressions to the last
bit, which a test checks) into helper columns."""

STOCH_HELPER = {"_stoch_14": stoch_k(c, h, lo, 14)}
"""Fast %K(14), shared by the slow stochastic lines: computed by
:func:`pipelines.features.kernels.stochastic_k` (equal to this expression to the last bit)."""

HLC = (h, lo, c)
ATR_14, DIP_14, DIM_14 = (
    X.kernel("wilder", name, HLC, 14, output=i) for i, name in enumerate(WILDER_HELPERS)
)
STOCH_14 = X.kernel("stochastic_k", "_stoch_14", HLC, 14)
KAMA_10 = X.kernel("kama", "_kama_10", (c,), 10, 2, 30)
PSAR, PSAR_DIR = (
    X.kernel("psar", n, HLC, 0.02, 0.2, output=i) for i, n in enumerate(("_psar", "_psar_dir"))
)
SUPERTREND, SUPERTREND_DIR = (
    X.kernel("supertrend", n, HLC, 10, 3.0, output=i)
    for i, n in enumerate(("_supertrend", "_supertrend_dir"))
)
AROON_HIGH_25 = X.kernel("bars_since_extreme", "_aroon_high_25", (h,), 25, True)
AROON_LOW_25 = X.kernel("bars_since_extreme", "_aroon_low_25", (lo,), 25, False)
CCI_MD_20 = X.kernel("mean_abs_deviation", "_cci_md_20", (typical,), 20)
HURST_128 = X.kernel("hurst_rs", "_hurst_128", (log_ret.fill_null(0.0),), 128)


def _add(
    reg: FeatureRegistry,
    name: str,
    inputs: str,
    warmup: int,
    description: str,
    expr: Node,
    *,
    stateful: bool = False,
) -> None:
    reg.add(
        FeatureSpec(
            name=name,
            category=name.split("_", 1)[0],
            inputs=tuple(inputs.split(",")),
            warmup=warmup,
            description=description,
            expr=lambda e=expr: X.to_polars(e),  # type: ignore[misc]
            stateful=stateful,
            node=expr,
        )
    )


def register_trend(reg: FeatureRegistry) -> None:
    for n in (5, 10, 20, 50, 100, 200):
        _add(reg, f"trend_sma_{n}", "close", n, f"close / SMA({n}) - 1", rel(sma(c, n)))
    for n in (5, 10, 20, 50):
        _add(reg, f"trend_ema_{n}", "close", 10 * n, f"close / EMA({n}) - 1", rel(ema(c, n)))
    for n in (10, 20, 50):
        _add(
            reg,
            f"trend_wma_{n}",
            "close",
            n,
            f"close / WMA({n}) - 1 (linear weights)",
            rel(wma(c, n)),
        )
        _add(
            reg,
            f"trend_vwma_{n}",
            "close,volume",
            n,
            f"close / VWMA({n}) - 1",
            rel(div(rsum(c * v, n), rsum(v, n), None)),
        )
        half, root = max(n // 2, 1), max(int(math.sqrt(n)), 1)
        _add(
            reg,
            f"trend_hma_{n}",
            "close",
            n + root,
            f"close / Hull MA({n}) - 1",
            rel(wma(2.0 * wma(c, half) - wma(c, n), root)),
        )
    for n in (10, 20):
        e1 = ema(c, n)
        e2 = ema(e1, n)
        _add(reg, f"trend_dema_{n}", "close", 20 * n, f"close / DEMA({n}) - 1", rel(2.0 * e1 - e2))
        _add(
            reg,
            f"trend_tema_{n}",
            "close",
            30 * n,
            f"close / TEMA({n}) - 1",
            rel(3.0 * e1 - 3.0 * e2 + ema(e2, n)),
        )
    _add(
        reg,
        "trend_sma_5_20_cross",
        "close",
        20,
        "SMA(5) / SMA(20) - 1",
        div(sma(c, 5), sma(c, 20), None) - 1.0,
    )
    _add(
        reg,
        "trend_kama_10",
        "close",
        10,
        "close / KAMA(10, 2, 30) - 1",
        rel(KAMA_10),
        stateful=True,
    )
    # The DI lines are helper columns (see WILDER_HELPERS): ADX reads them instead of
    # recomputing two nested Wilder chains.
    dip, dim = DIP_14, DIM_14
    _add(
        reg,
        "trend_adx_14",
        "high,low,close",
        560,
        "ADX(14), Wilder",
        rma(div(100.0 * (dip - dim).abs(), dip + dim), 14),
    )
    _add(reg, "trend_dip_14", "high,low,close", 280, "+DI(14), Wilder", dip)
    _add(reg, "trend_dim_14", "high,low,close", 280, "-DI(14), Wilder", dim)
    up = 100.0 * (25 - AROON_HIGH_25) / 25
    down = 100.0 * (25 - AROON_LOW_25) / 25
    _add(reg, "trend_aroon_25_up", "high", 25, "Aroon up(25)", up)
    _add(reg, "trend_aroon_25_down", "low", 25, "Aroon down(25)", down)
    _add(reg, "trend_aroon_25_osc", "high,low", 25, "Aroon oscillator(25)", up - down)
    _add(
        reg,
        "trend_psar_0.02_dist",
        "high,low,close",
        2,
        "close / parabolic SAR(0.02, 0.02, 0.2) - 1",
        rel(PSAR),
        stateful=True,
    )
    _add(
        reg,
        "trend_psar_0.02_dir",
        "high,low",
        2,
        "parabolic SAR direction (+1 long, -1 short)",
        PSAR_DIR,
        stateful=True,
    )
    _add(
        reg,
        "trend_supertrend_10_dist",
        "high,low,close",
        200,
        "close / SuperTrend(10, 3) - 1",
        rel(SUPERTREND),
        stateful=True,
    )
    _add(
        reg,
        "trend_supertrend_10_dir",
        "high,low,close",
        200,
        "SuperTrend(10, 3) direction (+1 up, -1 down)",
        SUPERTREND_DIR,
        stateful=True,
    )
    tenkan = (rmax(h, 9) + rmin(lo, 9)) / 2.0
    kijun = (rmax(h, 26) + rmin(lo, 26)) / 2.0
    _add(
        reg,
        "trend_ichimoku_9_tenkan",
        "high,low,close",
        9,
        "close / Ichimoku tenkan(9) - 1",
        rel(tenkan),
    )
    _add(
        reg,
        "trend_ichimoku_26_kijun",
        "high,low,close",
        26,
        "close / Ichimoku kijun(26) - 1",
        rel(kijun),
    )
    _add(
        reg,
        "trend_ichimoku_26_spana",
        "high,low,close",
        26,
        "close / Ichimoku span A as computed now (not shifted forward) - 1",
        rel((tenkan + kijun) / 2.0),
    )
    _add(
        reg,
        "trend_ichimoku_52_spanb",
        "high,low,close",
        52,
        "close / Ichimoku span B(52) as computed now (not shifted forward) - 1",
        rel((rmax(h, 52) + rmin(lo, 52)) / 2.0),
    )


def register_momentum(reg: FeatureRegistry) -> None:
    for n in (7, 14, 21):
        _add(reg, f"momentum_rsi_{n}", "close", 20 * n, f"RSI({n}), Wilder", rsi_of(c, n))
    k = sma(STOCH_14, 3)
    _add(reg, "momentum_stoch_14_k", "high,low,close", 16, "slow stochastic %K(14, 3)", k)
    _add(
        reg, "momentum_stoch_14_d", "high,low,close", 18, "slow stochastic %D(14, 3, 3)", sma(k, 3)
    )
    r = rsi_of(c, 14)
    srsi_k = sma(stoch_k(r, r, r, 14), 3)
    _add(reg, "momentum_stochrsi_14_k", "close", 300, "stochastic RSI %K(14, 14, 3)", srsi_k)
    _add(
        reg,
        "momentum_stochrsi_14_d",
        "close",
        302,
        "stochastic RSI %D(14, 14, 3, 3)",
        sma(srsi_k, 3),
    )
    _add(
        reg,
        "momentum_willr_14",
        "high,low,close",
        14,
        "Williams %R(14)",
        STOCH_14 - 100.0,  # fast %K(14) - 100, from the shared kernel column
    )
    md = CCI_MD_20
    _add(
        reg,
        "momentum_cci_20",
        "high,low,close",
        20,
        "commodity channel index(20)",
        div(typical - sma(typical, 20), 0.015 * md),
    )
    bp = c - X.min_horizontal(lo, prev_close)
    tr = X.max_horizontal(h, prev_close) - X.min_horizontal(lo, prev_close)
    avg = [div(rsum(bp, n), rsum(tr, n), 0.5) for n in (7, 14, 28)]
    _add(
        reg,
        "momentum_uo_7_14_28",
        "high,low,close",
        29,
        "ultimate oscillator(7, 14, 28)",
        100.0 * (4.0 * avg[0] + 2.0 * avg[1] + avg[2]) / 7.0,
    )
    m = c - prev_close
    tsi = div(100.0 * ema(ema(m, 25), 13), ema(ema(m.abs(), 25), 13))
    _add(reg, "momentum_tsi_25_13", "close", 380, "true strength index(25, 13)", tsi)
    _add(
        reg,
        "momentum_tsi_25_13_signal",
        "close",
        510,
        "TSI signal line, EMA(13) of TSI",
        ema(tsi, 13),
    )
    for n in (1, 5, 10, 20, 40):
        _add(
            reg,
            f"momentum_roc_{n}",
            "close",
            n,
            f"rate of change over {n} bars, percent",
            100.0 * (div(c, lag(c, n), None) - 1.0),
        )
    line = macd_line(12, 26)
    signal = ema(line, 9)
    _add(reg, "momentum_macd_12_26_line", "close", 260, "MACD(12, 26) line / close", div(line, c))
    _add(
        reg,
        "momentum_macd_12_26_signal",
        "close",
        350,
        "MACD signal EMA(9) / close",
        div(signal, c),
    )
    _add(
        reg,
        "momentum_macd_12_26_hist",
        "close",
        350,
        "MACD histogram / close",
        div(line - signal, c),
    )
    ppo = div(100.0 * line, ema(c, 26))
    _add(reg, "momentum_ppo_12_26_line", "close", 260, "PPO(12, 26) on EMAs, percent", ppo)
    _add(reg, "momentum_ppo_12_26_signal", "close", 350, "PPO signal EMA(9)", ema(ppo, 9))
    _add(reg, "momentum_ppo_12_26_hist", "close", 350, "PPO histogram", ppo - ema(ppo, 9))


def _range_vol(n: int) -> dict[str, Node]:
    hl = (h / lo).log()
    co = (c / o).log()
    parkinson = (sma(hl * hl, n) / (4.0 * math.log(2.0))).sqrt()
    gk = sma(0.5 * hl * hl - (2.0 * math.log(2.0) - 1.0) * co * co, n).clip(lower_bound=0).sqrt()
    rs_term = (h / c).log() * (h / o).log() + (lo / c).log() * (lo / o).log()
    rs = sma(rs_term, n).clip(lower_bound=0).sqrt()
    overnight = (o / prev_close).log()
    k = 0.34 / (1.34 + (n + 1) / (n - 1))
    yz = (
        (rstd(overnight, n) ** 2 + k * rstd(co, n) ** 2 + (1 - k) * sma(rs_term, n))
        .clip(lower_bound=0)
        .sqrt()
    )
    return {"parkinson": parkinson, "gk": gk, "rs": rs, "yz": yz}


def register_volatility(reg: FeatureRegistry) -> None:
    for n in (7, 14):
        _add(
            reg,
            f"volatility_atr_{n}",
            "high,low,close",
            20 * n,
            f"ATR({n}), Wilder / close",
            div(ATR_14 if n == 14 else atr(n), c),
        )
    _add(
        reg,
        "volatility_natr_14",
        "high,low,close",
        280,
        "normalised ATR(14), percent",
        div(100.0 * ATR_14, c),
    )
    mid, sd = sma(c, 20), rstd(c, 20, ddof=0)
    upper, lower = mid + 2.0 * sd, mid - 2.0 * sd
    _add(
        reg, "volatility_bb_20_pctb", "close", 20, "Bollinger %B(20, 2)", position(c, lower, upper)
    )
    _add(
        reg,
        "volatility_bb_20_width",
        "close",
        20,
        "Bollinger bandwidth(20, 2), percent",
        div(100.0 * (upper - lower), mid),
    )
    kmid = ema(c, 20)
    _add(
        reg,
        "volatility_keltner_20_pos",
        "high,low,close",
        200,
        "position in the Keltner channel EMA(20) +- 2 ATR(10)",
        position(c, kmid - 2.0 * atr(10), kmid + 2.0 * atr(10)),
    )
    for n in (20, 55):
        _add(
            reg,
            f"volatility_donchian_{n}_pos",
            "high,low,close",
            n,
            f"position in the Donchian channel({n})",
            position(c, rmin(lo, n), rmax(h, n)),
        )
    for n in (20, 60, 120):
        _add(
            reg,
            f"volatility_hv_{n}",
            "close",
            n + 1,
            f"standard deviation of {n} log returns (per bar)",
            rstd(log_ret, n),
        )
    for n in (20, 60):
        for kind, expr in _range_vol(n).items():
            _add(
                reg,
                f"volatility_{kind}_{n}",
                "open,high,low,close",
                n + 1,
                f"{kind} range-based volatility over {n} bars (per bar)",
                expr,
            )


def register_volume(reg: FeatureRegistry) -> None:
    avg_v = sma(v, 20)
    signed = when(c > prev_close, v, when(c < prev_close, -v, 0.0))
    _add(
        reg,
        "volume_obv_20",
        "close,volume",
        21,
        "on-balance volume change over 20 bars / (20 x average volume)",
        div(rsum(signed, 20), 20.0 * avg_v),
    )
    mfm = div((c - lo) - (h - c), h - lo)
    _add(
        reg,
        "volume_ad_20",
        "high,low,close,volume",
        20,
        "accumulation/distribution change over 20 bars / (20 x average volume)",
        div(rsum(mfm * v, 20), 20.0 * avg_v),
    )
    _add(
        reg,
        "volume_cmf_20",
        "high,low,close,volume",
        20,
        "Chaikin money flow(20)",
        div(rsum(mfm * v, 20), rsum(v, 20)),
    )
    flow = typical * v
    pos = when(typical > lag(typical), flow, 0.0)
    neg = when(typical < lag(typical), flow, 0.0)
    p14, n14 = rsum(pos, 14), rsum(neg, 14)
    _add(
        reg,
        "volume_mfi_14",
        "high,low,close,volume",
        15,
        "money flow index(14)",
        when(p14 + n14 == 0, 50.0, 100.0 * p14 / (p14 + n14)),
    )
    _add(
        reg,
        "volume_force_13",
        "close,volume",
        130,
        "force index EMA(13) / (close x average volume)",
        div(ema((c - prev_close) * v, 13), c * avg_v),
    )
    for n in (5, 20, 60):
        _add(
            reg,
            f"volume_ratio_{n}",
            "volume",
            n,
            f"volume / SMA({n}) of volume",
            div(v, sma(v, n), 1.0),
        )
    _add(
        reg,
        "volume_pvt_20",
        "close,volume",
        21,
        "price-volume trend change over 20 bars / (20 x average volume)",
        div(rsum(ret * v, 20), 20.0 * avg_v),
    )
    _add(
        reg,
        "volume_logvol_20",
        "volume",
        20,
        "log(1 + volume) z-score over 20 bars",
        zscore((v + 1.0).log(), 20),
    )


def register_statistical(reg: FeatureRegistry) -> None:
    rng = h - lo
    _add(reg, "statistical_range_1", "high,low,close", 0, "(high - low) / close", div(rng, c))
    _add(
        reg,
        "statistical_body_1",
        "open,high,low,close",
        0,
        "(close - open) / (high - low), 0 on a flat bar",
        div(c - o, rng),
    )
    _add(
        reg,
        "statistical_upperwick_1",
        "open,high,low,close",
        0,
        "(high - max(open, close)) / (high - low)",
        div(h - X.max_horizontal(o, c), rng),
    )
    _add(
        reg,
        "statistical_lowerwick_1",
        "open,high,low,close",
        0,
        "(min(open, close) - low) / (high - low)",
        div(X.min_horizontal(o, c) - lo, rng),
    )
    for n in (1, 5, 10, 20, 40):
        _add(
            reg,
            f"statistical_ret_{n}",
            "close",
            n,
            f"simple return over {n} bars",
            div(c, lag(c, n), None) - 1.0,
        )
        _add(
            reg,
            f"statistical_logret_{n}",
            "close",
            n,
            f"log return over {n} bars",
            (c / lag(c, n)).log(),
        )
    for n in (20, 60, 120):
        _add(
            reg,
            f"statistical_zscore_{n}",
            "close",
            n,
            f"z-score of the close over {n} bars",
            zscore(c, n),
        )
    for n in (20, 60):
        _add(
            reg,
            f"statistical_skew_{n}",
            "close",
            n + 1,
            f"skewness of {n} log returns",
            _moment_ratio(log_ret, n, 3),
        )
        _add(
            reg,
            f"statistical_kurt_{n}",
            "close",
            n + 1,
            f"excess kurtosis of {n} log returns",
            _moment_ratio(log_ret, n, 4) - 3.0,
        )
    for k in range(1, 6):
        _add(
            reg,
            f"statistical_autocorr_60_lag{k}",
            "close",
            61 + k,
            f"autocorrelation of log returns at lag {k} over 60 bars",
            _rcorr(log_ret, lag(log_ret, k), 60),
        )
    _add(
        reg,
        "statistical_hurst_128",
        "close",
        129,
        "Hurst exponent of log returns (R/S, 128)",
        HURST_128,
    )
    for n in (20, 60):
        # OLS on a fixed time axis 0..n-1: fixed weights, so no dependence on the bar index.
        centred = [k - (n - 1) / 2.0 for k in range(n)]
        sxx = sum(x * x for x in centred)
        slope = X.rolling_sum(c, n, tuple(centred)) / sxx
        var_c = rstd(c, n) ** 2 * (n - 1)
        _add(
            reg,
            f"statistical_slope_{n}",
            "close",
            n,
            f"OLS slope of the close on time over {n} bars / close",
            div(slope, c),
        )
        _add(
            reg,
            f"statistical_r2_{n}",
            "close",
            n,
            f"R-squared of that regression ({n})",
            div(slope * slope * sxx, var_c).clip(upper_bound=1.0),
        )


def _moment_ratio(e: Node, n: int, k: int) -> Node:
    m = sma(e, n)
    var = sma((e - m) ** 2, n)
    return div(sma((e - m) ** k, n), var ** (k / 2.0))


def _rcorr(a: Node, b: Node, n: int) -> Node:
    return div(rcov(a, b, n), (rcov(a, a, n) * rcov(b, b, n)).sqrt())


def register_micro(reg: FeatureRegistry) -> None:
    dollar = c * v
    _add(
        reg,
        "micro_amihud_20",
        "close,volume",
        21,
        "Amihud illiquidity: sum |return| / sum dollar volume over 20 bars, x 1e9",
        div(1e9 * rsum(ret.abs(), 20), rsum(dollar, 20), None),
    )
    _add(
        reg,
        "micro_amihud_60",
        "close,volume",
        61,
        "Amihud illiquidity over 60 bars, x 1e9",
        div(1e9 * rsum(ret.abs(), 60), rsum(dollar, 60), None),
    )
    dp = c - prev_close
    cov = rcov(dp, lag(dp), 20)
    _add(
        reg,
        "micro_roll_20",
        "close",
        22,
        "Roll spread estimate over 20 bars / close",
        when(cov < 0, 2.0 * (-cov).sqrt() / c, 0.0),
    )
    hl1 = (h / lo).log() ** 2
    beta = hl1 + lag(hl1)
    gamma = (X.max_horizontal(h, lag(h)) / X.min_horizontal(lo, lag(lo))).log() ** 2
    k = 3.0 - 2.0 * math.sqrt(2.0)
    alpha = ((2.0 * beta).sqrt() - beta.sqrt()) / k - (gamma / k).sqrt()
    spread = (2.0 * (alpha.exp() - 1.0) / (1.0 + alpha.exp())).clip(lower_bound=0.0)
    _add(
        reg,
        "micro_corwin_schultz_20",
        "high,low",
        21,
        "Corwin-Schultz high-low spread estimate, mean over 20 bars",
        sma(spread, 20),
    )
    signed_v = when(dp > 0, v, when(dp < 0, -v, 0.0))
    sv = div(signed_v, sma(v, 20))
    _add(
        reg,
        "micro_kyle_lambda_20",
        "close,volume",
        21,
        "Kyle's lambda: slope of return on signed relative volume over 20 bars",
        div(rcov(ret, sv, 20), rcov(sv, sv, 20)),
    )
    sigma = rstd(dp, 20)
    buy = norm_cdf(div(dp, sigma))
    _add(
        reg,
        "micro_bvc_imbalance_20",
        "close,volume",
        21,
        "bulk-volume-classified order imbalance over 20 bars, -1..1",
        div(rsum(v * (2.0 * buy - 1.0), 20), rsum(v, 20)),
    )


def register_intraday(reg: FeatureRegistry, bars_per_session: int = 1, daily: bool = False) -> None:
    """The session features. On daily bars (``daily``) a bar is the whole session: time of day,
    bars since the open or to the close and the opening range say nothing there (they would be
    constant, or the bar's own range), so only the overnight gap and the close against the
    session's typical price are registered."""
    if not daily:
        _add(
            reg,
            "intraday_tod_1_frac",
            "ts",
            0,
            "time of day: fraction of the session elapsed",
            col("_tod_frac"),
        )
        _add(
            reg,
            "intraday_tod_1_sin",
            "ts",
            0,
            "time of day on the unit circle (sine)",
            (2.0 * math.pi * col("_tod_frac")).sin(),
        )
        _add(
            reg,
            "intraday_bars_1_since_open",
            "ts",
            0,
            "bars since the session open",
            col("_bars_since_open"),
        )
        _add(
            reg,
            "intraday_bars_1_to_close",
            "ts",
            0,
            "bars left until the session close",
            col("_bars_to_close"),
        )
        _add(
            reg,
            "intraday_orange_30_pos",
            "high,low,close",
            0,
            "position in the first 30 minutes' range (the range so far, inside those minutes)",
            col("_or_pos"),
        )
    _add(
        reg,
        "intraday_gap_1_overnight",
        "open,close",
        bars_per_session,  # defined from a symbol's second session on
        "session's first open / previous session's last close - 1",
        col("_gap"),
    )
    _add(
        reg,
        "intraday_vwap_1_dist",
        "high,low,close,volume",
        0,
        "close / session VWAP (typical price) - 1"
        + (": on a daily bar, close / (high + low + close) / 3 - 1" if daily else ""),
        col("_vwap_dist"),
    )


def build_registry(bars_per_session: int = 1, daily: bool = False) -> FeatureRegistry:
    """The per-symbol part of the registry (the multi-timeframe and cross-sectional features
    are added by :mod:`pipelines.features.build`); ``bars_per_session`` sets the warm-up of
    the features that need a previous session; ``daily`` leaves out the intraday-only ones
    (see :func:`register_intraday`)."""
    reg = FeatureRegistry()
    for register in (
        register_trend,
        register_momentum,
        register_volatility,
        register_volume,
        register_statistical,
        register_micro,
    ):
        register(reg)
    register_intraday(reg, bars_per_session, daily)
    return reg
