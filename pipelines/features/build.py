"""Build the feature matrix from validated bars, in batch or for the newest bar (live).

Stages: prepare (sort, check, helper columns, path-dependent kernels, session columns) -> the
per-symbol features of the registry -> multi-timeframe context from 60-minute and daily bars
that had closed -> cross-sectional ranks and z-scores across the universe at each timestamp.
Every stage reads only bars at or before each row's time.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import polars as pl

from pipelines.bars.aggregate import aggregate_bars
from pipelines.bars.calendar import Session, session_dates_within_hours, sessions_between
from pipelines.features import expr as X
from pipelines.features import kernels
from pipelines.features.expr import (
    Node,
    col,
    row_index,
    shared_windows,
    to_polars,
    when,
)
from pipelines.features.library import (
    CCI_MD_20,
    HURST_128,
    STOCH_HELPER,
    WILDER_HELPERS,
    S,
    atr,
    build_registry,
    div,
    lag,
    position,
    rmax,
    rmin,
    rsi_of,
    sma,
)
from pipelines.features.registry import FeatureRegistry, FeatureSpec
from pipelines.timeframes import Timeframe

XS_BASES = ("statistical_ret_1", "statistical_ret_20", "momentum_rsi_14", "volume_ratio_20")
OPENING_RANGE_MINUTES = 30


SESSION_HELPERS = frozenset(
    {"_tod_frac", "_bars_since_open", "_bars_to_close", "_or_pos", "_gap", "_vwap_dist"}
)


def _context_definitions() -> tuple[dict[str, Node], dict[str, Node], dict[str, Node]]:
    """The multi-timeframe context: columns of closed 60-minute bars, of closed sessions (daily
    bars), and the base-bar features read from them. Both engines evaluate these nodes."""
    c, h, lo = col("close"), col("high"), col("low")
    k = row_index()
    hourly = {
        "mtf_60m_ret_1": when(k >= 1, c / lag(c) - 1.0),
        "mtf_60m_ret_4": when(k >= 4, c / lag(c, 4) - 1.0),
        "mtf_60m_rsi_7": when(k >= 140, rsi_of(c, 7)),
        "mtf_60m_atr_7": when(k >= 140, div(atr(7), c)),
        "_h4": when(k >= 3, rmax(h, 4)),
        "_l4": when(k >= 3, rmin(lo, 4)),
    }
    prev_close = lag(c)
    tr = X.max_horizontal(h, prev_close) - X.min_horizontal(lo, prev_close)
    daily = {
        "mtf_1d_ret_1": when(k >= 1, c / prev_close - 1.0),
        "_dh": h,
        "_dl": lo,
        "_dsma5": when(k >= 4, sma(c, 5)),
        "mtf_1d_atr_5": when(k >= 5, div(sma(tr, 5), c)),
    }
    base = {
        "mtf_1d_pos_1": position(c, col("_dl"), col("_dh")),
        "mtf_1d_sma_5": div(c, col("_dsma5"), None) - 1.0,
        "mtf_60m_pos_4": position(c, col("_l4"), col("_h4")),
    }
    return hourly, daily, base


HOURLY_CONTEXT, DAILY_CONTEXT, BASE_CONTEXT = _context_definitions()
TYPICAL = CCI_MD_20.args[0]
LOG_RETURN_FILLED = HURST_128.args[0]


def _beta_definitions() -> tuple[Node, Node]:
    """The one-bar return and the rolling 60-bar beta of it on the index proxy's (``_idx``)."""
    c = col("close")
    r1 = c / lag(c) - 1.0
    a, b = col("_r1"), col("_idx")
    window = 60
    cov = sma(a * b, window) - sma(a, window) * sma(b, window)
    var = sma(b * b, window) - sma(b, window) ** 2
    return r1, when(row_index() >= 61, div(cov, var, None))


RETURN_1, BETA_60 = _beta_definitions()


class FeatureInputError(ValueError):
    """The bars given to the feature builder are not usable; the message says why and where."""


@dataclass(frozen=True)
class FeatureConfig:
    """What the features are built on: the bars' timeframe, session and exchange calendar."""

    timeframe: Timeframe
    session: Session = "regular"
    calendar: str = "XNYS"

    @property
    def bars_per_session(self) -> int:
        """Bars in a full session: one for daily bars, whatever the session's hours."""
        if self.timeframe.is_daily:
            return 1
        minutes = 390 if self.session == "regular" else 16 * 60
        return math.ceil(minutes / self.timeframe.minutes)


