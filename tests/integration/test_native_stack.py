"""The docker-compose stack run natively, end to end (quantdag/testing/native_stack.py): Dagster
on PostgreSQL (dagster-postgres, deploy/dagster.postgres.yaml) with a code server, webserver and
daemon; the trading database and MLflow's tracking store on PostgreSQL behind ``mlflow server``;
Prometheus with the project's scrape config and a Pushgateway.

The bundled sample goes through the stack as the nightly does it: each month's data run
(``all_assets_job``: bars, aggregates, features, labels; January first, since February's
features read January's bars), then training (quick mode) and the backtest. Every run is
submitted through the webserver's GraphQL API and launched by the daemon's queued run
coordinator. The stack is started once for the module and each step is a module fixture, so
each test pays for its own step only and stays under a minute on a busy machine (the stack's
start counts towards the first test). Runs use the in-process executor: the default one starts
a process per step, each loading the definitions again (about 7 s each)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import requests
import sqlalchemy as sa

from quantdag.testing.native_stack import IN_PROCESS, NativeStack, missing_services, native_stack
from tests.conftest import ROOT

pytestmark = [
    pytest.mark.integration,
    # dagster-graphql's client still passes variables the way gql deprecated.
    pytest.mark.filterwarnings("ignore:Using variable_values:DeprecationWarning"),
]

MONTHS = ("2019-01-01", "2019-02-01")  # the bundled sample's partitions
SAMPLE = ROOT / "data" / "sample" / "eqker_15min"
RUN_TIMEOUT = 240  # s; a failed or stuck run fails the test with its error, not a hang
DATA_ASSETS = ("bars_15m", "bars_60m", "bars_1d", "feature_matrix", "triple_barrier_labels")


@dataclass(frozen=True)
class Step:
    run_id: str
    status: str


@pytest.fixture(scope="module")
def stack(pg_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NativeStack]:
    """The whole stack, MLflow's readiness awaited only by the training step."""
    reason = missing_services()
    if reason is not None:
        pytest.skip(reason)
    with native_stack(
        tmp_path_factory.mktemp("native_stack"), pg_admin_url=pg_server, deferred=("mlflow",)
    ) as running:
        yield running


def _step(stack: NativeStack, job: str, partition: str | None = None, **config: Any) -> Step:
    run_id = stack.submit(job, partition=partition, run_config={**IN_PROCESS, **config})
    return Step(run_id, stack.wait_for_runs([run_id], RUN_TIMEOUT)[run_id])


def _succeeded(stack: NativeStack, step: Step) -> None:
    assert step.status == "SUCCESS", stack.failure_of(step.run_id)


@pytest.fixture(scope="module")
def january(stack: NativeStack) -> Step:
    return _step(stack, "all_assets_job", MONTHS[0])


@pytest.fixture(scope="module")
def february(stack: NativeStack, january: Step) -> Step:
    return _step(stack, "all_assets_job", MONTHS[1])


@pytest.fixture(scope="module")
def training(stack: NativeStack, february: Step) -> Step:
    stack.wait_ready("mlflow")
    return _step(stack, "training_job", ops={"walk_forward_models": {"config": {"mode": "quick"}}})


@pytest.fixture(scope="module")
def backtest(stack: NativeStack, training: Step) -> Step:
    return _step(stack, "backtest_job")


def _materializations(stack: NativeStack, asset: str) -> list[dict[str, Any]]:
    """The asset's materializations as the webserver reports them (partition, run, metadata)."""
    data = stack.graphql(
        """query ($path: [String!]!) { assetOrError(assetKey: {path: $path}) {
            __typename
            ... on Asset { assetMaterializations(limit: 100) {
                partition runId
                metadataEntries { label
                    ... on IntMetadataEntry { intValue }
                    ... on TextMetadataEntry { text }
                    ... on PathMetadataEntry { path }
                }
            } }
        } }""",
        {"path": [asset]},
    )["assetOrError"]
    assert data["__typename"] == "Asset", f"{asset} has never been materialized: {data}"
    return list(data["assetMaterializations"])


