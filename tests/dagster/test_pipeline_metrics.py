"""Batch runs' metrics: read from a real run's event log, pushed by the pipeline-metrics sensor,
and (where Debian's ``prometheus-pushgateway`` is installed) received by a real Pushgateway on
127.0.0.1, whose exposition is parsed with the reference client's parser."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import requests
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from assets.bars import build_bar_assets
from pipelines.ops.pipeline_metrics import (
    CheckVerdict,
    Materialization,
    PipelineRun,
    PushError,
    metric_groups,
    push_run_metrics,
)
from quantdag.project import load_project
from quantdag.testing.native_stack import free_port, prometheus_binaries
from resources import FileBarSourceResource, TradingDatabaseResource
from resources.pipeline_metrics import (
    PipelineMetricsResource,
    RecordingPipelineMetricsResource,
    pipeline_run,
)
from sensors.pipeline_metrics import build_pipeline_metrics_sensors

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "sample" / "eqker_15min"
PARTITION = "2019-01-01"


def _samples(registry: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_groups_hold_each_partition_s_figures_and_the_run_s() -> None:
    run = PipelineRun(
        "r1",
        "market_data_job",
        "FAILURE",
        1000.0,
        1042.5,
        [
            Materialization(
                "bars_15m",
                "2019-01-01",
                {"rows_in": 10, "rows_stored": 7, "quarantined_by_reason": {"ohlc": 2, "dup": 1}},
                3.5,
                1040.0,
            ),
            Materialization("oos_predictions", None, {"oos_auc": 0.53, "rows": 9}, 30.0, 1041.0),
        ],
        [CheckVerdict("bars_15m", "2019-01-01", "no_gaps", False, "ERROR")],
    )
    groups = {tuple(sorted(k.items())): _samples(r) for k, r in metric_groups(run)}
    bars = groups[(("asset", "bars_15m"), ("partition", "2019-01-01"))]
    assert bars[("quantdag_pipeline_rows_in", ())] == 10
    assert bars[("quantdag_pipeline_rows_stored", ())] == 7
    assert bars[("quantdag_pipeline_rows_quarantined", (("rule", "ohlc"),))] == 2
    assert bars[("quantdag_pipeline_rows_quarantined", (("rule", "dup"),))] == 1
    assert bars[("quantdag_pipeline_step_duration_seconds", ())] == 3.5
    # A check's verdict has its own group: pushing it replaces nothing else, and a later
    # materialization without it leaves it standing.
    assert not any(name == "quantdag_pipeline_check_failed" for name, _ in bars)
    check = groups[(("asset", "bars_15m"), ("check", "no_gaps"), ("partition", "2019-01-01"))]
    failed = (("check", "no_gaps"), ("severity", "ERROR"))
    assert check == {("quantdag_pipeline_check_failed", failed): 1}
    oos = groups[(("asset", "oos_predictions"), ("partition", "all"))]
    assert oos[("quantdag_pipeline_oos_score", (("metric", "auc"),))] == 0.53
    assert ("quantdag_pipeline_rows_in", ()) not in oos  # not invented where not recorded
    job = groups[(("dagster_job", "market_data_job"),)]
    assert job[("quantdag_pipeline_run_success", ())] == 0
    assert job[("quantdag_pipeline_run_duration_seconds", ())] == 42.5


def test_a_quarantine_count_that_is_not_a_number_is_an_error() -> None:
    bad = Materialization("bars_15m", "2019-01-01", {"quarantined_by_reason": {"x": "3"}}, 1, 1)
    with pytest.raises(ValueError, match=r"quarantined_by_reason\['x'\]"):
        metric_groups(PipelineRun("r", "j", "SUCCESS", 0, 1, [bad]))
    # pushed, it is a PushError (said, and the run goes on), not a traceback
    with pytest.raises(PushError, match=r"quarantined_by_reason\['x'\]"):
        push_run_metrics(PipelineRun("r", "j", "SUCCESS", 0, 1, [bad]), "http://127.0.0.1:9")


@pytest.fixture(scope="module")
def bars_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[dg.DagsterInstance, str]]:
    """One month of the bundled 15-minute sample through the bar assets, one of its rows
    broken (high below low) so that the quarantine has a rule to count."""
    tmp = tmp_path_factory.mktemp("pipeline_metrics")
    source = tmp / "bars"
    shutil.copytree(SAMPLE, source)
    path = source / "AAPL_15min.csv"
    lines = path.read_text().splitlines()
    ts, o, _, low, c, v = lines[5].split(",")
    lines[5] = ",".join([ts, o, str(float(low) - 1), low, c, v])
    path.write_text("\n".join(lines) + "\n")
    project = load_project()
    src = project.env.source
    resources = {
        "market_data": FileBarSourceResource(
            path=str(source),
            pattern=src.pattern,
            format=src.format,
            columns=src.columns.model_dump(exclude_none=True),
            timezone=src.timezone,
            label=src.label,
        ),
        "trading_db": TradingDatabaseResource(url=f"sqlite:///{tmp / 'trading.db'}"),
    }
    (tmp / "dagster").mkdir()
    assets = build_bar_assets(project.universe, project.settings.validation)
    with dg.instance_for_test(temp_dir=str(tmp / "dagster")) as instance:
        result = dg.materialize(
            assets,
            partition_key=PARTITION,
            resources=resources,
            instance=instance,
            raise_on_error=False,
        )
        yield instance, result.run_id


def test_a_run_s_figures_are_read_from_its_event_log(
    bars_run: tuple[dg.DagsterInstance, str],
) -> None:
    instance, run_id = bars_run
    run = pipeline_run(instance, run_id)
    assert run.status in ("SUCCESS", "FAILURE") and run.ended >= run.started
    source = next(m for m in run.materializations if m.asset == "bars_15m")
    meta = source.metadata
    quarantined = meta["quarantined_by_reason"]
    assert sum(quarantined.values()) == meta["rows_quarantined"] >= 1
    assert meta["rows_in"] == meta["rows_stored"] + meta["rows_quarantined"]
    assert source.partition == PARTITION and source.step_seconds is not None
    assert {m.asset for m in run.materializations} >= {"bars_15m", "bars_60m", "bars_1d"}
    assert run.checks and all(c.partition == PARTITION for c in run.checks)


def test_the_sensor_pushes_a_finished_run_and_skips_when_not_configured(
    bars_run: tuple[dg.DagsterInstance, str],
) -> None:
    instance, run_id = bars_run
    success, failure = build_pipeline_metrics_sensors()
    dagster_run = instance.get_run_by_id(run_id)
    assert dagster_run is not None
    sensor = success if dagster_run.status is dg.DagsterRunStatus.SUCCESS else failure
    ended = {dg.DagsterEventType.RUN_SUCCESS, dg.DagsterEventType.RUN_FAILURE}
    (entry,) = instance.all_logs(run_id, of_type=ended)
    event = entry.dagster_event
    recording = RecordingPipelineMetricsResource(name=run_id)

    def evaluate(resource: PipelineMetricsResource) -> Any:
        context = dg.build_run_status_sensor_context(
            sensor_name=sensor.name,
            dagster_instance=instance,
            dagster_run=dagster_run,
            dagster_event=event,
            resources={"pipeline_metrics": resource},
        )
        return sensor(context)

    assert evaluate(recording) is None
    keys = [k for k, _ in recording.pushed]
    assert {"asset": "bars_15m", "partition": PARTITION} in keys
    assert {"dagster_job": dagster_run.job_name} in keys
    skipped = evaluate(PipelineMetricsResource())
    assert isinstance(skipped, dg.SkipReason) and "QUANTDAG_PUSHGATEWAY_URL" in str(
        skipped.skip_message
    )


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[str]:
    _, binary = prometheus_binaries()
    if binary is None:
        pytest.skip("Debian's prometheus-pushgateway is not installed (.ci/run installs it)")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "pushgateway.log").open("w"),
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if requests.get(f"{url}/-/ready", timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError((tmp_path / "pushgateway.log").read_text()[-2000:])
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.integration
def test_a_real_pushgateway_exposes_a_run_s_rows_by_partition(
    bars_run: tuple[dg.DagsterInstance, str], pushgateway: str
) -> None:
    instance, run_id = bars_run
    run = pipeline_run(instance, run_id)
    pushed = push_run_metrics(run, pushgateway)
    assert pushed == len(metric_groups(run))
    text = requests.get(f"{pushgateway}/metrics", timeout=5).text
    series: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        series.setdefault(family.name, []).extend(family.samples)

    def value(name: str, **labels: str) -> float:
        (v,) = [
            s.value for s in series[name] if all(s.labels.get(k) == w for k, w in labels.items())
        ]
        return float(v)

    where = {"job": "quantdag_pipeline", "asset": "bars_15m", "partition": PARTITION}
    rows_in = value("quantdag_pipeline_rows_in", **where)
    stored = value("quantdag_pipeline_rows_stored", **where)
    quarantined = sum(
        s.value
        for s in series["quantdag_pipeline_rows_quarantined"]
        if s.labels["asset"] == "bars_15m" and s.labels["partition"] == PARTITION
    )
    assert rows_in == stored + quarantined and quarantined >= 1  # rows in = stored + quarantined
    source = next(m for m in run.materializations if m.asset == "bars_15m")
    assert rows_in == source.metadata["rows_in"]
    assert value("quantdag_pipeline_run_success", dagster_job=run.job) in (0.0, 1.0)


@pytest.mark.integration
def test_make_run_pushes_where_configured_and_says_so_where_it_cannot(
    bars_run: tuple[dg.DagsterInstance, str],
    pushgateway: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from quantdag.run import push_metrics

    instance, run_id = bars_run
    monkeypatch.setenv("QUANTDAG_PUSHGATEWAY_URL", pushgateway)
    push_metrics(instance, run_id)
    text = requests.get(f"{pushgateway}/metrics", timeout=5).text
    assert 'quantdag_pipeline_rows_in{asset="bars_15m"' in text
    monkeypatch.setenv("QUANTDAG_PUSHGATEWAY_URL", f"http://127.0.0.1:{free_port()}")
    push_metrics(instance, run_id)  # the run goes on
    assert f"metrics of run {run_id} NOT pushed" in capsys.readouterr().out


def test_credentials_in_the_gateway_url_go_in_a_header_never_in_a_message() -> None:
    import base64
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[tuple[str, str | None]] = []

    class Gateway(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append((self.path, self.headers.get("Authorization")))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Gateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    run = PipelineRun("r", "market_data_job", "SUCCESS", 0.0, 1.0)
    try:
        url = f"http://pusher:s3cr%40t@127.0.0.1:{server.server_port}"
        assert push_run_metrics(run, url) == 1
    finally:
        server.shutdown()
        server.server_close()
    ((path, auth),) = seen
    assert path == "/metrics/job/quantdag_pipeline_runs/dagster_job/market_data_job"
    assert auth == "Basic " + base64.b64encode(b"pusher:s3cr@t").decode()
    closed = f"http://pusher:s3cr%40t@127.0.0.1:{free_port()}"
    with pytest.raises(PushError) as refused:
        push_run_metrics(run, closed)
    assert "s3cr" not in str(refused.value) and "127.0.0.1" in str(refused.value)
    with pytest.raises(PushError, match="give http"):
        push_run_metrics(run, "pushgateway:9091")
    with pytest.raises(PushError, match="percent-encoded") as raw:  # a raw / in the password
        push_run_metrics(run, "https://pusher:s3cr/et@gw.example:9091")
    assert "s3cr" not in str(raw.value)
