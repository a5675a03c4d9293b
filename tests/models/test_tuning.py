"""Optuna tuning on purged CV, in memory and shared by two worker processes on Postgres."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import polars as pl
import pytest

from pipelines.features import FeatureConfig, feature_registry
from pipelines.models.tuning import TuningConfig, prepare_study, trials_taken, tune
from pipelines.timeframes import Timeframe

CONFIG = FeatureConfig(Timeframe.parse("15m"))
FEATURES = [n for n in feature_registry(CONFIG).names if not n.startswith("mtf_")][:40]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(sample_data: pl.DataFrame) -> pl.DataFrame:
    return sample_data


@pytest.mark.unit
def test_in_memory_study_is_seeded_and_counts_trials(data: pl.DataFrame) -> None:
    config = TuningConfig(n_trials=4, n_splits=3, seed=1, max_rounds=60)
    a = tune(data, features=FEATURES, kind="lightgbm", config=config)
    b = tune(data, features=FEATURES, kind="lightgbm", config=config)
    assert trials_taken(a) == 4
    assert [t.params for t in a.trials] == [t.params for t in b.trials]
    assert 0.0 < a.best_value < 1.0


WORKER = textwrap.dedent("""
    import sys
    import polars as pl
    from pipelines.models.tuning import TuningConfig, tune
    data = pl.read_parquet(sys.argv[1])
    features = sys.argv[3].split(",")
    config = TuningConfig(study_name="shared", n_trials=3, n_splits=3, storage=sys.argv[2],
                          seed=int(sys.argv[4]), max_rounds=40)
    tune(data, features=features, kind="lightgbm", config=config, worker=sys.argv[4])
""")


@pytest.mark.integration
def test_two_workers_share_one_study_on_postgres(
    data: pl.DataFrame, pg_database: str, tmp_path: Path
) -> None:
    path = tmp_path / "data.parquet"
    data.tail(4000).write_parquet(path)
    url = pg_database
    prepare_study(TuningConfig(study_name="shared", storage=url))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(path), url, ",".join(FEATURES), str(seed)],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    storage = optuna.storages.RDBStorage(url.replace("postgresql://", "postgresql+psycopg://"))
    study = optuna.load_study(study_name="shared", storage=storage)
    assert len(study.trials) == 6
    assert {t.user_attrs["worker"] for t in study.trials} == {"1", "2"}


@pytest.mark.unit
def test_trading_metric_is_maximised(data: pl.DataFrame) -> None:
    study = tune(
        data,
        features=FEATURES,
        kind="lightgbm",
        config=TuningConfig(n_trials=3, n_splits=3, max_rounds=40, metric="trade_return"),
    )
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert abs(study.best_value) < 0.05