def _metadata(materialization: dict[str, Any]) -> dict[str, Any]:
    return {
        e["label"]: e.get("intValue", e.get("text", e.get("path")))
        for e in materialization["metadataEntries"]
    }


def _until(ok: Callable[[], bool], timeout: float) -> None:
    """Poll ``ok`` every half second until it holds or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while not ok() and time.monotonic() < deadline:
        time.sleep(0.5)


def _sample_rows(month: int) -> int:
    """Rows of the sample's CSVs in a month of 2019, counted straight from the files."""
    frame = pl.read_csv(SAMPLE / "*.csv", columns=["timestamp"])
    return frame.filter(pl.col("timestamp").str.slice(0, 7) == f"2019-{month:02d}").height


def _trading_counts(stack: NativeStack, start: str, end: str) -> dict[str, int]:
    engine = sa.create_engine(stack.databases["trading"])
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT timeframe, count(*) FROM bars WHERE ts >= :a AND ts < :b "
                    "GROUP BY timeframe"
                ),
                {"a": f"{start}T05:00:00Z", "b": f"{end}T05:00:00Z"},  # New York midnights
            ).all()
    finally:
        engine.dispose()
    return {str(tf): int(n) for tf, n in rows}


def test_the_webserver_serves_the_asset_graph_of_the_code_server(stack: NativeStack) -> None:
    page = requests.get(stack.webserver_url, timeout=30)
    assert page.status_code == 200 and "<html" in page.text.lower()
    nodes = stack.graphql(
        """{ assetNodes { assetKey { path } groupName dependencyKeys { path } } }"""
    )["assetNodes"]
    graph = {
        n["assetKey"]["path"][-1]: (n["groupName"], {d["path"][-1] for d in n["dependencyKeys"]})
        for n in nodes
    }
    assert {g for g, _ in graph.values()} >= {"market_data", "research", "training", "backtest"}
    assert graph["bars_60m"][1] == {"bars_15m"}
    assert "bars_15m" in graph["feature_matrix"][1]
    assert "bars_15m" in graph["triple_barrier_labels"][1]
    assert {"feature_matrix", "triple_barrier_labels"} <= graph["training_set"][1]
    required: dict[str, bool] = {}

    def healthy() -> bool:  # each daemon's first heartbeat comes with its first iteration
        daemons = stack.graphql(
            "{ instance { daemonHealth { allDaemonStatuses { daemonType required healthy } } } }"
        )["instance"]["daemonHealth"]["allDaemonStatuses"]
        required.update({d["daemonType"]: d["healthy"] for d in daemons if d["required"]})
        return all(required.values())

    _until(healthy, 30)
    assert {"QUEUED_RUN_COORDINATOR", "BACKFILL", "SENSOR", "SCHEDULER"} <= set(required)
    assert all(required.values()), required


def test_prometheus_scrapes_itself_and_the_pushgateway_with_the_project_rules(
    stack: NativeStack,
) -> None:
    assert stack.prometheus_url is not None

    def targets() -> dict[str, str]:
        answer = requests.get(f"{stack.prometheus_url}/api/v1/targets", timeout=5).json()
        return {t["labels"]["job"]: t["health"] for t in answer["data"]["activeTargets"]}

    health: dict[str, str] = {}

    def scraped() -> bool:  # every second; the first scrapes may not have happened yet
        health.update(targets())
        return len(health) == 3 and "unknown" not in health.values()

    _until(scraped, 30)
    assert health["prometheus"] == "up" and health["quantdag_pipeline"] == "up", health
    # The live session's target is configured but nothing serves it outside market hours.
    assert health["quantdag_live"] == "down", health
    up = requests.get(
        f"{stack.prometheus_url}/api/v1/query", params={"query": 'up{job="prometheus"}'}, timeout=5
    ).json()["data"]["result"]
    assert [float(r["value"][1]) for r in up] == [1.0]
    rules = requests.get(f"{stack.prometheus_url}/api/v1/rules", timeout=5).json()
    groups = {g["name"] for g in rules["data"]["groups"]}
    assert {"quantdag_live", "quantdag_pipeline"} <= groups


