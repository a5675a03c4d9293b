"""`make bench [BENCH=part]`: run benchmark parts and merge their figures into
bench/results/latest.json (a flat JSON object of named figures)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "latest.json"
SHARED = Path(os.environ.get("QUANTDAG_SHARED_DATA", ROOT.parent / "shared" / "data"))


def ingest() -> dict[str, object]:
    """`ingest.*` on the shared 15-minute set, `ingest_1m.*` on the shared 1-minute set."""
    out: dict[str, object] = {}
    for dataset, prefix in (("15m", "ingest"), ("1m", "ingest_1m")):
        for mode in ("speed", "memory"):
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.ingest",
                    "--dataset",
                    dataset,
                    "--mode",
                    mode,
                    "--shared",
                    str(SHARED),
                ],
                cwd=ROOT,
                check=True,
                capture_output=True,
                text=True,
            )
            figures = json.loads(proc.stdout.strip().splitlines()[-1])
            out |= {f"{prefix}.{k}": v for k, v in figures.items()}
    return out


def aggregation() -> dict[str, object]:
    """IBKR 1-minute aggregated to 5 minutes against IBKR 5-minute (report beside the JSON)."""
    from bench.aggregation import run

    return run(SHARED, RESULTS.parent)


def _json(args: list[str], python: str = sys.executable) -> dict[str, object]:
    proc = subprocess.run([python, *args], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(
            f"bench: `{' '.join(args[:2])}` failed (exit {proc.returncode}); its last words:\n"
            + "\n".join(proc.stderr.strip().splitlines()[-15:])
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def features() -> dict[str, object]:
    """`features.*` and `labels.*`; TA-Lib runs in the benchmark environment (bench/.venv)."""
    out = _json(["-m", "bench.features", "--mode", "full", "--shared", str(SHARED)])
    out |= _json(["-m", "bench.features", "--mode", "stream", "--shared", str(SHARED)])
    bars = RESULTS.parent / "features_bars.tmp"
    compare = _json(
        [
            "-m",
            "bench.features",
            "--mode",
            "compare",
            "--shared",
            str(SHARED),
            "--bars-out",
            str(bars),
        ]
    )
    ours = float(compare.pop("_ours_subset_s"))  # type: ignore[arg-type]
    talib = _json(
        [str(ROOT / "bench" / "peers" / "talib_features.py"), str(bars), "5"],
        python=str(BENCH_PYTHON),
    )
    bars.unlink()
    return (
        out
        | compare
        | {
            "features.talib_subset_s": round(float(talib["talib_s"]), 4),  # type: ignore[arg-type]
            "features.ratio_vs_talib": round(ours / float(talib["talib_s"]), 2),  # type: ignore[arg-type]
            "features.talib_version": talib["talib_version"],
        }
    )


def training() -> dict[str, object]:
    """`training.*` (full walk-forward, nested-tuning audit), `validity.*` (positive control,
    block shuffle, purge-off canary) and `predict.*` (one bar of 50 symbols)."""
    out: dict[str, object] = {}
    for mode in ("walk_forward", "tuning", "validity", "predict"):
        out |= _json(["-m", "bench.training", "--mode", mode, "--shared", str(SHARED)])
    return out


def backtest() -> dict[str, object]:
    """`backtest.*`: the crossover through our event engine and vectorized path against
    backtrader and vectorbt, the model strategy through both paths, and the cross-check against
    backtesting.py; the peers run in the benchmark environment."""
    speed = _json(
        [
            "-m",
            "bench.backtest",
            "--shared",
            str(SHARED),
            "--bench-python",
            str(BENCH_PYTHON),
            "--tmp",
            str(RESULTS.parent / "backtest_bars.tmp"),
        ]
    )
    check = _json(
        [
            "-m",
            "bench.crosscheck",
            "--shared",
            str(SHARED),
            "--bench-python",
            str(BENCH_PYTHON),
            "--tmp",
            str(RESULTS.parent / "crosscheck_bars.tmp"),
        ]
    )
    return speed | check


def daily() -> dict[str, object]:
    """`daily.*`: the S&P 500 daily set (505 symbols) through ingestion (per-symbol CSVs, one
    yearly partition at a time), features, labels, the quick walk-forward and the backtest."""
    if not (SHARED / "sp500_daily_2013_2018.parquet").exists():
        print(
            f"bench: daily skipped: it needs sp500_daily_2013_2018.parquet in {SHARED} (absent)",
            file=sys.stderr,
        )
        return {}
    return _json(["-m", "bench.daily", "--shared", str(SHARED)])


def risk() -> dict[str, object]:
    """`risk.*`: the decision path's latency for a bar of 50 symbols, HRP weights of 500
    symbols, and overshoot and participation-cap breaches of the model strategy on the shared
    15-minute set under a 5% cap."""
    return _json(["-m", "bench.risk", "--shared", str(SHARED)])


def live() -> dict[str, object]:
    """`live.*`: bar-to-order latency of the live session through real alpaca-py clients and
    the local Alpaca server, 50 symbols; its in-process compute; equality with the backtest."""
    return _json(["-m", "bench.live", "--shared", str(SHARED)])


def backfill() -> dict[str, object]:
    """`backfill.*`: every month of the shared 15-minute set's bars, features and labels
    backfilled through the Dagster daemon with runs in parallel on PostgreSQL (the native
    stack), against one process doing every month in sequence (bench/backfill.py)."""
    if not (SHARED / "us_equities_15min_2020_2022_av.parquet").exists():
        print(
            f"bench: backfill skipped: it needs us_equities_15min_2020_2022_av.parquet in {SHARED}",
            file=sys.stderr,
        )
        return {}
    return _json(["-m", "bench.backfill", "--shared", str(SHARED)])


BENCH_PYTHON = ROOT / "bench" / ".venv" / "bin" / "python"
PARTS = {
    "ingest": ingest,
    "aggregation": aggregation,
    "features": features,
    "training": training,
    "backtest": backtest,
    "daily": daily,
    "risk": risk,
    "live": live,
    "backfill": backfill,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default="all", help=f"all or one of {', '.join(PARTS)}")
    args = parser.parse_args()
    if args.only != "all" and args.only not in PARTS:
        parser.error(f"unknown benchmark {args.only!r}; choose all or one of {', '.join(PARTS)}")
    if not SHARED.is_dir():
        print(
            f"the benchmarks need the real data in {SHARED} (set QUANTDAG_SHARED_DATA)",
            file=sys.stderr,
        )
        return 2
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for name, part in PARTS.items():
        if args.only in ("all", name):
            print(f"bench: {name} ...", flush=True)
            results |= part()
    results |= {
        "meta.updated_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "meta.machine": (
            f"{platform.machine()}, {os.cpu_count()} cpus, Python {platform.python_version()}"
        ),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(dict(sorted(results.items())), indent=2) + "\n")
    for k, v in sorted(results.items()):
        print(f"  {k} = {v}")
    print(f"written to {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
