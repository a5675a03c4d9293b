"""Training benchmarks on the regular-session bars of the shared 15-minute set (2 threads).

``--mode walk_forward``: the full walk-forward (features, labels, training set, the ``full``
plan) with its duration and this process's peak memory.
``--mode predict``: one bar of 50 symbols through a model and its transform, p99 latency.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import polars as pl

from bench.features import CONFIG, regular_bars
from pipelines.features import build_features
from pipelines.features.registry import CATEGORIES
from pipelines.features.transform import FeatureTransform
from pipelines.labels import BarrierConfig, label_triple_barrier, sample_weights
from pipelines.models.estimators import ModelConfig, train_classifier
from pipelines.models.inference import predict_bar
from pipelines.models.training import build_training_set, plan_for, train_walk_forward


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
    return {
        "training.walk_forward_s": round(seconds, 1),
        "training.peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "training.rows": data.height,
        "training.folds": len(result.metrics),
        "training.oos_auc": round(overall["auc"], 4),
        "training.oos_log_loss": round(overall["log_loss"], 4),
    }


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
    parser.add_argument("--mode", choices=("walk_forward", "predict"), required=True)
    parser.add_argument("--shared", type=Path, required=True)
    args = parser.parse_args()
    out = walk_forward(args.shared) if args.mode == "walk_forward" else predict(args.shared)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