def test_january_through_the_daemon_stores_its_bars_on_postgres(
    stack: NativeStack, january: Step
) -> None:
    _succeeded(stack, january)
    counts = _trading_counts(stack, "2019-01-01", "2019-02-01")
    assert counts["15m"] == _sample_rows(1) == 11_691
    assert counts["60m"] > 0 and counts["1d"] > 0
    bars = [m for m in _materializations(stack, "bars_15m") if m["partition"] == MONTHS[0]]
    assert [m["runId"] for m in bars] == [january.run_id]
    meta = _metadata(bars[0])
    assert meta["rows_in"] == meta["rows_stored"] == counts["15m"]
    assert meta["rows_quarantined"] == 0
    for asset in DATA_ASSETS[1:]:
        runs = [m["runId"] for m in _materializations(stack, asset) if m["partition"] == MONTHS[0]]
        assert runs == [january.run_id], asset
    parquet = stack.workdir / "data" / "parquet"
    assert any(parquet.rglob("*.parquet")), f"no Parquet frame under {parquet}"


def test_february_reads_january_for_its_features_and_is_stored(
    stack: NativeStack, february: Step
) -> None:
    _succeeded(stack, february)
    assert _trading_counts(stack, "2019-02-01", "2019-03-01")["15m"] == _sample_rows(2)
    for asset in DATA_ASSETS:
        partitions = sorted(m["partition"] for m in _materializations(stack, asset))
        assert partitions == list(MONTHS), asset


def test_training_logs_its_run_to_mlflow_on_postgres(stack: NativeStack, training: Step) -> None:
    _succeeded(stack, training)
    engine = sa.create_engine(stack.databases["mlflow"])
    try:
        with engine.connect() as conn:
            runs = conn.execute(
                sa.text(
                    "SELECT e.name, r.status FROM runs r JOIN experiments e "
                    "ON r.experiment_id = e.experiment_id"
                )
            ).all()
            models = conn.execute(sa.text("SELECT count(*) FROM model_versions")).scalar()
    finally:
        engine.dispose()
    assert ("eqker-sample-15m", "FINISHED") in {(name, status) for name, status in runs}, runs
    assert models and models >= 1
    # The model's files went to the server's artifact store, not to a local path.
    artifacts = stack.workdir / "mlartifacts"
    assert any(p.is_file() for p in artifacts.rglob("*")), f"no artifact under {artifacts}"
    assert stack.mlflow_url is not None
    found = requests.get(
        f"{stack.mlflow_url}/api/2.0/mlflow/experiments/get-by-name",
        params={"experiment_name": "eqker-sample-15m"},
        timeout=10,
    )
    assert found.status_code == 200


def test_the_backtest_writes_its_report_in_the_stack_data_dir(
    stack: NativeStack, backtest: Step
) -> None:
    _succeeded(stack, backtest)
    [report] = _materializations(stack, "backtest_report")
    path = Path(str(_metadata(report)["report"]))
    assert path.is_file() and path.is_relative_to(stack.workdir), path


def test_the_daemon_pushes_each_runs_metrics_and_prometheus_scrapes_them(
    stack: NativeStack, january: Step
) -> None:
    _succeeded(stack, january)
    assert stack.prometheus_url is not None
    query = 'quantdag_pipeline_run_success{dagster_job="all_assets_job"}'
    result: list[dict[str, Any]] = []

    def pushed() -> bool:
        answer = requests.get(
            f"{stack.prometheus_url}/api/v1/query", params={"query": query}, timeout=5
        ).json()
        result[:] = answer["data"]["result"]
        return bool(result)

    _until(pushed, 45)  # the run status sensors tick every 30 s
    assert result, (
        f"Prometheus has no {query}; the daemon's log:\n{stack.services['daemon'].tail()}"
    )
    assert {float(r["value"][1]) for r in result} == {1.0}
