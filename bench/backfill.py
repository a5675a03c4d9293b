"""Backfill benchmark: every month of bars, features and labels of the shared 15-minute set
(``us_equities_15min_2020_2022_av.parquet``, config/settings.av15m.yaml: 39 symbols, regular
session) backfilled through the Dagster daemon with runs in parallel on PostgreSQL storage,
against one process materializing every month in sequence.

The data set holds 24 months (2020-10 to 2022-09), so there are 24 monthly partitions, not 36.

**Parallel.** The native stack (:mod:`quantdag.testing.native_stack`: code server, webserver
and daemon on ``deploy/dagster.postgres.yaml``, throw-away Dagster and trading databases) is
started; then two partition backfills are launched through the webserver's GraphQL API
(``launchPartitionBackfill``), the daemon's backfill daemon submits one run per month and its
queued run coordinator runs up to ``max_concurrent_runs`` of them at once. Bars of every month
first (``market_data_job``), then features and labels (``research_job``), as ``make run`` does:
a month's features read the previous month's bars for their warm-up, a dependency the asset
graph does not declare, so one backfill of all five assets would build some months' features
before the bars they read were stored. The second backfill is launched as soon as every run of
the first has ended. Its time runs from the first launch to the end of the last run (the
daemon's 30-s backfill loop included); the time until the daemon marks both backfills
completed is reported apart.

**Single.** One Python process (``--single-run``, the same code and instance config, its own
fresh databases and data directory) materializes every month's bars, then every month's
features and labels, with ``execute_in_process``; timed from its start (imports and loading
the definitions included, as each backfill run's are) to its end. A single Dagster run over the
partition range is not possible: the assets read ``context.partition_key`` and declare no
single-run backfill policy.

Both use the in-process executor (``--executor multiprocess`` measures the jobs' default, a
process per step) and quiet console loggers. Checked after each: every partition of each of the
five assets materialized exactly once (ASSET_MATERIALIZATION events per partition in the
instance's event log), every run succeeded; and the two agree: the same bars in both trading
databases, the same Parquet frames of features and labels. Prints one JSON object of
``backfill.*`` figures; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import sqlalchemy as sa
import yaml

from quantdag.testing.native_stack import (
    DEPLOY,
    IN_PROCESS,
    LOCATION,
    PG_ADMIN_URL,
    REPOSITORY,
    TERMINAL,
    NativeStack,
    StackError,
    clean_env,
    instance_at,
    instance_yaml,
    native_stack,
    plain_url,
    stack_settings,
    throwaway_databases,
)

ROOT = Path(__file__).resolve().parent.parent
FILE = "us_equities_15min_2020_2022_av.parquet"
SETTINGS = ROOT / "config" / "settings.av15m.yaml"
PHASES = ("market_data_job", "research_job")
ASSETS = ("bars_15m", "bars_60m", "bars_1d", "feature_matrix", "triple_barrier_labels")
FRAMES = ("feature_matrix", "triple_barrier_labels")  # the assets stored as Parquet
QUIET: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
PHASE_TIMEOUT = 3600.0


def say(text: str) -> None:
    """A progress line on stderr (stdout carries the figures)."""
    print(f"  backfill: {text}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Plan:
    """What to materialize: the settings file (its universe possibly a subset of symbols) and
    the partitions."""

    settings: Path
    partitions: tuple[str, ...]
    symbols: int


def plan(
    workdir: Path,
    *,
    settings: Path = SETTINGS,
    source_path: str | None = None,
    symbols: Sequence[str] = (),
    months: int | None = None,
) -> Plan:
    """A settings file in ``workdir`` for ``settings`` (the file source read from
    ``source_path`` when given; only ``symbols`` when given) and its first ``months``
    partitions holding data (all by default)."""
    from quantdag.project import load_project
    from quantdag.run import partition_keys

    text = yaml.safe_load(settings.read_text())
    universe_path = Path(text["universe"])
    universe_path = (
        universe_path if universe_path.is_absolute() else settings.parent / universe_path
    )
    universe = yaml.safe_load(universe_path.read_text())
    if symbols:
        unknown = sorted(set(symbols) - {s["symbol"] for s in universe["symbols"]})
        if unknown:
            raise SystemExit(f"--symbols: {', '.join(unknown)} are not in {universe_path}")
        universe["symbols"] = [s for s in universe["symbols"] if s["symbol"] in symbols]
        for block in [text.get("research", {})] + [
            env.get("research") or {} for env in text["environments"].values()
        ]:
            holdout = block.get("holdout") or {}
            if holdout.get("symbols"):
                holdout["symbols"] = [s for s in holdout["symbols"] if s in symbols]
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "universe.yaml").write_text(yaml.safe_dump(universe, sort_keys=False))
    text["universe"] = str(workdir / "universe.yaml")
    if source_path is not None:
        text["environments"]["local"]["source"]["path"] = source_path
    out = workdir / "settings.yaml"
    out.write_text(yaml.safe_dump(text, sort_keys=False))
    keys = partition_keys(load_project({"QUANTDAG_SETTINGS": str(out)}))
    if months is not None:
        keys = keys[:months]
    if not keys:
        raise SystemExit(f"{out}: the source holds no bar of the universe's symbols")
    return Plan(out, tuple(keys), len(universe["symbols"]))


def run_config(executor: str) -> dict[str, Any]:
    """The run config of every run: quiet console loggers and the ``executor``'s choice."""
    return QUIET | (IN_PROCESS if executor == "in_process" else {})


