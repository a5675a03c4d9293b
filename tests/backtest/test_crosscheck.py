"""The external cross-check in `make test`: the crossover gives the same closed trades and PnL
to the cent in our engine and in backtesting.py (the benchmark environment, which `make test`
builds), on the bundled sample and on six symbols of the shared 15-minute set."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from tests.conftest import shared_av_bars

pytestmark = pytest.mark.integration
BENCH_PYTHON = Path(__file__).resolve().parents[2] / "bench" / ".venv" / "bin" / "python"


@pytest.fixture(scope="module")
def bench_python() -> Path:
    if not BENCH_PYTHON.exists():
        pytest.skip(f"needs the benchmark environment ({BENCH_PYTHON}); `make test` builds it")
    return BENCH_PYTHON


def _check(bars: pl.DataFrame, bench_python: Path, tmp_path: Path) -> None:
    from bench.crosscheck import cross_check

    result = cross_check(bars, bench_python, tmp_path / "bars.parquet")
    assert result["backtest.reference_trades"] > 50  # type: ignore[operator]
    assert result["backtest.differing_trades"] == 0
    assert result["backtest.total_pnl_diff_usd"] < 0.01  # type: ignore[operator]
    assert result["backtest.matches_reference"] is True


def test_sample_matches_backtesting_py(
    sample_bars: pl.DataFrame, bench_python: Path, tmp_path: Path
) -> None:
    _check(sample_bars, bench_python, tmp_path)


def test_shared_data_matches_backtesting_py(bench_python: Path, tmp_path: Path) -> None:
    bars = shared_av_bars(["AAPL", "JPM", "XOM", "SPY", "NVDA", "KO"])
    if bars is None:
        pytest.skip("needs the shared 15-minute set in ../shared/data (absent here)")
    _check(bars, bench_python, tmp_path)