def feature_registry(config: FeatureConfig) -> FeatureRegistry:
    """Every feature for ``config``: the per-symbol library, multi-timeframe, cross-sectional.

    On daily bars every window counts sessions, and there is no multi-timeframe context: the
    last closed session of a daily bar is the bar itself (its ``mtf_1d_*`` would repeat
    ``statistical_ret_1`` and the like), and no 60-minute bar can be built from it. The
    intraday-only session features are left out too (see
    :func:`pipelines.features.library.register_intraday`)."""
    daily = config.timeframe.is_daily
    reg = build_registry(config.bars_per_session, daily)
    per_day = config.bars_per_session
    hourly = 60 // config.timeframe.minutes if 60 % config.timeframe.minutes == 0 else 0
    if hourly:
        per_day_60 = math.ceil((390 if config.session == "regular" else 16 * 60) / 60)

        def warm60(k: int) -> int:
            return math.ceil((k / per_day_60 + 1) * per_day)

        for name, k, desc in (
            ("mtf_60m_ret_1", 1, "return of the last closed 60-minute bar"),
            ("mtf_60m_ret_4", 4, "return over the last 4 closed 60-minute bars"),
            ("mtf_60m_rsi_7", 140, "RSI(7) of closed 60-minute bars"),
            ("mtf_60m_atr_7", 140, "ATR(7) of closed 60-minute bars / close"),
            ("mtf_60m_pos_4", 4, "close's position in the range of the last 4 closed 60m bars"),
        ):
            reg.add(_column_spec(name, "mtf", warm60(k), desc, "open,high,low,close"))
    sessions = (
        ("mtf_1d_ret_1", 2, "return of the last closed session (close to close)"),
        ("mtf_1d_pos_1", 1, "close's position in the last closed session's range"),
        ("mtf_1d_sma_5", 5, "close / SMA(5) of closed sessions' closes - 1"),
        ("mtf_1d_atr_5", 6, "mean true range of the last 5 closed sessions / close"),
    )
    for name, k, desc in () if daily else sessions:
        reg.add(_column_spec(name, "mtf", (k + 1) * per_day, desc, "high,low,close"))
    for base in XS_BASES:
        warm = reg[base].warmup
        reg.add(
            _column_spec(
                f"xs_rank_1_{base}",
                "xs",
                warm,
                f"percentile rank of {base} across the universe (0..1)",
                "close",
            )
        )
        reg.add(
            _column_spec(
                f"xs_zscore_1_{base}", "xs", warm, f"z-score of {base} across the universe", "close"
            )
        )
    reg.add(
        _column_spec(
            "xs_relstrength_20",
            "xs",
            20,
            "20-bar return minus the equal-weight universe's",
            "close",
        )
    )
    reg.add(
        _column_spec(
            "xs_beta_60",
            "xs",
            61,
            "rolling 60-bar beta to the index proxy (SPY if in the universe, "
            "else the equal-weight universe)",
            "close",
        )
    )
    return reg


def _column_spec(
    name: str, category: str, warmup: int, description: str, inputs: str
) -> FeatureSpec:
    """A feature computed by a later stage (multi-timeframe, cross-sectional) into its column."""

    def column() -> pl.Expr:
        return pl.col(name)

    return FeatureSpec(
        name=name,
        category=category,
        inputs=tuple(inputs.split(",")),
        warmup=warmup,
        description=description,
        expr=column,
    )


def _starts(symbols: pl.Series) -> npt.NDArray[np.int64]:
    changed = (symbols != symbols.shift(1)).fill_null(True)
    return np.flatnonzero(changed.to_numpy()).astype(np.int64)


def prepare(
    bars: pl.DataFrame, config: FeatureConfig, registry: FeatureRegistry | None = None
) -> pl.DataFrame:
    """Sorted bars with the helper columns the feature expressions read (those ``registry``
    needs, or all)."""
    required = {"symbol", "ts", "open", "high", "low", "close", "volume"}
    missing = required - set(bars.columns)
    if missing:
        raise FeatureInputError(f"bars lack column(s) {sorted(missing)}")
    if bars.height == 0:
        raise FeatureInputError("no bars to build features from")
    df = bars.select([col for col in bars.columns if col in required])
    later = (pl.col(S) > pl.col(S).shift(1)) | (
        (pl.col(S) == pl.col(S).shift(1)) & (pl.col("ts") > pl.col("ts").shift(1))
    )
    if not df.select(later.slice(1).all()).item():
        df = df.sort(S, "ts")
    same = (pl.col(S) == pl.col(S).shift(1)) & (pl.col("ts") == pl.col("ts").shift(1))
    dup = df.filter(same.fill_null(False))
    if dup.height:
        first = dup.row(0, named=True)
        raise FeatureInputError(
            f"duplicate bars reached the feature layer ({dup.height} rows, first: "
            f"{first['symbol']} at {first['ts']}); this is a bug upstream: validation must "
            "quarantine duplicates before features are built"
        )
    nan = df.filter(
        pl.any_horizontal(
            pl.col(c).is_null() | pl.col(c).is_nan()
            for c in ("open", "high", "low", "close", "volume")
        )
    )
    if nan.height:
        first = nan.row(0, named=True)
        raise FeatureInputError(
            f"{nan.height} bars have a missing or NaN price or volume (first: {first['symbol']} "
            f"at {first['ts']}); validation quarantines such bars, build features from "
            "validated bars"
        )
    needed = _helper_columns(registry) if registry is not None else None
    df = _kernel_columns(df, needed)
    if needed is None or needed & SESSION_HELPERS:
        df = _session_columns(df, config)
    return df


