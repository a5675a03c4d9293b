"""Nested Optuna tuning: no trial ever reads a test row; studies in memory and shared by two
worker processes on Postgres."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import optuna
import polars as pl
import pytest

from pipelines.features import FeatureConfig, feature_registry
from pipelines.models.estimators import FittedModel, ModelConfig, train_classifier
from pipelines.models.splits import Fold, purged_kfold, walk_forward
from pipelines.models.tuning import TuningConfig, prepare_study, trials_taken, tune_fold
from pipelines.timeframes import Timeframe

CONFIG = FeatureConfig(Timeframe.parse("15m"))
FEATURES = [n for n in feature_registry(CONFIG).names if not n.startswith("mtf_")][:40]
ROOT = Path(__file__).resolve().parent.parent.parent
BASE = ModelConfig(
    "lightgbm", {"num_leaves": 7}, seed=1, num_boost_round=60, early_stopping_rounds=10
)
EMBARGO = timedelta(hours=4)


@pytest.fixture(scope="module")
def data(sample_data: pl.DataFrame) -> pl.DataFrame:
    return sample_data.with_columns(row=pl.int_range(pl.len(), dtype=pl.Int64))


def _folds(data: pl.DataFrame) -> list[Fold]:
    return walk_forward(
        data,
        train=timedelta(days=10),
        validation=timedelta(days=3),
        test=timedelta(days=4),
        embargo=EMBARGO,
    )


class RecordingTrainer:
    """train_classifier, recording the ``row`` of every frame a fit reads or predicts."""

    def __init__(self) -> None:
        self.rows: set[int] = set()

    def __call__(
        self, config: ModelConfig, train: pl.DataFrame, y: npt.NDArray[Any], **kw: Any
    ) -> FittedModel:
        self.rows |= set(train["row"].to_list())
        validation = kw.get("validation")
        if validation is not None:
            self.rows |= set(validation["row"].to_list())
        return train_classifier(config, train, y, **kw)


def forbidden_rows(data: pl.DataFrame, fold: Fold) -> set[int]:
    """A fold's test rows and every row whose label span touches a test span, or starts
    within the embargo after the test block (what purging removes)."""
    t0 = data["ts"].dt.epoch("us").to_numpy()
    t1 = data["t1"].dt.epoch("us").to_numpy()
    lo, hi = t0[fold.test].min(), t1[fold.test].max()
    emb = int(EMBARGO.total_seconds() * 1e6)
    near = ((t1 >= lo) & (t0 <= hi)) | ((t0 > hi) & (t0 <= hi + emb))
    return set(data["row"].to_numpy()[near].tolist())


def _tune(data: pl.DataFrame, fold: Fold, trainer: RecordingTrainer, trials: int = 3):  # type: ignore[no-untyped-def]
    config = TuningConfig(n_trials=trials, seed=1, max_rounds=40)
    return tune_fold(data, fold, base=BASE, features=FEATURES, config=config, trainer=trainer)


@pytest.mark.unit
def test_no_trial_reads_a_test_row_or_its_purge_zone(data: pl.DataFrame) -> None:
    folds = _folds(data)
    assert len(folds) >= 2
    for fold in folds:
        trainer = RecordingTrainer()
        _, study = _tune(data, fold, trainer)
        assert trials_taken(study) == 3
        assert trainer.rows, "the recorder saw no fit"
        seen_forbidden = trainer.rows & forbidden_rows(data, fold)
        assert not seen_forbidden, f"fold {fold.index}: trials read {len(seen_forbidden)} rows"
        # Everything read is the fold's own training and validation rows.
        assert trainer.rows <= set(fold.train.tolist()) | set(fold.validation.tolist())


@pytest.mark.unit
def test_trials_do_not_change_when_the_test_rows_do(data: pl.DataFrame) -> None:
    """The black-box proof: garbage in every test-window row changes no trial's score."""
    fold = _folds(data)[1]
    rng = np.random.default_rng(0)
    noisy = data.with_columns(
        pl.when(pl.col("row").is_in(list(forbidden_rows(data, fold))))
        .then(pl.lit(rng.normal(size=data.height)))
        .otherwise(pl.col(c))
        .alias(c)
        for c in FEATURES
    ).with_columns(
        y=pl.when(pl.col("row").is_in(fold.test.tolist())).then(1 - pl.col("y")).otherwise("y")
    )
    _, clean = _tune(data, fold, RecordingTrainer())
    _, dirty = _tune(noisy, fold, RecordingTrainer())
    assert [t.value for t in clean.trials] == [t.value for t in dirty.trials]