# --- the parallel backfill ------------------------------------------------------------------


def partition_set(stack: NativeStack, job: str) -> str:
    """The name of ``job``'s partition set in the code location."""
    data = stack.graphql(
        """query ($repo: RepositorySelector!, $job: String!) {
            partitionSetsOrError(repositorySelector: $repo, pipelineName: $job) {
                __typename ... on PartitionSets { results { name } }
                ... on Error { message }
            }
        }""",
        {"repo": {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY}, "job": job},
    )["partitionSetsOrError"]
    names = [r["name"] for r in data.get("results", [])]
    if len(names) != 1:
        raise StackError(f"{job} has no single partition set in the code location: {data}")
    return str(names[0])


def launch_backfill(
    stack: NativeStack,
    job: str,
    partitions: Sequence[str],
    config: Mapping[str, Any],
    *,
    synchronous: bool = False,
) -> str:
    """Launch a backfill of ``job`` over ``partitions`` through the webserver's GraphQL API;
    its id. The daemon's backfill loop (every 30 s) submits its runs; ``synchronous`` has the
    webserver submit them at once instead (Dagster's ``forceSynchronousSubmission``, meant for
    tests: no backfill record is kept). Either way the queued run coordinator launches them."""
    params: dict[str, Any] = {
        "selector": {
            "partitionSetName": partition_set(stack, job),
            "repositorySelector": {
                "repositoryLocationName": LOCATION,
                "repositoryName": REPOSITORY,
            },
        },
        "partitionNames": list(partitions),
        "runConfigData": dict(config),
        "title": f"bench {job}",
        "forceSynchronousSubmission": synchronous,
    }
    data = stack.graphql(
        """mutation ($params: LaunchBackfillParams!) {
            launchPartitionBackfill(backfillParams: $params) {
                __typename
                ... on LaunchBackfillSuccess { backfillId }
                ... on Error { message }
            }
        }""",
        {"params": params},
    )["launchPartitionBackfill"]
    if data["__typename"] != "LaunchBackfillSuccess":
        raise StackError(f"the backfill of {job} was refused: {data}")
    return str(data["backfillId"])