def _helper_columns(registry: FeatureRegistry) -> set[str]:
    """The helper columns (``_...``) that the registry's expressions read."""
    return {
        name for spec in registry for name in spec.expr().meta.root_names() if name.startswith("_")
    }


def _kernel_columns(df: pl.DataFrame, needed: set[str] | None) -> pl.DataFrame:
    """Path-dependent indicators from the numba kernels; only those ``needed`` (all if None).
    The kernels release the GIL, so they run side by side on a small thread pool."""

    def want(*names: str) -> bool:
        return needed is None or any(n in needed for n in names)

    starts = _starts(df[S])
    hi, low_, close = (df[c].to_numpy() for c in ("high", "low", "close"))
    jobs: dict[tuple[str, ...], Callable[[], object]] = {}
    if want("_kama_10"):
        jobs[("_kama_10",)] = lambda: kernels.kama(close, starts, 10, 2, 30)
    if want("_psar", "_psar_dir"):
        jobs[("_psar", "_psar_dir")] = lambda: kernels.psar(hi, low_, close, starts, 0.02, 0.2)
    if want("_supertrend", "_supertrend_dir"):

        def supertrend() -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
            atr10 = kernels.wilder_directional(hi, low_, close, starts, 10)[0]
            return kernels.supertrend(hi, low_, close, atr10, starts, 3.0)  # type: ignore[no-any-return]

        jobs[("_supertrend", "_supertrend_dir")] = supertrend
    if want(*WILDER_HELPERS):
        jobs[tuple(WILDER_HELPERS)] = lambda: kernels.wilder_directional(
            hi, low_, close, starts, 14
        )
    if want(*STOCH_HELPER):
        jobs[tuple(STOCH_HELPER)] = lambda: kernels.stochastic_k(hi, low_, close, starts, 14)
    if want("_aroon_high_25", "_aroon_low_25"):
        jobs[("_aroon_high_25",)] = lambda: kernels.bars_since_extreme(hi, starts, 25, True)
        jobs[("_aroon_low_25",)] = lambda: kernels.bars_since_extreme(low_, starts, 25, False)
    if want("_cci_md_20"):
        tp = df.select(to_polars(TYPICAL)).to_series()
        tp_values = tp.to_numpy()
        jobs[("_cci_md_20",)] = lambda: kernels.mean_abs_deviation(tp_values, starts, 20)
    if want("_hurst_128"):
        returns = df.select(to_polars(LOG_RETURN_FILLED)).to_series().to_numpy()
        jobs[("_hurst_128",)] = lambda: kernels.hurst_rs(returns, starts, 128)
    with ThreadPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1) or 1) as pool:
        futures = {names: pool.submit(job) for names, job in jobs.items()}
        cols: dict[str, pl.Series] = {}
        for names, future in futures.items():
            result = future.result()
            arrays = result if isinstance(result, tuple) else (result,)
            cols |= {name: pl.Series(a) for name, a in zip(names, arrays, strict=True)}
    if "_stoch_14" in cols:  # null, not NaN, before the window fills: as the polars window
        cols["_stoch_14"] = cols["_stoch_14"].fill_nan(None)
    return df.with_columns(_i=pl.int_range(pl.len()).over(S), **cols)


