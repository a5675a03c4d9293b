"""Trials in an MLflow experiment: counted once each, and a run left half written by a crash
is not a trial (the trial is recorded again)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipelines.backtest.trials import MlflowTrialLog, Trial

pytestmark = pytest.mark.unit
NOW = datetime(2026, 1, 5, tzinfo=UTC)


def _trial(threshold: float, seed: int) -> Trial:
    days = [date(2024, 1, 2) + timedelta(days=i) for i in range(20)]
    ret = np.random.default_rng(seed).normal(0, 0.01, 20)
    return Trial(
        f"t={threshold}",
        {"threshold": threshold},
        "run-1",
        pl.DataFrame({"date": days, "ret": ret}),
    )


def test_trials_count_once_and_a_crashed_run_is_not_one(tmp_path: Path) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log = MlflowTrialLog(uri, "trials")
    a, b = _trial(0.02, 1), _trial(0.05, 2)
    assert sorted(log.record("fam", [a, b], as_of=NOW)) == pytest.approx(
        sorted([a.sharpe, b.sharpe])
    )
    assert len(log.record("fam", [a, b], as_of=NOW)) == 2  # the same trials again: N stays
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("trials")
    assert exp is not None
    # A crash after the run was created: tagged, never finished, no Sharpe.
    c = _trial(0.10, 3)
    client.create_run(exp.experiment_id, tags={"family": "fam", "trial_key": c.key})
    assert len(log.record("fam", [a, b], as_of=NOW)) == 2
    sharpes = log.record("fam", [c], as_of=NOW)  # recorded again, in full this time
    assert sorted(sharpes) == pytest.approx(sorted([a.sharpe, b.sharpe, c.sharpe]))


def test_the_basis_of_trials_is_the_forecasts_not_the_run() -> None:
    from pipelines.backtest.trials import predictions_basis

    ts = [datetime(2024, 1, 2, 15, tzinfo=UTC), datetime(2024, 1, 2, 15, 15, tzinfo=UTC)]
    forecasts = pl.DataFrame({"symbol": ["A", "B"], "ts": ts, "prob": [0.51, 0.47], "fold": [0, 0]})
    again = forecasts.reverse().with_columns(fold=pl.lit(3))  # other rows' order, other columns
    other = forecasts.with_columns(prob=pl.Series([0.51, 0.48]))
    assert predictions_basis(forecasts) == predictions_basis(again)
    assert predictions_basis(forecasts) != predictions_basis(other)
