"""The model strategy: bet sizing, caps, holding-period exits, through the real engine."""

from __future__ import annotations

from decimal import Decimal

import polars as pl
import pytest

from pipelines.backtest.broker import BrokerConfig
from pipelines.backtest.model_backtest import run_model_strategy
from pipelines.backtest.strategy import SizingConfig, bet_size

pytestmark = pytest.mark.unit


def test_bet_size_is_monotone_signed_and_dead_banded() -> None:
    assert bet_size(0.51, 0.02, 1.0) == 0.0
    assert bet_size(0.6, 0.02, 1.0) > bet_size(0.55, 0.02, 1.0) > 0
    assert bet_size(0.4, 0.02, 1.0) == pytest.approx(-bet_size(0.6, 0.02, 1.0))
    assert bet_size(0.99, 0.0, 0.5) == 0.5
    assert bet_size(float("nan"), 0.0, 1.0) == 0.0
    # Against the base rate: at the base rate no bet, whatever side of 0.5 it lies on.
    assert bet_size(0.55, 0.02, 1.0, p0=0.55) == 0.0
    assert bet_size(0.60, 0.02, 1.0, p0=0.55) > 0 > bet_size(0.50, 0.02, 1.0, p0=0.55)


def test_a_model_that_only_knows_the_base_rate_does_not_bet_on_the_market(
    sample_bars: pl.DataFrame,
) -> None:
    """Probabilities scattered around a 55% base rate (no skill): measured against 0.5 they are
    a long bet on nearly every bar (market beta); against the base rate, long and short in
    balance."""
    import numpy as np

    from pipelines.backtest.model_backtest import signal_volatility
    from pipelines.labels.triple_barrier import BarrierConfig

    bars = sample_bars.filter(pl.col("symbol").is_in(["AAPL", "MSFT", "JPM", "SPY", "QQQ"]))
    vol = signal_volatility(bars, BarrierConfig()).drop_nulls()
    rng = np.random.default_rng(3)
    signals = vol.with_columns(
        prob=pl.Series(np.clip(rng.normal(0.55, 0.03, vol.height), 0.01, 0.99)),
        base_rate=pl.lit(0.55),
    )

    def long_share(reference: str) -> float:
        sizing = SizingConfig(threshold=0.02, max_holding_bars=4, reference=reference)  # type: ignore[arg-type]
        result = run_model_strategy(
            bars, signals, sizing, cash=Decimal("1000000"), config=BrokerConfig()
        )
        held: dict[str, int] = {}
        opened = []  # fills that open or add to a position: the bets
        for f in result.ledger.fills:
            before = held.get(f.symbol, 0)
            held[f.symbol] = before + f.quantity
            if abs(held[f.symbol]) > abs(before):
                opened.append(f.quantity > 0)
        return sum(opened) / len(opened)

    assert long_share("half") > 0.8  # the disguised beta bet
    assert 0.35 < long_share("base_rate") < 0.65


def test_caps_and_holding_period_through_the_engine(sample_bars: pl.DataFrame) -> None:
    bars = sample_bars.filter(pl.col("symbol").is_in(["AAPL", "MSFT", "JPM"]))
    first = bars.filter(pl.col("ts") == bars["ts"].min())  # one strong signal each, at the start
    signals = first.select("symbol", "ts", prob=pl.lit(0.9), volatility=pl.lit(0.001))
    sizing = SizingConfig(max_position=0.05, max_gross=0.12, max_holding_bars=4, reference="half")
    result = run_model_strategy(
        bars, signals, sizing, cash=Decimal("1000000"), config=BrokerConfig()
    )
    fills = result.ledger.fills
    entries = [f for f in fills if f.quantity > 0]
    exits = [f for f in fills if f.quantity < 0]
    assert len(entries) == 3 and len(exits) == 3  # entered once, closed after the holding period
    gross = sum(f.quantity * float(f.price) for f in entries)
    assert gross <= 0.12 * 1_000_000 * 1.01  # the gross cap (priced at the next open)
    assert all(f.quantity * float(f.price) <= 0.05 * 1_000_000 * 1.01 for f in entries)
    assert result.ledger.positions == {"AAPL": 0, "MSFT": 0, "JPM": 0}


def test_the_gross_cap_counts_the_bets_already_held(sample_bars: pl.DataFrame) -> None:
    bars = sample_bars.filter(pl.col("symbol").is_in(["AAPL", "MSFT", "JPM"]))
    times = bars["ts"].unique().sort()
    first = bars.filter(pl.col("ts") == times[0], pl.col("symbol") != "JPM")
    later = bars.filter(pl.col("ts") == times[2], pl.col("symbol") == "JPM")
    signals = pl.concat([first, later]).select(
        "symbol", "ts", prob=pl.lit(0.9), volatility=pl.lit(0.001)
    )
    # Two bets of 5% each fill the 6% cap (scaled to 3% each) while they are held for eight
    # bars; JPM's signal two bars later finds no room: it is not traded, and not left open.
    sizing = SizingConfig(max_position=0.05, max_gross=0.06, max_holding_bars=8, reference="half")
    result = run_model_strategy(
        bars, signals, sizing, cash=Decimal("1000000"), config=BrokerConfig()
    )
    entries = [f for f in result.ledger.fills if f.quantity > 0]
    assert sorted(f.symbol for f in entries) == ["AAPL", "MSFT"]
    gross = sum(f.quantity * float(f.price) for f in entries)  # priced at the next open
    assert 0.05 * 1_000_000 < gross <= 0.06 * 1_000_000 * 1.01
    assert result.ledger.positions.get("JPM", 0) == 0
