"""Triple-barrier labels and sample weights against plain reference loops on real bars."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.labels import BarrierConfig, label_triple_barrier, meta_labels, sample_weights

pytestmark = pytest.mark.unit


def reference_labels(
    bars: pl.DataFrame, config: BarrierConfig, sides: dict | None = None
) -> pl.DataFrame:  # type: ignore[type-arg]
    """The obvious loop over events, one bar at a time."""
    out = []
    for (symbol,), g in bars.sort("symbol", "ts").group_by("symbol", maintain_order=True):
        rows = g.to_dicts()
        n = config.volatility_window
        vols: list[float] = []
        atr = 0.0
        for i, r in enumerate(rows):
            if i == 0:
                tr = r["high"] - r["low"]
                atr = tr  # Wilder's smoothing, seeded at the first bar
            else:
                pc = rows[i - 1]["close"]
                tr = max(r["high"], pc) - min(r["low"], pc)
                atr = atr + (tr - atr) / n
            vols.append(atr / r["close"])
        days = [(r["ts"] - timedelta(hours=5)).date() for r in rows]
        for i, r in enumerate(rows):
            side = (sides or {}).get((symbol, r["ts"]), 1)
            vol = vols[i]
            horizon = i + config.max_holding_bars
            last_in_session = max(j for j in range(i, len(rows)) if days[j] == days[i])
            vert = min(horizon, last_in_session) if config.cut_at_session_close else horizon
            complete = (
                (last_in_session < len(rows) - 1 or horizon <= len(rows) - 1)
                if config.cut_at_session_close
                else horizon <= len(rows) - 1
            )
            vert = min(vert, len(rows) - 1)
            if vert <= i or not vol > 0:
                continue
            entry = r["close"]
            up_m = config.profit_take if side > 0 else config.stop_loss
            dn_m = config.stop_loss if side > 0 else config.profit_take
            up, dn = entry * (1 + up_m * vol), entry * (1 - dn_m * vol)
            hit, exit_i, price = 0, vert, rows[vert]["close"]
            for t in range(i + 1, vert + 1):
                b = rows[t]
                tu, td = b["high"] >= up, b["low"] <= dn
                if not (tu or td):
                    continue
                stop = td if side > 0 else tu
                if stop:
                    hit, level = -1, (dn if side > 0 else up)
                    gapped = b["open"] < dn if side > 0 else b["open"] > up
                else:
                    hit, level = 1, (up if side > 0 else dn)
                    gapped = b["open"] > up if side > 0 else b["open"] < dn
                price, exit_i = (b["open"] if gapped else level), t
                break
            if not complete and hit == 0:
                continue
            ret = side * (price / entry - 1)
            label = hit if hit else (0 if ret == 0 else int(math.copysign(1, ret)))
            out.append(
                {
                    "symbol": symbol,
                    "ts": r["ts"],
                    "t1": rows[exit_i]["ts"],
                    "label": label,
                    "ret": ret,
                }
            )
    return pl.DataFrame(
        out,
        schema={
            "symbol": pl.String,
            "ts": pl.Datetime("us", "UTC"),
            "t1": pl.Datetime("us", "UTC"),
            "label": pl.Int8,
            "ret": pl.Float64,
        },
    ).sort("symbol", "ts")


@pytest.fixture(scope="module")
def bars(sample_bars: pl.DataFrame) -> pl.DataFrame:
    return sample_bars.filter(pl.col("symbol").is_in(["AAPL", "TSLA", "VIX", "GLD"]))


@pytest.mark.parametrize(
    "config",
    [
        BarrierConfig(),
        BarrierConfig(
            profit_take=1.0, stop_loss=3.0, max_holding_bars=40, cut_at_session_close=False
        ),
        BarrierConfig(profit_take=0.5, stop_loss=0.5, max_holding_bars=4),
    ],
)
def test_fast_labels_equal_the_reference_loop(bars: pl.DataFrame, config: BarrierConfig) -> None:
    fast = label_triple_barrier(bars, config).labels.sort("symbol", "ts")
    slow = reference_labels(bars, config)
    assert fast.select("symbol", "ts", "t1", "label").equals(
        slow.select("symbol", "ts", "t1", "label")
    )
    np.testing.assert_allclose(fast["ret"].to_numpy(), slow["ret"].to_numpy(), rtol=1e-12)


def test_short_side_and_meta_labels(bars: pl.DataFrame) -> None:
    events = bars.select("symbol", "ts").with_columns(
        side=pl.when(pl.int_range(pl.len()) % 3 == 0).then(-1).otherwise(1).cast(pl.Int8)
    )
    sides = {(r["symbol"], r["ts"]): r["side"] for r in events.iter_rows(named=True)}
    config = BarrierConfig(profit_take=2.0, stop_loss=1.0)
    fast = label_triple_barrier(bars, config, events=events).labels.sort("symbol", "ts")
    slow = reference_labels(bars, config, sides)
    assert fast.select("symbol", "ts", "t1", "label").equals(
        slow.select("symbol", "ts", "t1", "label")
    )
    meta = meta_labels(fast)
    assert ((meta["meta_label"] == 1) == (meta["ret"] > 0)).all()
    assert set(meta["side"].unique()) == {-1, 1}


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(k=st.integers(min_value=0, max_value=3000), hold=st.integers(min_value=1, max_value=30))
def test_no_label_reads_past_its_vertical_barrier(bars: pl.DataFrame, k: int, hold: int) -> None:
    config = BarrierConfig(max_holding_bars=hold, cut_at_session_close=False)
    full = label_triple_barrier(bars, config).labels
    event = full.row(k % full.height, named=True)
    sym = bars.filter(pl.col("symbol") == event["symbol"]).sort("ts")
    i = sym["ts"].to_list().index(event["ts"])
    vertical_ts = sym["ts"][min(i + hold, sym.height - 1)]
    assert event["t1"] <= vertical_ts
    # Remove every bar after the vertical barrier: the label must not change.
    cut = bars.filter((pl.col("symbol") != event["symbol"]) | (pl.col("ts") <= vertical_ts))
    again = label_triple_barrier(cut, config).labels.filter(
        (pl.col("symbol") == event["symbol"]) & (pl.col("ts") == event["ts"])
    )
    assert again.height == 1
    assert again.row(0, named=True)["label"] == event["label"]
    assert again.row(0, named=True)["t1"] == event["t1"]


def test_bad_events_are_refused(bars: pl.DataFrame) -> None:
    with pytest.raises(ValueError, match="not at a bar"):
        label_triple_barrier(
            bars,
            BarrierConfig(),
            events=pl.DataFrame({"symbol": ["AAPL"], "ts": [bars["ts"][0] + timedelta(minutes=1)]}),
        )
    with pytest.raises(ValueError, match="duplicate"):
        label_triple_barrier(pl.concat([bars, bars.head(1)]), BarrierConfig())
    with pytest.raises(ValueError, match="positive"):
        BarrierConfig(profit_take=0)


def reference_weights(labels: pl.DataFrame, bars: pl.DataFrame) -> list[tuple[float, float]]:
    rows = bars.sort("symbol", "ts").to_dicts()
    pos = {(r["symbol"], r["ts"]): i for i, r in enumerate(rows)}
    spans = [
        (pos[(r["symbol"], r["ts"])], pos[(r["symbol"], r["t1"])])
        for r in labels.iter_rows(named=True)
    ]
    out = []
    for a, b in spans:
        inv, attr = [], 0.0
        for t in range(a + 1, b + 1):
            c = sum(1 for x, y in spans if x < t <= y)
            inv.append(1.0 / c)
            attr += math.log(rows[t]["close"] / rows[t - 1]["close"]) / c
        out.append((sum(inv) / len(inv), abs(attr)))
    return out


def test_sample_weights_equal_the_reference(bars: pl.DataFrame) -> None:
    small = (
        bars.filter(pl.col("symbol").is_in(["AAPL", "VIX"]))
        .group_by("symbol", maintain_order=True)
        .head(120)
    )
    labels = label_triple_barrier(small, BarrierConfig(max_holding_bars=8)).labels
    weighted = sample_weights(labels, small, decay=0.25)
    ref = reference_weights(labels, small)
    np.testing.assert_allclose(weighted["uniqueness"].to_numpy(), [u for u, _ in ref], rtol=1e-12)
    attribution = np.array([a for _, a in ref])
    np.testing.assert_allclose(
        weighted["weight_return"].to_numpy(), attribution * len(ref) / attribution.sum(), rtol=1e-9
    )
    decay = weighted.sort("t1")["weight_decay"]
    assert decay[-1] == pytest.approx(1.0) and decay.min() >= 0.25 - 1e-12
    assert decay.is_sorted()
