"""Why the full walk-forward scores at or below chance: a reproducible diagnosis.

Runs the ``full`` plan's walk-forward on the regular-session bars of the shared 15-minute set
(the same data and recipe as ``make bench BENCH=training``), then looks for a bug first and a
property of the data second:

1. Bugs. Does ``y = 1`` mean the price went up (checked against forward returns recomputed from
   the bars, independently of the labeller)? Are the features point in time (rebuilt on bars cut
   at a date, nothing at or before the cut may change)? Does the OOS frame carry the labels of
   the rows it predicts?
2. Per fold: base rates (training, validation, test), mean forecast, the model's AUC in sample
   (its own training rows), on validation and out of sample, with session-clustered errors.
3. Pooled against within-fold AUC: a forecast whose level moves between folds can lose pooled
   AUC that no fold's ranking lost.
4. Per symbol: the six symbols of the bench canary, and every symbol's z-score.
5. Per feature family: each feature's univariate AUC in the fold's training rows against its
   test rows. A stable relation keeps its sign; a regime reversal flips it.

Run from the repository root (about ten minutes on two cores)::

    .venv/bin/python docs/research/anti_skill.py --shared ../shared/data

Writes ``docs/research/figures/*.png`` and ``docs/research/anti_skill_results.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import polars as pl

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.features import CONFIG, regular_bars  # noqa: E402
from pipelines.features import build_features  # noqa: E402
from pipelines.features.registry import CATEGORIES  # noqa: E402
from pipelines.labels import BarrierConfig, label_triple_barrier, sample_weights  # noqa: E402
from pipelines.models.evaluation import auc_score, session_clusters  # noqa: E402
from pipelines.models.promotion import skill_scores  # noqa: E402
from pipelines.models.training import (  # noqa: E402
    build_training_set,
    folds_for,
    plan_for,
    train_walk_forward,
)
from pipelines.models.walk_forward import Calibrator  # noqa: E402

SYMBOLS = ["AAPL", "MSFT", "JPM", "XOM", "INTC", "NVDA"]
DATA_FILE = "us_equities_15min_2020_2022_av.parquet"


def fast_auc(y: np.ndarray, x: np.ndarray) -> float:
    """Mann-Whitney AUC of ``x`` for binary ``y`` (ties one half), rows with NaN ``x`` dropped."""
    ok = ~np.isnan(x)
    y, x = y[ok], x[ok]
    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(x.size)
    # Average ranks over ties.
    edges = np.flatnonzero(np.diff(xs)) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [xs.size]])
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def label_checks(bars: pl.DataFrame, data: pl.DataFrame) -> dict[str, Any]:
    """Does ``y`` mean "up"? Forward close-to-close returns recomputed from the bars."""
    close = bars.select("symbol", "ts", "close")
    fwd = (
        data.select("symbol", "ts", "t1", "y", "label", "ret", "barrier")
        .join(close.rename({"close": "c0"}), on=["symbol", "ts"])
        .join(close.rename({"ts": "t1", "close": "c1"}), on=["symbol", "t1"])
    )
    fwd = fwd.with_columns(r=pl.col("c1") / pl.col("c0") - 1.0)
    y = fwd["y"].to_numpy()
    r = fwd["r"].to_numpy()
    return {
        "rows_checked": fwd.height,
        "rows_in_training_set": data.height,
        "share_up_given_y1": float(np.mean(r[y == 1] > 0)),
        "share_up_given_y0": float(np.mean(r[y == 0] > 0)),
        "mean_fwd_ret_y1_bp": float(np.mean(r[y == 1]) * 1e4),
        "mean_fwd_ret_y0_bp": float(np.mean(r[y == 0]) * 1e4),
        "label_ret_sign_agree": float(
            np.mean(np.sign(fwd["ret"].to_numpy()) == np.sign(fwd["label"].to_numpy()))
        ),
        "base_rate": float(np.mean(y)),
    }


def point_in_time_check(bars: pl.DataFrame, cut: datetime) -> dict[str, Any]:
    """Features rebuilt on bars up to ``cut`` must equal the full build at or before ``cut``."""
    full = build_features(bars, CONFIG)
    part = build_features(bars.filter(pl.col("ts") <= cut), CONFIG)
    a = full.filter(pl.col("ts") <= cut).sort("symbol", "ts")
    b = part.sort("symbol", "ts")
    cols = [c for c in a.columns if c.split("_", 1)[0] in CATEGORIES]
    worst = 0.0
    for c in cols:
        x, z = a[c].to_numpy().astype(float), b[c].to_numpy().astype(float)
        both = ~(np.isnan(x) & np.isnan(z))
        if (np.isnan(x[both]) != np.isnan(z[both])).any():
            worst = float("inf")
            break
        d = np.abs(x[both] - z[both])
        worst = max(worst, float(np.nanmax(d)) if d.size else 0.0)
    return {"cut": cut.isoformat(), "rows": a.height, "features": len(cols), "max_abs_diff": worst}


def platt_free(raw_va: np.ndarray, y_va: np.ndarray, raw_te: np.ndarray) -> tuple[float, Any]:
    """Platt scaling with its slope left free (the recipe before the slope was floored at 0):
    its slope, and its forecast of the test rows."""
    from sklearn.linear_model import LogisticRegression

    def logit(p: np.ndarray) -> np.ndarray:
        q = np.clip(p, 1e-9, 1 - 1e-9)
        return np.log(q / (1 - q)).reshape(-1, 1)

    lr = LogisticRegression(C=1e6, max_iter=1000).fit(logit(raw_va), y_va)
    return float(lr.coef_[0, 0]), lr.predict_proba(logit(raw_te))[:, 1]


def per_fold(data: pl.DataFrame, result: Any, folds: list[Any]) -> list[dict[str, Any]]:
    by_index = {f.index: f for f in folds}
    preds = result.predictions
    rows = []
    for fit, rec in zip(result.fits, result.records, strict=True):
        fold = by_index[rec.index]
        train, val = data[fold.train], data[fold.validation]
        y_tr, y_va = train["y"].to_numpy(), val["y"].to_numpy()
        raw_tr, _ = fit.predict(train)
        raw_va, _ = fit.predict(val)
        test = preds.filter(pl.col("fold") == rec.index)
        y_te = test["y"].to_numpy()
        te = auc_score(y_te, test["prob"].to_numpy(), session_clusters(test["ts"]))
        base = np.clip(rec.base_rate, 1e-9, 1 - 1e-9)
        p = np.clip(test["prob"].to_numpy(), 1e-9, 1 - 1e-9)
        ll = -np.mean(y_te * np.log(p) + (1 - y_te) * np.log(1 - p))
        ll0 = -np.mean(y_te * np.log(base) + (1 - y_te) * np.log(1 - base))
        raw_te = test["prob_raw"].to_numpy()
        slope, free = platt_free(raw_va, y_va, raw_te)
        iso = Calibrator.fit("isotonic", raw_va, y_va).apply(raw_te)
        iso_tied = 1.0 - np.unique(iso).size / iso.size
        rows.append(
            {
                "fold": rec.index,
                "test_start": rec.test_start.date().isoformat(),
                "test_end": rec.test_end.date().isoformat(),
                "n_test": int(y_te.size),
                "base_rate_train": float(y_tr.mean()),
                "base_rate_validation": float(y_va.mean()),
                "base_rate_test": float(y_te.mean()),
                "mean_prob_test": float(test["prob"].mean()),  # type: ignore[arg-type]
                "best_iteration": rec.best_iteration,
                "auc_in_sample": fast_auc(y_tr, raw_tr),
                "auc_validation": fast_auc(y_va, raw_va),
                "auc_test": te.value,
                "auc_test_se": te.se,
                "auc_test_raw": fast_auc(y_te, raw_te),
                "calibration": fit.calibrator.method,
                "platt_slope": fit.calibrator.params.get("a"),
                "platt_free_slope": slope,
                "auc_test_platt_free": fast_auc(y_te, free),
                "auc_test_isotonic": fast_auc(y_te, iso),
                "isotonic_levels": int(np.unique(iso).size),
                "isotonic_tied_share": float(iso_tied),
                "_iso": iso,
                "log_loss_gain_vs_base_rate": float(ll0 - ll),
            }
        )
    return rows


def per_symbol(preds: pl.DataFrame) -> list[dict[str, Any]]:
    out = []
    for (sym,), g in preds.group_by("symbol", maintain_order=False):
        s = auc_score(g["y"].to_numpy(), g["prob"].to_numpy(), session_clusters(g["ts"]))
        w = [
            fast_auc(f["y"].to_numpy(), f["prob"].to_numpy())
            for _, f in g.group_by("fold")
            if f["y"].n_unique() > 1
        ]
        out.append(
            {
                "symbol": sym,
                "n": g.height,
                "auc_pooled": s.value,
                "auc_pooled_se": s.se,
                "auc_within_fold_mean": float(np.mean(w)),
            }
        )
    return sorted(out, key=lambda r: r["symbol"])


def per_feature(
    data: pl.DataFrame, folds: list[Any], features: list[str], train_rows: int
) -> pl.DataFrame:
    """Univariate AUC of every feature in each fold's training rows (the last ``train_rows``)
    and in its test rows."""
    y_all = data["y"].to_numpy()
    out = []
    for fold in folds:
        tr = fold.train[-train_rows:]
        for f in features:
            x = data[f].to_numpy().astype(np.float64)
            out.append(
                {
                    "fold": fold.index,
                    "feature": f,
                    "family": f.split("_", 1)[0],
                    "auc_train": fast_auc(y_all[tr], x[tr]),
                    "auc_test": fast_auc(y_all[fold.test], x[fold.test]),
                }
            )
    return pl.DataFrame(out)


def families(feat: pl.DataFrame) -> list[dict[str, Any]]:
    f = feat.drop_nans().with_columns(
        edge_train=(pl.col("auc_train") - 0.5).abs(),
        edge_test_signed=(pl.col("auc_test") - 0.5) * (pl.col("auc_train") - 0.5).sign(),
        kept_sign=((pl.col("auc_test") - 0.5) * (pl.col("auc_train") - 0.5) > 0).cast(pl.Float64),
    )
    g = (
        f.group_by("family")
        .agg(
            features=pl.col("feature").n_unique(),
            in_sample_edge=pl.col("edge_train").mean(),
            oos_signed_edge=pl.col("edge_test_signed").mean(),
            share_sign_kept=pl.col("kept_sign").mean(),
        )
        .sort("family")
    )
    # Features of a family move together within a fold: the fold, not the feature, is the
    # independent unit for the error of the signed edge.
    by_fold = (
        f.group_by("family", "fold")
        .agg(edge=pl.col("edge_test_signed").mean())
        .group_by("family")
        .agg(
            folds=pl.len(),
            oos_signed_edge_se=pl.col("edge").std() / pl.len().sqrt(),
        )
    )
    g = g.join(by_fold, on="family").with_columns(
        oos_signed_edge_t=pl.col("oos_signed_edge") / pl.col("oos_signed_edge_se")
    )
    return g.sort("family").to_dicts()


def figures(
    out: Path,
    folds: list[dict[str, Any]],
    syms: list[dict[str, Any]],
    feat: pl.DataFrame,
    fams: list[dict[str, Any]],
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    x = np.arange(len(folds))
    labels = [r["test_start"][:7] for r in folds]

    fig, (a1, a2) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    a1.plot(x, [r["base_rate_train"] for r in folds], "o-", label="training base rate")
    a1.plot(x, [r["base_rate_validation"] for r in folds], "s-", label="validation base rate")
    a1.plot(x, [r["base_rate_test"] for r in folds], "^-", label="test base rate")
    a1.plot(x, [r["mean_prob_test"] for r in folds], "k--", label="mean forecast (test)")
    a1.set_ylabel("share of labels +1")
    a1.legend(fontsize=8)
    a1.set_title("Per fold: base rates and the forecast's level")
    a2.plot(x, [r["auc_in_sample"] for r in folds], "o-", label="in sample (training rows)")
    a2.plot(x, [r["auc_validation"] for r in folds], "s-", label="validation")
    a2.errorbar(
        x,
        [r["auc_test"] for r in folds],
        yerr=[2 * r["auc_test_se"] for r in folds],
        fmt="^-",
        capsize=3,
        label="out of sample, calibrated (±2 SE)",
    )
    a2.plot(x, [r["auc_test_raw"] for r in folds], "x:", label="out of sample, raw score")
    a2.plot(
        x,
        [r["auc_test_platt_free"] for r in folds],
        "v:",
        label="out of sample, Platt slope left free",
    )
    a2.axhline(0.5, color="grey", lw=1)
    a2.set_ylabel("AUC")
    a2.set_xticks(x, labels, rotation=45)
    a2.set_xlabel("test window starts")
    a2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "per_fold.png", dpi=110)
    plt.close(fig)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    six = [r for r in syms if r["symbol"] in SYMBOLS]
    a1.errorbar(
        range(len(six)),
        [r["auc_pooled"] for r in six],
        yerr=[2 * r["auc_pooled_se"] for r in six],
        fmt="o",
        capsize=3,
        label="pooled",
    )
    a1.plot(
        range(len(six)), [r["auc_within_fold_mean"] for r in six], "s", label="mean within-fold"
    )
    a1.axhline(0.5, color="grey", lw=1)
    a1.set_xticks(range(len(six)), [r["symbol"] for r in six])
    a1.set_ylabel("OOS AUC (±2 SE)")
    a1.legend(fontsize=8)
    a1.set_title("Six symbols")
    z = [(r["auc_pooled"] - 0.5) / r["auc_pooled_se"] for r in syms]
    a2.hist(z, bins=15)
    a2.axvline(0, color="grey")
    a2.set_xlabel("z of OOS AUC against 0.5")
    a2.set_title(f"All {len(syms)} symbols")
    fig.tight_layout()
    fig.savefig(out / "per_symbol.png", dpi=110)
    plt.close(fig)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [r["family"] for r in fams]
    xi = np.arange(len(names))
    a1.bar(xi - 0.2, [r["in_sample_edge"] for r in fams], 0.4, label="|AUC-0.5| in training rows")
    a1.bar(
        xi + 0.2,
        [r["oos_signed_edge"] for r in fams],
        0.4,
        yerr=[2 * r["oos_signed_edge_se"] for r in fams],
        capsize=3,
        label="OOS AUC-0.5, signed by training (±2 SE over folds)",
    )
    a1.axhline(0, color="grey", lw=1)
    a1.set_xticks(xi, names, rotation=30)
    a1.legend(fontsize=8)
    a1.set_title("Per feature family: univariate edge in sample vs out of sample")
    d = feat.drop_nans()
    for fam in names:
        s = d.filter(pl.col("family") == fam)
        a2.scatter(s["auc_train"], s["auc_test"], s=4, alpha=0.4, label=fam)
    lo, hi = 0.44, 0.56
    a2.plot([lo, hi], [lo, hi], "k:", lw=1)
    a2.axhline(0.5, color="grey", lw=0.5)
    a2.axvline(0.5, color="grey", lw=0.5)
    a2.set_xlim(lo, hi)
    a2.set_ylim(lo, hi)
    a2.set_xlabel("univariate AUC, fold training rows")
    a2.set_ylabel("univariate AUC, fold test rows")
    a2.legend(fontsize=6, markerscale=3)
    fig.tight_layout()
    fig.savefig(out / "per_feature_family.png", dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "research")
    ap.add_argument(
        "--train-rows",
        type=int,
        default=150_000,
        help="training rows (most recent) per fold for the univariate AUCs",
    )
    args = ap.parse_args()
    if not (args.shared / DATA_FILE).exists():
        raise SystemExit(f"{args.shared / DATA_FILE} is absent: pass --shared DIR holding it")
    t0 = time.perf_counter()
    bars = regular_bars(args.shared)
    matrix = build_features(bars, CONFIG)
    labels = sample_weights(label_triple_barrier(bars, BarrierConfig()).labels, bars)
    data = build_training_set(matrix, labels)
    features = [c for c in data.columns if c.split("_", 1)[0] in CATEGORIES]
    checks = label_checks(bars, labels.join(data.select("symbol", "ts", "y"), on=["symbol", "ts"]))
    days = bars["ts"].dt.date().unique().sort()
    cut_day = days[len(days) // 2]
    cut = bars.filter(pl.col("ts").dt.date() == cut_day)["ts"].max()
    pit = point_in_time_check(bars, cut)
    print("checks", json.dumps(checks), json.dumps(pit), flush=True)

    plan = plan_for("full")
    folds = folds_for(data, plan)
    result = train_walk_forward(data, plan, features)
    preds = result.predictions
    joined = preds.join(
        data.select("symbol", "ts", pl.col("y").alias("y_data")), on=["symbol", "ts"]
    )
    checks["oos_rows_whose_y_matches_data"] = float((joined["y"] == joined["y_data"]).mean())
    skill, within = skill_scores(preds)
    pooled = auc_score(
        preds["y"].to_numpy(), preds["prob"].to_numpy(), session_clusters(preds["ts"])
    )
    n = preds.height
    pooled_iid = auc_score(
        preds["y"].to_numpy(), preds["prob"].to_numpy(), np.arange(n, dtype=np.int64)
    )
    pooled_raw = auc_score(
        preds["y"].to_numpy(), preds["prob_raw"].to_numpy(), session_clusters(preds["ts"])
    )
    fold_rows = per_fold(data, result, folds)
    iso_all = np.concatenate([r.pop("_iso") for r in fold_rows])
    y_sorted = np.concatenate(
        [preds.filter(pl.col("fold") == r["fold"])["y"].to_numpy() for r in fold_rows]
    )
    ts_sorted = pl.concat([preds.filter(pl.col("fold") == r["fold"])["ts"] for r in fold_rows])
    pooled_iso = auc_score(y_sorted, iso_all, session_clusters(ts_sorted))
    print("folds done", flush=True)
    syms = per_symbol(preds)
    feat = per_feature(
        data,
        [f for f in folds if f.index in {r.index for r in result.records}],
        features,
        args.train_rows,
    )
    fams = families(feat)
    summary = {
        "rows": data.height,
        "features": len(features),
        "checks": checks,
        "point_in_time": pit,
        "auc_within_fold": {"value": within.value, "se": within.se},
        "auc_pooled": {"value": pooled.value, "se": pooled.se},
        "auc_pooled_raw": {"value": pooled_raw.value, "se": pooled_raw.se},
        "auc_pooled_iid_se": pooled_iid.se,
        "auc_pooled_isotonic": {"value": pooled_iso.value, "se": pooled_iso.se},
        "auc_within_fold_isotonic_mean": float(
            np.mean([r["auc_test_isotonic"] for r in fold_rows])
        ),
        "auc_within_fold_mean": float(np.mean([r["auc_test"] for r in fold_rows])),
        "auc_within_fold_raw_mean": float(np.mean([r["auc_test_raw"] for r in fold_rows])),
        "auc_within_fold_platt_free_mean": float(
            np.mean([r["auc_test_platt_free"] for r in fold_rows])
        ),
        "corr_base_rate_validation_vs_test": float(
            np.corrcoef(
                [r["base_rate_validation"] for r in fold_rows],
                [r["base_rate_test"] for r in fold_rows],
            )[0, 1]
        ),
        "corr_mean_forecast_vs_base_rate_test": float(
            np.corrcoef(
                [r["mean_prob_test"] for r in fold_rows], [r["base_rate_test"] for r in fold_rows]
            )[0, 1]
        ),
        "folds_platt_free_slope_negative": sum(r["platt_free_slope"] < 0 for r in fold_rows),
        "log_loss_skill": {"value": skill.value, "se": skill.se, "z": skill.z},
        "folds": fold_rows,
        "symbols": [r for r in syms if r["symbol"] in SYMBOLS],
        "symbols_all_z": sorted(
            round((r["auc_pooled"] - 0.5) / r["auc_pooled_se"], 2) for r in syms
        ),
        "families": fams,
        "feature_share_sign_kept": float(
            families(feat.with_columns(family=pl.lit("all")))[0]["share_sign_kept"]
        ),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    figures(args.out / "figures", fold_rows, syms, feat, fams)
    (args.out / "anti_skill_results.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(
        json.dumps({k: v for k, v in summary.items() if k not in ("folds", "families")}, indent=1)
    )


if __name__ == "__main__":
    main()