def _session_columns(df: pl.DataFrame, config: FeatureConfig) -> pl.DataFrame:
    tf = config.timeframe
    df = df.with_columns(session_date=session_dates_within_hours(pl.col("ts")))
    cal = sessions_between(config.calendar, df["session_date"].min(), df["session_date"].max())  # type: ignore[arg-type]
    df = df.join(cal.window(config.session), on="session_date", how="left")
    if df["start"].null_count():
        bad = df.filter(pl.col("start").is_null()).row(0, named=True)
        raise FeatureInputError(
            f"{bad['symbol']} has a bar at {bad['ts']} on no session of {config.calendar}; "
            "build features from validated bars"
        )
    day = [S, "session_date"]
    span = (pl.col("end") - pl.col("start")).dt.total_minutes()
    or_end = pl.col("reg_open") + pl.duration(minutes=OPENING_RANGE_MINUTES)
    in_or = (pl.col("ts") >= pl.col("reg_open")) & (pl.col("ts") < or_end)
    # Inside the opening range: the range so far; after it: the whole opening range; before it
    # (pre-market bars of an extended session): none yet.
    after_or = pl.col("ts") >= or_end
    or_high = (
        pl.when(in_or)
        .then(pl.when(in_or).then(pl.col("high")).cum_max().over(day))
        .when(after_or)
        .then(pl.col("high").filter(in_or).max().over(day))
    )
    or_low = (
        pl.when(in_or)
        .then(pl.when(in_or).then(pl.col("low")).cum_min().over(day))
        .when(after_or)
        .then(pl.col("low").filter(in_or).min().over(day))
    )
    tp = (pl.col("high") + pl.col("low") + pl.col("close")) / 3.0
    cum_v = pl.col("volume").cum_sum().over(day)
    vwap = pl.when(cum_v > 0).then((tp * pl.col("volume")).cum_sum().over(day) / cum_v)
    last_close = (
        df.group_by(day)
        .agg(pl.col("close").last().alias("_prev_session_close"))
        .sort(day)
        .with_columns(pl.col("_prev_session_close").shift(1).over(S))
    )
    df = df.join(last_close, on=day, how="left")
    bar_end = pl.col("ts") + pl.duration(minutes=tf.minutes)
    return df.with_columns(
        _tod_frac=(pl.col("ts") - pl.col("start")).dt.total_minutes() / span,
        _bars_since_open=((pl.col("ts") - pl.col("start")).dt.total_minutes() // tf.minutes).cast(
            pl.Float64
        ),
        _bars_to_close=((pl.col("end") - bar_end).dt.total_minutes() // tf.minutes).cast(
            pl.Float64
        ),
        _or_pos=pl.when(or_high == or_low)
        .then(0.5)
        .otherwise((pl.col("close") - or_low) / (or_high - or_low)),
        _gap=_ratio(pl.col("open").first().over(day), pl.col("_prev_session_close")) - 1.0,
        _vwap_dist=_ratio(pl.col("close"), vwap.fill_null(tp)) - 1.0,
    )


def _ratio(a: pl.Expr, b: pl.Expr) -> pl.Expr:
    """``a / b``, null where ``b`` is zero or missing."""
    return pl.when(b != 0).then(a / b).otherwise(pl.lit(None, pl.Float64))


def _mtf(df: pl.DataFrame, config: FeatureConfig, reg: FeatureRegistry) -> pl.DataFrame:
    """Join the context of the last closed 60-minute and daily bars to each base bar."""
    bars = df.select(S, "ts", "open", "high", "low", "close", "volume").with_columns(
        vwap=pl.lit(None, pl.Float64),
        trade_count=pl.lit(None, pl.Int64),
        bar_count=pl.lit(1, pl.Int32),
        flags=pl.lit(0, pl.Int32),
    )
    base = df.with_columns(_bar_end=pl.col("ts") + pl.duration(minutes=config.timeframe.minutes))
    contexts: list[tuple[pl.DataFrame, list[str]]] = []

    def higher(target: Timeframe) -> pl.DataFrame:
        # Only buckets whose window had closed by the last bar are built (aggregate_bars).
        return aggregate_bars(
            bars,
            source=config.timeframe,
            target=target,
            session=config.session,
            calendar=config.calendar,
            with_end=True,
        )

    if "mtf_60m_ret_1" in reg.names:
        hour = higher(Timeframe.parse("60m")).sort(S, "ts")
        hour = hour.with_columns(to_polars(e).alias(n) for n, e in HOURLY_CONTEXT.items())
        contexts.append((hour, list(HOURLY_CONTEXT)))
    day = higher(Timeframe.parse("1d")).sort(S, "ts")
    day = day.with_columns(to_polars(e).alias(n) for n, e in DAILY_CONTEXT.items())
    contexts.append((day, list(DAILY_CONTEXT)))
    out = base.sort("_bar_end")
    for frame, cols in contexts:
        right = frame.select(S, pl.col("end").alias("_ctx_end"), *cols).sort("_ctx_end")
        out = out.join_asof(
            right,
            left_on="_bar_end",
            right_on="_ctx_end",
            by=S,
            strategy="backward",
            check_sortedness=False,
        ).drop("_ctx_end")
    hourly = "mtf_60m_ret_1" in reg.names
    extra = [to_polars(e).alias(n) for n, e in BASE_CONTEXT.items() if hourly or "_60m_" not in n]
    return out.with_columns(extra).sort(S, "ts")