def wait_backfill_runs(
    stack: NativeStack, backfill_id: str, expected: int, timeout: float = PHASE_TIMEOUT
) -> list[dict[str, Any]]:
    """Wait until the backfill has ``expected`` runs and every one has ended; the runs."""
    deadline = time.monotonic() + timeout
    while True:
        runs = stack.runs(tags={"dagster/backfill": backfill_id})
        if len(runs) >= expected and all(r["status"] in TERMINAL for r in runs):
            return runs
        if time.monotonic() > deadline:
            counts = Counter(r["status"] for r in runs)
            raise StackError(
                f"backfill {backfill_id}: {dict(counts)} of {expected} runs after {timeout:.0f} "
                f"s; the daemon's log ends:\n{stack.services['daemon'].tail()}"
            )
        stack.check_alive()
        time.sleep(1)


def backfill_status(stack: NativeStack, backfill_id: str) -> str:
    """The backfill's status as the webserver reports it (``REQUESTED``, ``COMPLETED``...)."""
    data = stack.graphql(
        """query ($id: String!) { partitionBackfillOrError(backfillId: $id) {
            __typename ... on PartitionBackfill { status } ... on Error { message }
        } }""",
        {"id": backfill_id},
    )["partitionBackfillOrError"]
    if data["__typename"] != "PartitionBackfill":
        raise StackError(f"backfill {backfill_id}: {data}")
    return str(data["status"])


def wait_backfill_completed(stack: NativeStack, backfill_id: str, timeout: float = 180) -> str:
    """Wait until the daemon marks the backfill as ended; its final status."""
    deadline = time.monotonic() + timeout
    while (status := backfill_status(stack, backfill_id)) in ("REQUESTED", "CANCELING"):
        if time.monotonic() > deadline:
            raise StackError(f"backfill {backfill_id} still {status} after {timeout:.0f} s")
        time.sleep(1)
    return status


def concurrency(runs: Iterable[Mapping[str, Any]]) -> tuple[int, float]:
    """The most runs going at once, and the mean number going while any was (their summed
    durations over the time at least one was going: the gaps between backfills left out)."""
    spans = [
        (float(r["startTime"]), float(r["endTime"]))
        for r in runs
        if r.get("startTime") is not None and r.get("endTime") is not None
    ]
    if not spans:
        return 0, 0.0
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    going = most = 0
    busy = 0.0
    last = edges[0][0]
    for at, step in edges:  # an end sorts before a start at the same instant
        if going:
            busy += at - last
        going += step
        most = max(most, going)
        last = at
    return most, sum(e - s for s, e in spans) / busy if busy > 0 else 1.0


@dataclass
class Parallel:
    wall_s: float
    completed_s: float | None
    runs: list[dict[str, Any]]
    statuses: list[str]
    data_dir: Path
    counts: dict[tuple[str, str], int]
    trading: dict[str, Any]


def parallel_backfill(
    stack: NativeStack,
    partitions: Sequence[str],
    config: Mapping[str, Any],
    *,
    phases: Sequence[str] = PHASES,
    assets: Sequence[str] = ASSETS,
    synchronous: bool = False,
) -> Parallel:
    """Backfill ``phases`` (one job each) over ``partitions`` through the stack, one after
    the other (see the module's docstring); timings, runs, materialization counts."""
    began = time.monotonic()
    ids: list[str] = []
    runs: list[dict[str, Any]] = []
    for job in phases:
        ids.append(launch_backfill(stack, job, partitions, config, synchronous=synchronous))
        say(f"{job}: backfill {ids[-1]} of {len(partitions)} partitions launched")
        phase_runs = wait_backfill_runs(stack, ids[-1], len(partitions))
        failed = [r["runId"] for r in phase_runs if r["status"] != "SUCCESS"]
        say(f"{job}: {len(phase_runs)} runs ended, {len(failed)} failed")
        if failed:
            raise StackError(f"{job}: run {failed[0]} failed:\n{stack.failure_of(failed[0])}")
        runs += phase_runs
    wall = time.monotonic() - began
    statuses = [] if synchronous else [wait_backfill_completed(stack, i) for i in ids]
    completed = None if synchronous else time.monotonic() - began
    with stack.instance() as instance:
        counts = materialization_counts(instance, assets)
    return Parallel(
        wall,
        completed,
        runs,
        statuses,
        stack.workdir / "data",
        counts,
        trading_summary(stack.databases["trading"]),
    )


