"""Smoke test of ``make bench BENCH=backfill`` (bench/backfill.py) so it does not rot: its code
path on the two partitions of the bundled sample (four symbols), on the native stack and the real
PostgreSQL. The backfills' runs are submitted by the webserver at once (Dagster's
forceSynchronousSubmission) rather than by the daemon's backfill loop, which ticks every 30 s
and would not fit a minute; the queued run coordinator still launches them. The benchmark itself
goes through the backfill daemon. Each step is a module fixture, so each test pays for its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.backfill import (
    ASSETS,
    FRAMES,
    Parallel,
    Plan,
    Single,
    concurrency,
    exactly_once_problems,
    frame_differences,
    parallel_backfill,
    plan,
    run_config,
    single_process,
)
from quantdag.project import DEFAULT_SETTINGS
from quantdag.testing.native_stack import NativeStack, missing_services, native_stack

pytestmark = pytest.mark.integration

SYMBOLS = ("AAPL", "JPM", "MSFT", "SPY")  # JPM: a holdout symbol, kept in the settings
CONFIG = run_config("in_process")
BARS = ASSETS[:3]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("backfill_bench")


@pytest.fixture(scope="module")
def sample_plan(work: Path) -> Plan:
    return plan(work / "plan", settings=DEFAULT_SETTINGS, symbols=SYMBOLS)


@pytest.fixture(scope="module")
def stack(pg_server: str, work: Path, sample_plan: Plan) -> Iterator[NativeStack]:
    reason = missing_services(())
    if reason is not None:
        pytest.skip(reason)
    with native_stack(
        work / "stack", settings=sample_plan.settings, services=(), pg_admin_url=pg_server
    ) as running:
        yield running


@pytest.fixture(scope="module")
def bars(stack: NativeStack, sample_plan: Plan) -> Parallel:
    return parallel_backfill(
        stack,
        sample_plan.partitions,
        CONFIG,
        phases=("market_data_job",),
        assets=BARS,
        synchronous=True,
    )


@pytest.fixture(scope="module")
def research(stack: NativeStack, sample_plan: Plan, bars: Parallel) -> Parallel:
    return parallel_backfill(
        stack,
        sample_plan.partitions,
        CONFIG,
        phases=("research_job",),
        assets=ASSETS,
        synchronous=True,
    )


@pytest.fixture(scope="module")
def single(pg_server: str, work: Path, sample_plan: Plan) -> Single:
    return single_process(sample_plan, work / "single", CONFIG, pg_server)


def test_the_plan_is_two_sample_months_and_the_stack_runs_dagster_only(
    sample_plan: Plan, stack: NativeStack
) -> None:
    assert sample_plan.partitions == ("2019-01-01", "2019-02-01")
    assert sample_plan.symbols == len(SYMBOLS)
    assert set(stack.services) == {"code", "webserver", "daemon"}
    assert set(stack.databases) == {"dagster", "trading"}
    assert stack.env["QUANTDAG_SETTINGS"] == str(stack.settings)


def test_a_bars_backfill_runs_one_run_per_month_through_the_queue(
    bars: Parallel, sample_plan: Plan
) -> None:
    assert [r["status"] for r in bars.runs] == ["SUCCESS", "SUCCESS"]
    partitions = sorted(
        t["value"] for r in bars.runs for t in r["tags"] if t["key"] == "dagster/partition"
    )
    assert partitions == list(sample_plan.partitions)
    assert exactly_once_problems(bars.counts, BARS, sample_plan.partitions) == []
    most, mean = concurrency(bars.runs)
    assert 1 <= most <= 2 and 0 < mean <= most
    assert bars.trading["bars"]["15m"][0] > 0 and bars.trading["quarantined"] == 0


def test_then_features_and_labels_each_month_materialized_exactly_once(
    research: Parallel, sample_plan: Plan
) -> None:
    assert len(research.runs) == 2 and {r["status"] for r in research.runs} == {"SUCCESS"}
    assert exactly_once_problems(research.counts, ASSETS, sample_plan.partitions) == []
    # A partition materialized twice is caught, and so is one never materialized.
    twice = dict(research.counts) | {("bars_15m", "2019-01-01"): 2}
    del twice[("feature_matrix", "2019-02-01")]
    assert exactly_once_problems(twice, ASSETS, sample_plan.partitions) == [
        "bars_15m 2019-01-01: 2 times",
        "feature_matrix 2019-02-01: 0 times",
    ]


def test_the_single_process_stores_the_same_bars_and_frames(
    single: Single, research: Parallel, sample_plan: Plan
) -> None:
    assert exactly_once_problems(single.counts, ASSETS, sample_plan.partitions) == []
    assert single.wall_s > single.materialize_s > 0
    assert single.trading == research.trading
    assert (
        frame_differences(single.data_dir, research.data_dir, FRAMES, sample_plan.partitions) == []
    )
