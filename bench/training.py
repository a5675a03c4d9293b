"""Training benchmarks on the regular-session bars of the shared 15-minute set (2 threads).

``--mode walk_forward``: the full walk-forward (features, labels, training set, the ``full``
plan) with its duration, this process's peak memory and its out-of-sample scores with
session-clustered standard errors.
``--mode tuning``: nested tuning on two folds, with every row a trial read recorded: how many
lie in a test window or its purge zone (must be 0).
``--mode validity``: the positive control (a planted feature of known AUC among all features,
through the backtest with costs; then inverted out of sample), the block-shuffled labels'
AUC, and what switching the purge off gains on block-shuffled labels.
``--mode predict``: one bar of 50 symbols through a model and its transform, p99 latency.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from bench.features import CONFIG, regular_bars
from pipelines.backtest.broker import BrokerConfig, CostModel
from pipelines.backtest.model_backtest import Market, sizing_with_label_exits
from pipelines.backtest.strategy import SizingConfig
from pipelines.features import build_features
from pipelines.features.registry import CATEGORIES
from pipelines.features.transform import FeatureTransform
from pipelines.labels import BarrierConfig, label_triple_barrier, sample_weights
from pipelines.models.estimators import ModelConfig, train_classifier
from pipelines.models.evaluation import auc_score, session_clusters
from pipelines.models.inference import predict_bar
from pipelines.models.promotion import GateConfig, skill_gate, skill_scores
from pipelines.models.splits import walk_forward as walk_forward_split
from pipelines.models.training import build_training_set, folds_for, plan_for, train_walk_forward
from pipelines.models.tuning import TuningConfig, trials_taken, tune_fold
from pipelines.models.validity import leak_canary, positive_control

TARGET_AUC = 0.60
CANARY_SYMBOLS = ["AAPL", "MSFT", "JPM", "XOM", "INTC", "NVDA"]
CANARY_MODEL = ModelConfig(
    "lightgbm",
    {"learning_rate": 0.1, "num_leaves": 15, "min_data_in_leaf": 50},
    seed=5,
    num_boost_round=30,
    early_stopping_rounds=10,
)


def dataset(shared: Path) -> tuple[pl.DataFrame, list[str]]:
    bars = regular_bars(shared)
    matrix = build_features(bars, CONFIG)
    labels = sample_weights(label_triple_barrier(bars, BarrierConfig()).labels, bars)
    data = build_training_set(matrix, labels)
    features = [c for c in data.columns if c.split("_", 1)[0] in CATEGORIES]
    return data, features


def walk_forward(shared: Path) -> dict[str, object]:
    data, features = dataset(shared)
    t0 = time.perf_counter()
    result = train_walk_forward(data, plan_for("full"), features)
    seconds = time.perf_counter() - t0
    overall = result.overall()
    pooled = auc_score(
        result.predictions["y"].to_numpy(),
        result.predictions["prob"].to_numpy(),
        session_clusters(result.predictions["ts"]),
    )
    skill, auc = skill_scores(result.predictions)
    verdict = skill_gate(result.predictions, GateConfig())
    return {
        "training.walk_forward_s": round(seconds, 1),
        "training.peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "training.rows": data.height,
        "training.folds": len(result.records),
        "training.oos_auc": round(auc.value, 4),
        "training.oos_auc_se": round(auc.se, 4),
        "training.oos_auc_pooled": round(pooled.value, 4),
        "training.oos_auc_pooled_se": round(pooled.se, 4),
        "training.oos_log_loss": round(overall["log_loss"], 4),
        # nats per row; a few millionths either way, so significant figures, not decimals
        "training.oos_log_loss_skill": float(f"{skill.value:.3g}"),
        "training.oos_log_loss_skill_se": float(f"{skill.se:.3g}"),
        "training.oos_log_loss_skill_z": round(skill.z, 2),
        "training.gate_passed": verdict.passed,
    }


class _Recorder:
    """train_classifier, recording the row numbers of every frame a fit reads."""

    def __init__(self) -> None:
        self.rows: set[int] = set()

    def __call__(self, config: ModelConfig, train: pl.DataFrame, y: Any, **kw: Any) -> Any:
        self.rows |= set(train["row"].to_list())
        if kw.get("validation") is not None:
            self.rows |= set(kw["validation"]["row"].to_list())
        return train_classifier(config, train, y, **kw)


def tuning(shared: Path) -> dict[str, object]:
    data, features = dataset(shared)
    data = data.with_columns(row=pl.int_range(pl.len(), dtype=pl.Int64))
    plan = plan_for("full")
    folds = folds_for(data, plan)
    t0_us = data["ts"].dt.epoch("us").to_numpy()
    t1_us = data["t1"].dt.epoch("us").to_numpy()
    emb = int(plan.embargo.total_seconds() * 1e6)
    seen_in_test, trials = 0, 0
    t0 = time.perf_counter()
    for fold in (folds[0], folds[len(folds) // 2]):
        recorder = _Recorder()
        config = TuningConfig(n_trials=3, seed=0, max_rounds=200)
        _, study = tune_fold(
            data, fold, base=plan.model, features=features, config=config, trainer=recorder
        )
        trials += trials_taken(study)
        lo, hi = t0_us[fold.test].min(), t1_us[fold.test].max()
        near = ((t1_us >= lo) & (t0_us <= hi)) | ((t0_us > hi) & (t0_us <= hi + emb))
        seen_in_test += len(recorder.rows & set(np.flatnonzero(near).tolist()))
    return {
        "training.tuning_rows_in_test": seen_in_test,
        "training.tuning_trials_audited": trials,
        "training.tuning_s": round(time.perf_counter() - t0, 1),
    }


def validity(shared: Path) -> dict[str, object]:
    data, features = dataset(shared)
    bars = regular_bars(shared)
    plan = plan_for("full")
    model = replace(plan.model, num_boost_round=400)
    barriers = BarrierConfig()
    sizing = sizing_with_label_exits(SizingConfig(threshold=0.02, flat_at_close=True), barriers)
    costs = CostModel(
        slippage_bps=1.0,
        half_spread_bps=1.0,
        impact_k=0.1,
        commission_per_share=Decimal("0.005"),
        commission_min=Decimal("1"),
        borrow_bps=30.0,
    )
    t0 = time.perf_counter()
    folds = folds_for(data, plan)
    out: dict[str, object] = {"validity.planted_auc_target": TARGET_AUC}
    for flipped in (False, True):
        control = positive_control(
            bars,
            data,
            folds,
            model,
            features=features,
            target_auc=TARGET_AUC,
            seed=1,
            flipped=flipped,
            sizing=sizing,
            broker=BrokerConfig(costs, participation=0.05, max_leverage=1.0),
            barriers=barriers,
            market=Market(15),
        )
        key = "validity.planted_flip" if flipped else "validity.planted"
        out[f"{key}_auc"] = round(control.auc.value, 4)
        out[f"{key}_auc_se"] = round(control.auc.se, 4)
        out[f"{key}_pnl_usd"] = round(control.pnl_usd, 2)
        out[f"{key}_fills"] = control.fills
    out["validity.planted_feature_auc"] = round(control.planted_auc.value, 4)
    shuffled = leak_canary(data, lambda d: folds_for(d, plan), model, features=features, seeds=(1,))
    out["validity.block_shuffle_auc"] = round(shuffled.auc.value, 4)
    out["validity.block_shuffle_auc_se"] = round(shuffled.auc.se, 4)
    few = data.filter(pl.col("symbol").is_in(CANARY_SYMBOLS))
    gains = {}
    for purge in (True, False):
        canary = leak_canary(
            few,
            lambda d, p=purge: walk_forward_split(  # type: ignore[misc]
                d, train=26 * 20, validation=0, test=26, embargo=plan.embargo, purge_spans=p
            ),
            CANARY_MODEL,
            features=[f for f in features if not f.startswith("xs_")][:24],
        )
        gains[purge] = canary.auc
    out["validity.purged_shuffle_auc"] = round(gains[True].value, 4)
    out["validity.purge_off_auc_gain"] = round(gains[False].value - gains[True].value, 4)
    out["validity.purge_off_auc_z"] = round(gains[False].z, 2)
    out["validity.seconds"] = round(time.perf_counter() - t0, 1)
    return out


def predict(shared: Path) -> dict[str, object]:
    data, features = dataset(shared)
    train = data.filter(pl.col("ts") < data["ts"].quantile(0.8))  # type: ignore[operator]
    transform = FeatureTransform.fit(train, features)
    model = train_classifier(
        ModelConfig("lightgbm", {"num_leaves": 31}, num_boost_round=300),
        transform.apply(train),
        train["y"].to_numpy(),
        features=features,
    )
    last = data.group_by("symbol", maintain_order=True).last()
    extra = last.head(50 - last.height).with_columns(pl.col("symbol") + ".B")
    bar = pl.concat([last, extra]).select("symbol", "ts", *features)
    expected = model.predict_proba(transform.apply(bar))
    assert np.allclose(predict_bar(model, bar, transform=transform), expected)
    timings = []
    for _ in range(2000):
        t0 = time.perf_counter()
        predict_bar(model, bar, transform=transform)
        timings.append((time.perf_counter() - t0) * 1000)
    return {
        "predict.symbols": bar.height,
        "predict.p50_ms_50_symbols": round(float(np.percentile(timings[100:], 50)), 3),
        "predict.p99_ms_50_symbols": round(float(np.percentile(timings[100:], 99)), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    modes = {
        "walk_forward": walk_forward,
        "tuning": tuning,
        "validity": validity,
        "predict": predict,
    }
    parser.add_argument("--mode", choices=tuple(modes), required=True)
    parser.add_argument("--shared", type=Path, required=True)
    args = parser.parse_args()
    print(json.dumps(modes[args.mode](args.shared)))


if __name__ == "__main__":
    main()