# --- checks shared by both -------------------------------------------------------------------


def materialization_counts(instance: Any, assets: Iterable[str]) -> dict[tuple[str, str], int]:
    """ASSET_MATERIALIZATION events per (asset, partition) in the instance's event log."""
    import dagster as dg

    counts: Counter[tuple[str, str]] = Counter()
    for asset in assets:
        cursor = None
        while True:
            page = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset)), limit=1000, cursor=cursor
            )
            for record in page.records:
                counts[(asset, str(record.partition_key))] += 1
            if not page.has_more:
                break
            cursor = page.cursor
    return dict(counts)


def exactly_once_problems(
    counts: Mapping[tuple[str, str], int], assets: Iterable[str], partitions: Iterable[str]
) -> list[str]:
    """Each (asset, partition) not materialized exactly once, or materialized unasked."""
    expected = {(a, p) for a in assets for p in partitions}
    problems = [
        f"{a} {p}: {counts.get((a, p), 0)} times"
        for a, p in sorted(expected)
        if counts.get((a, p), 0) != 1
    ]
    problems += [f"{a} {p}: not asked for" for a, p in sorted(set(counts) - expected)]
    return problems


def trading_summary(url: str) -> dict[str, Any]:
    """Per timeframe: bars, summed volume and summed close of the trading database; and the
    quarantined rows (two runs that stored the same bars agree on all of it)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            bars = conn.execute(
                sa.text(
                    "SELECT timeframe, count(*), sum(volume), round(sum(close)::numeric, 4) "
                    "FROM bars GROUP BY timeframe ORDER BY timeframe"
                )
            ).all()
            quarantined = conn.execute(sa.text("SELECT count(*) FROM quarantine")).scalar()
    finally:
        engine.dispose()
    return {
        "bars": {str(tf): [int(n), int(v), str(c)] for tf, n, v, c in bars},
        "quarantined": int(quarantined or 0),
    }


def frame_differences(
    a: Path, b: Path, assets: Iterable[str], partitions: Iterable[str]
) -> list[str]:
    """The (asset, partition) Parquet frames that differ between data directories ``a`` and
    ``b`` (rows in the same order, every value equal, nulls and NaN in the same places)."""
    different = []
    for asset in assets:
        for key in partitions:
            left = pl.read_parquet(a / "parquet" / asset / f"{key}.parquet")
            right = pl.read_parquet(b / "parquet" / asset / f"{key}.parquet")
            if not left.equals(right, null_equal=True):
                different.append(f"{asset} {key}")
    return different


# --- the single process ----------------------------------------------------------------------


@dataclass
class Single:
    wall_s: float
    materialize_s: float
    data_dir: Path
    counts: dict[tuple[str, str], int]
    trading: dict[str, Any]


def single_process(
    plan_: Plan, workdir: Path, config: Mapping[str, Any], pg_admin_url: str = PG_ADMIN_URL
) -> Single:
    """Run ``--single-run`` in a fresh process on fresh databases (dropped afterwards) with
    the same instance config; its figures."""
    workdir.mkdir(parents=True, exist_ok=True)
    home = workdir / "dagster_home"
    home.mkdir(exist_ok=True)
    instance_yaml(home)
    settings = stack_settings(plan_.settings, workdir)
    with throwaway_databases(("dagster", "trading"), pg_admin_url) as dbs:
        env = clean_env(
            {
                "DAGSTER_HOME": str(home),
                "DAGSTER_PG_URL": plain_url(dbs["dagster"]),
                "QUANTDAG_SETTINGS": str(settings),
                "QUANTDAG_DATABASE_URL": dbs["trading"],
                "QUANTDAG_OPTUNA_URI": dbs["trading"],
                "QUANTDAG_MLFLOW_URI": f"sqlite:///{workdir / 'mlflow.db'}",
            }
        )
        cmd = [sys.executable, "-m", "bench.backfill", "--single-run", json.dumps(dict(config))]
        began = time.monotonic()
        done = subprocess.run(
            [*cmd, *plan_.partitions], cwd=ROOT, env=env, capture_output=True, text=True
        )
        wall = time.monotonic() - began
        if done.returncode != 0:
            raise StackError(
                f"the single run failed (exit {done.returncode}); its last words:\n"
                + "\n".join(done.stderr.strip().splitlines()[-20:])
            )
        inside = json.loads(done.stdout.strip().splitlines()[-1])
        with instance_at(home, env["DAGSTER_PG_URL"]) as instance:
            counts = materialization_counts(instance, ASSETS)
        return Single(
            wall, inside["materialize_s"], workdir / "data", counts, trading_summary(dbs["trading"])
        )


def single_run_worker(config: Mapping[str, Any], partitions: Sequence[str]) -> dict[str, float]:
    """In this process: every partition's bars, then every partition's features and labels
    (``execute_in_process`` on the instance of ``DAGSTER_HOME``); fails on a failed run."""
    import dagster as dg

    from quantdag.definitions import defs

    instance = dg.DagsterInstance.get()
    began = time.monotonic()
    for job in PHASES:
        for key in partitions:
            result = defs.resolve_job_def(job).execute_in_process(
                instance=instance, partition_key=key, run_config=dict(config), raise_on_error=False
            )
            if not result.success:
                raise SystemExit(f"{job} {key}: run {result.run_id} failed")
            print(f"  single: {job} {key} done", file=sys.stderr, flush=True)
    return {"materialize_s": round(time.monotonic() - began, 2)}


# --- the benchmark ---------------------------------------------------------------------------


class LoadSampler:
    """The 1-minute load average sampled every ``every`` seconds in a thread."""

    def __init__(self, every: float = 2.0) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)

    def _run(self, every: float) -> None:
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(every)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def figures(self) -> tuple[float, float]:
        """Mean and maximum of the samples."""
        if not self.samples:
            return 0.0, 0.0
        return round(sum(self.samples) / len(self.samples), 2), round(max(self.samples), 2)


def run(args: argparse.Namespace) -> dict[str, object]:
    """The benchmark (see the module's docstring); its figures."""
    shared: Path = args.shared
    if not (shared / FILE).exists():
        raise SystemExit(f"backfill: needs {FILE} in {shared} (set QUANTDAG_SHARED_DATA)")
    config = run_config(args.executor)
    pg: str = args.pg
    run_queue: dict[str, Any] = {}
    if args.max_concurrent_runs is not None:
        run_queue["max_concurrent_runs"] = args.max_concurrent_runs
    if args.dequeue_threads:
        run_queue["dequeue_use_threads"] = True
    shipped = yaml.safe_load((DEPLOY / "dagster.postgres.yaml").read_text())
    configured = shipped["run_coordinator"]["config"] | run_queue
    with tempfile.TemporaryDirectory(prefix="quantdag-bench-backfill-") as tmp:
        work = Path(tmp)
        the_plan = plan(
            work / "plan",
            source_path=str(shared),
            symbols=[s for s in args.symbols.split(",") if s] if args.symbols else (),
            months=args.months,
        )
        parts = the_plan.partitions
        say(f"{len(parts)} partitions ({parts[0]} .. {parts[-1]}), {the_plan.symbols} symbols")
        load_before = round(os.getloadavg()[0], 2)
        say("single process ...")
        with LoadSampler() as single_load:
            single = single_process(the_plan, work / "single", config, pg)
        single_problems = exactly_once_problems(single.counts, ASSETS, parts)
        say(f"single process: {single.wall_s:.1f} s")
        say("native stack ...")
        began = time.monotonic()
        with (
            native_stack(
                work / "stack",
                settings=the_plan.settings,
                services=(),
                run_queue=run_queue,
                pg_admin_url=pg,
            ) as stack,
            LoadSampler() as parallel_load,
        ):
            stack_s = time.monotonic() - began
            say(f"stack up in {stack_s:.1f} s; parallel backfill ...")
            parallel = parallel_backfill(stack, parts, config)
            say(f"parallel backfill: {parallel.wall_s:.1f} s")
        parallel_problems = exactly_once_problems(parallel.counts, ASSETS, parts)
        different = frame_differences(single.data_dir, parallel.data_dir, FRAMES, parts)
        most, mean = concurrency(parallel.runs)
        single_mean, single_max = single_load.figures()
        parallel_mean, parallel_max = parallel_load.figures()
        failed = [r["runId"] for r in parallel.runs if r["status"] != "SUCCESS"]
        for name, problems in (("single", single_problems), ("parallel", parallel_problems)):
            if problems:
                say(f"{name}: not materialized exactly once: {problems[:10]}")
        return {
            "backfill.partitions": len(parts),
            "backfill.first_partition": parts[0],
            "backfill.last_partition": parts[-1],
            "backfill.symbols": the_plan.symbols,
            "backfill.assets": list(ASSETS),
            "backfill.executor": args.executor,
            "backfill.max_concurrent_runs": configured["max_concurrent_runs"],
            "backfill.dequeue_use_threads": bool(configured.get("dequeue_use_threads", False)),
            "backfill.parallel_wall_s": round(parallel.wall_s, 1),
            "backfill.parallel_until_completed_s": round(parallel.completed_s or 0.0, 1),
            "backfill.parallel_backfill_statuses": parallel.statuses,
            "backfill.parallel_runs": len(parallel.runs),
            "backfill.parallel_runs_failed": len(failed),
            "backfill.parallel_max_concurrency": most,
            "backfill.parallel_mean_concurrency": round(mean, 2),
            "backfill.stack_start_s": round(stack_s, 1),
            "backfill.single_wall_s": round(single.wall_s, 1),
            "backfill.single_materialize_s": single.materialize_s,
            "backfill.speedup_parallel_vs_single": round(single.wall_s / parallel.wall_s, 3),
            "backfill.exactly_once_parallel": not parallel_problems,
            "backfill.exactly_once_single": not single_problems,
            "backfill.same_bars_as_single": parallel.trading == single.trading,
            "backfill.same_frames_as_single": not different,
            "backfill.bars_15m": parallel.trading["bars"].get("15m", [0])[0],
            "backfill.rows_quarantined": parallel.trading["quarantined"],
            "backfill.cores": os.cpu_count(),
            "backfill.load_before": load_before,
            "backfill.load_mean_single": single_mean,
            "backfill.load_max_single": single_max,
            "backfill.load_mean_parallel": parallel_mean,
            "backfill.load_max_parallel": parallel_max,
        }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument(
        "--pg",
        default=os.environ.get("QUANTDAG_BENCH_PG_URL", PG_ADMIN_URL),
        help="admin URL of the PostgreSQL server (default: $QUANTDAG_BENCH_PG_URL, else local)",
    )
    parser.add_argument("--months", type=int, help="only the first N partitions (default: all)")
    parser.add_argument(
        "--symbols",
        help="comma-separated subset of the universe's symbols (the one-file set's rows of the "
        "others are then quarantined as symbol_not_in_universe)",
    )
    parser.add_argument(
        "--max-concurrent-runs", type=int, help="the run queue's limit (default: the instance's)"
    )
    parser.add_argument(
        "--dequeue-threads",
        action="store_true",
        help="launch queued runs in threads (dequeue_use_threads): the default launches one "
        "at a time, each waiting for its run worker to load the definitions",
    )
    parser.add_argument("--executor", choices=("in_process", "multiprocess"), default="in_process")
    parser.add_argument("--single-run", metavar="RUN_CONFIG", help=argparse.SUPPRESS)
    parser.add_argument("partitions", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.single_run is not None:
        print(json.dumps(single_run_worker(json.loads(args.single_run), args.partitions)))
        return
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
