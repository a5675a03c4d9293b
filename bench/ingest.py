"""Ingest benchmark for one shared data set, each measurement in its own process.

``--mode speed``: read + normalise once, then validate + aggregate to every coarser timeframe
(best of N), then the PostgreSQL load of the validated bars (COPY + upsert, fresh database).
``--mode memory``: the production path once, as the assets run it: ``ingest_window`` over the
whole file into a fresh PostgreSQL database, then each aggregate read back, built and stored;
its peak resident memory is the figure. Each mode prints one JSON object. The PostgreSQL
server is ``QUANTDAG_BENCH_PG_URL`` (an admin URL), read from the environment: a password on
the command line would be visible to every user of the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import sqlalchemy as sa

from pipelines.bars.aggregate import aggregate_bars
from pipelines.bars.validate import ValidationResult, validate_bars
from pipelines.config import ColumnMap, FileSourceConfig, UniverseConfig, ValidationConfig
from pipelines.data.ingest import ingest_window
from pipelines.data.sources import FileBarSource
from pipelines.data.store import BarStore
from pipelines.timeframes import Timeframe

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DATASETS = {
    # name: (file, source timeframe, label, session, targets)
    "15m": ("us_equities_15min_2020_2022_av.parquet", "15m", "end", "extended", ["60m", "1d"]),
    "1m": (
        "us_equities_1min_2025_2026_ibkr.parquet",
        "1m",
        "start",
        "regular",
        ["5m", "15m", "60m", "1d"],
    ),
}
EVERYTHING = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))


@contextmanager
def fresh_database(admin_url: str) -> Iterator[BarStore]:
    name = f"quantdag_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    store = BarStore(admin_url.rsplit("/", 1)[0] + f"/{name}")
    try:
        store.migrate()
        yield store
    finally:
        store.engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def _source(dataset: str, shared: Path) -> tuple[FileBarSource, Path]:
    name, tf, label, _, _ = DATASETS[dataset]
    cfg = FileSourceConfig(
        path=str(shared),
        pattern=name,
        format="parquet",
        columns=ColumnMap(symbol="symbol"),
        label=label,
    )  # type: ignore[arg-type]
    return FileBarSource(cfg, Timeframe.parse(tf)), shared / name


def speed(dataset: str, shared: Path, pg: str, repeats: int) -> dict[str, float | int]:
    _, tf_text, _, session, targets = DATASETS[dataset]
    tf = Timeframe.parse(tf_text)
    source, path = _source(dataset, shared)
    t0 = time.perf_counter()
    raw = source.read_file(path, None)
    read_s = time.perf_counter() - t0
    symbols = raw["symbol"].unique().to_list()

    def validate_and_aggregate() -> ValidationResult:
        result = validate_bars(raw, universe=symbols, timeframe=tf, session=session)  # type: ignore[arg-type]
        for t in targets:
            aggregate_bars(result.bars, source=tf, target=Timeframe.parse(t), session=session)  # type: ignore[arg-type]
        return result

    result = validate_and_aggregate()  # warm-up: calendar and code paths
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = validate_and_aggregate()
        best = min(best, time.perf_counter() - t0)
    with fresh_database(pg) as store:
        t0 = time.perf_counter()
        loaded = store.upsert_bars(result.bars, timeframe=tf.label, source="bench")
        load_s = time.perf_counter() - t0
    assert loaded == result.rows_stored
    return {
        "rows_in": result.rows_in,
        "rows_stored": result.rows_stored,
        "rows_quarantined": result.rows_quarantined,
        "read_normalise_rows_per_s": round(raw.height / read_s),
        "validate_aggregate_s": round(best, 4),
        "validate_aggregate_rows_per_s": round(raw.height / best),
        "postgres_load_s": round(load_s, 3),
        "postgres_load_rows_per_s": round(loaded / load_s),
    }


def memory(dataset: str, shared: Path, pg: str) -> dict[str, float | int]:
    _, tf_text, _, session, targets = DATASETS[dataset]
    source, path = _source(dataset, shared)
    symbols = sorted(
        pl.read_parquet(path, columns=["symbol"])["symbol"].cast(pl.String).unique().to_list()
    )
    universe = UniverseConfig(
        name=dataset,
        timeframe=tf_text,
        session=session,  # type: ignore[arg-type]
        history_start=datetime(2000, 1, 1).date(),
        symbols=tuple({"symbol": s} for s in symbols),  # type: ignore[arg-type]
    )
    with fresh_database(pg) as store:
        t0 = time.perf_counter()
        report = ingest_window(
            source,
            store,
            universe,
            ValidationConfig(),
            EVERYTHING,
            as_of=EVERYTHING[1],
            batch="bench",
        )
        for t in targets:
            base = store.read_bars(timeframe=tf_text, start=EVERYTHING[0], end=EVERYTHING[1])
            bars = aggregate_bars(
                base, source=universe.base_timeframe, target=Timeframe.parse(t), session=session
            )  # type: ignore[arg-type]
            del base
            store.upsert_bars(bars, timeframe=t, source="bench")
            del bars
        total_s = time.perf_counter() - t0
    assert report.accounted
    return {
        "end_to_end_s": round(total_s, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    parser.add_argument("--mode", choices=("speed", "memory"), required=True)
    parser.add_argument("--shared", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    pg = os.environ.get("QUANTDAG_BENCH_PG_URL", DEFAULT_PG_URL)
    if args.mode == "speed":
        figures = speed(args.dataset, args.shared, pg, args.repeats)
    else:
        figures = memory(args.dataset, args.shared, pg)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
