"""Small real slices of the bundled sample for the portfolio tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import polars as pl
import pytest

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"


def sample_closes(folder: str, symbols: list[str]) -> pl.DataFrame:
    """``symbol``, ``ts``, ``close`` of ``symbols`` from ``data/sample/<folder>`` (the vendor
    CSVs as they are), in time order."""
    suffix = folder.removeprefix("eqker_")
    frames = [
        pl.read_csv(SAMPLE / folder / f"{s}_{suffix}.csv", try_parse_dates=True).select(
            pl.lit(s).alias("symbol"),
            pl.col("timestamp").cast(pl.Datetime("us")).alias("ts"),
            "close",
        )
        for s in symbols
    ]
    return pl.concat(frames).sort("ts", "symbol")


def dense_returns(frame: pl.DataFrame, symbols: list[str]) -> npt.NDArray[np.float64]:
    """``[T, k]`` simple close-to-close returns of the bar times every symbol has."""
    wide = frame.pivot(on="symbol", index="ts", values="close").sort("ts").drop_nulls()
    closes = wide.select(symbols).to_numpy()
    out: npt.NDArray[np.float64] = closes[1:] / closes[:-1] - 1.0
    return out


DAILY = ["AAPL", "GLD", "JPM", "SPY", "TSLA", "XLP"]


@pytest.fixture(scope="session")
def daily_frame() -> pl.DataFrame:
    return sample_closes("eqker_daily", DAILY)


@pytest.fixture(scope="session")
def daily_returns(daily_frame: pl.DataFrame) -> npt.NDArray[np.float64]:
    """The last 200 daily returns of six sample symbols (2018-2019)."""
    return dense_returns(daily_frame, DAILY)[-200:]