@pytest.mark.unit
def test_the_audit_catches_tuning_on_all_rows(data: pl.DataFrame) -> None:
    """The same audit on the old way of tuning (purged k-fold over every row, test windows
    included) finds the test rows it read: the boundary test above can fail."""
    fold = _folds(data)[1]
    trainer = RecordingTrainer()
    for cv in purged_kfold(data, n_splits=3, embargo=EMBARGO):
        trainer(BASE, data[cv.train], data["y"].to_numpy()[cv.train], features=FEATURES)
    assert trainer.rows & forbidden_rows(data, fold)


@pytest.mark.unit
def test_tuned_parameters_come_from_the_best_trial(data: pl.DataFrame) -> None:
    fold = _folds(data)[0]
    tuned, study = _tune(data, fold, RecordingTrainer(), trials=4)
    best = {k: v for k, v in study.best_trial.params.items() if k != "num_boost_round"}
    assert best and all(tuned.params[k] == v for k, v in best.items())
    assert 0.0 < study.best_value < 1.0


WORKER = textwrap.dedent("""
    import sys
    from datetime import timedelta
    import polars as pl
    from pipelines.models.estimators import ModelConfig
    from pipelines.models.splits import walk_forward
    from pipelines.models.tuning import TuningConfig, tune_fold
    data = pl.read_parquet(sys.argv[1])
    features = sys.argv[3].split(",")
    fold = walk_forward(data, train=timedelta(days=10), validation=timedelta(days=3),
                        test=timedelta(days=4))[0]
    config = TuningConfig(study_name="shared", n_trials=3, storage=sys.argv[2],
                          seed=int(sys.argv[4]), max_rounds=30)
    base = ModelConfig("lightgbm", {"num_leaves": 7}, seed=1, num_boost_round=30)
    tune_fold(data, fold, base=base, features=features, config=config, worker=sys.argv[4])
""")


@pytest.mark.integration
def test_two_workers_share_one_fold_study_on_postgres(
    data: pl.DataFrame, pg_database: str, tmp_path: Path
) -> None:
    from pipelines.models.tuning import fold_fingerprint

    path = tmp_path / "data.parquet"
    data.write_parquet(path)
    fold = _folds(data)[0]
    config = TuningConfig(study_name="shared", n_trials=3, max_rounds=30)
    base = ModelConfig("lightgbm", {"num_leaves": 7}, seed=1, num_boost_round=30)
    name = (
        f"shared-f{fold.index}-{fold_fingerprint(data, fold, FEATURES, base=base, config=config)}"
    )
    prepare_study(TuningConfig(study_name="shared", storage=pg_database), name)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(path), pg_database, ",".join(FEATURES), str(seed)],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    storage = optuna.storages.RDBStorage(
        pg_database.replace("postgresql://", "postgresql+psycopg://")
    )
    study = optuna.load_study(study_name=name, storage=storage)
    assert len(study.trials) == 6
    assert {t.user_attrs["worker"] for t in study.trials} == {"1", "2"}


@pytest.mark.unit
def test_trading_metric_is_maximised(data: pl.DataFrame) -> None:
    fold = _folds(data)[0]
    config = TuningConfig(n_trials=3, max_rounds=30, metric="trade_return")
    _, study = tune_fold(data, fold, base=BASE, features=FEATURES, config=config)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert abs(study.best_value) < 0.05


@pytest.mark.unit
def test_a_fold_that_cannot_be_tuned_is_skipped_like_an_untuned_one(data: pl.DataFrame) -> None:
    from pipelines.models.walk_forward import run_walk_forward

    folds = _folds(data)
    assert len(folds) >= 2
    one_class = np.zeros(data.height, dtype=bool)
    one_class[folds[0].validation] = True
    broken = data.with_columns(
        y=pl.when(pl.Series(one_class)).then(1).otherwise(pl.col("y")).cast(pl.Int8)
    )

    def tuner(d: pl.DataFrame, fold: Fold) -> tuple[ModelConfig, int]:
        tuned, study = _tune(d, fold, RecordingTrainer(), trials=2)
        return tuned, trials_taken(study)

    result = run_walk_forward(broken, folds, BASE, features=FEATURES, tuner=tuner)
    assert result.skipped == [
        f"fold {folds[0].index}: the validation set holds only class [1]"
        + ": a classifier needs both; widen the window or skip this fold"
    ]
    assert set(result.predictions["fold"].unique()) == {f.index for f in folds[1:]}