def _xs(df: pl.DataFrame) -> pl.DataFrame:
    """Cross-sectional features at each timestamp (defined for a universe of one, too)."""
    cols = []
    for base in XS_BASES:
        x = pl.col(base)
        n = x.count().over("ts")
        rank = (x.rank("average").over("ts") - 1.0) / (n - 1)
        cols.append(
            pl.when(x.is_null())
            .then(None)
            .when(n > 1)
            .then(rank)
            .otherwise(0.5)
            .alias(f"xs_rank_1_{base}")
        )
        sd = x.std().over("ts")
        cols.append(
            pl.when(x.is_null())
            .then(None)
            .when(sd > 0)
            .then((x - x.mean().over("ts")) / sd)
            .otherwise(0.0)
            .alias(f"xs_zscore_1_{base}")
        )
    r20 = pl.col("statistical_ret_20")
    cols.append((r20 - r20.mean().over("ts")).alias("xs_relstrength_20"))
    symbols = set(df[S].unique())
    df = df.with_columns(_r1=to_polars(RETURN_1))
    if "SPY" in symbols:
        index = df.filter(pl.col(S) == "SPY").select("ts", pl.col("_r1").alias("_idx"))
    else:
        index = df.group_by("ts").agg(pl.col("_r1").mean().alias("_idx"))
    df = df.join(index, on="ts", how="left").sort(S, "ts")
    return df.with_columns(cols).with_columns(xs_beta_60=to_polars(BETA_60))


def build_features(
    bars: pl.DataFrame, config: FeatureConfig, registry: FeatureRegistry | None = None
) -> pl.DataFrame:
    """The feature matrix: ``symbol``, ``ts`` and one column per registered feature, sorted by
    symbol and time. Features are null during their warm-up.

    Example: ``build_features(bars_15m, FeatureConfig(Timeframe.parse("15m")))``.
    """
    reg = registry or feature_registry(config)
    df = prepare(bars, config, reg)
    per_symbol = [s for s in reg if s.category not in ("mtf", "xs")]
    symbols = df[S]
    # One lazy query for every feature. polars computes common sub-expressions once, but not
    # those holding windows: the windows that features share (or read twice) are computed
    # first, once each, as temporary columns. The windows group by an integer code of the
    # (sorted) symbol, which polars partitions faster than strings; the names come back after.
    stages, memo = shared_windows([s.node for s in per_symbol if s.node is not None])
    lf = df.lazy().with_columns(pl.col(S).rle_id())
    for stage in stages:
        lf = lf.with_columns(**stage)
    df = lf.with_columns(
        pl.when(pl.col("_i") >= s.warmup)
        .then(to_polars(s.node, memo) if s.node is not None else s.expr())
        .alias(s.name)
        for s in per_symbol
    ).collect(engine="in-memory")
    df = df.drop(*(name for stage in stages for name in stage)).with_columns(symbols)
    if reg.in_category("mtf"):
        df = _mtf(df, config, reg)
    if reg.in_category("xs"):
        df = _xs(df)
    names = reg.names
    masked = [
        pl.when(pl.col("_i") >= reg[n].warmup).then(pl.col(n)).alias(n)
        if reg[n].category in ("mtf", "xs")
        else pl.col(n)
        for n in names
    ]
    return df.select(S, "ts", *masked)  # every stage keeps the (symbol, ts) order


def latest_features(
    recent_bars: pl.DataFrame, config: FeatureConfig, registry: FeatureRegistry | None = None
) -> pl.DataFrame:
    """Features of the newest bar of each symbol, rebuilt from its recent bars: a cold start
    that needs no state. The live path steps a :class:`~pipelines.features.FeatureStream`
    instead, which equals the batch matrix exactly and answers in milliseconds.

    ``recent_bars`` must hold ``registry.history_bars`` bars per symbol for every feature to be
    defined; the result then equals the batch matrix's row for that bar to 1e-9 relative for
    every feature that is not ``stateful`` (a recursion's seed differs with the history length).
    """
    matrix = build_features(recent_bars, config, registry)
    return matrix.group_by(S, maintain_order=True).last()
