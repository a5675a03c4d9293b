"""The nightly over two simulated sessions: schedule → data run → (labels) → training → backtest,
each run requested by the real schedule or sensor and executed in process on a temporary
instance, trading database, Parquet, MLflow and Optuna store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import exchange_calendars as xcals
import mlflow
import pandas as pd
import polars as pl
import pytest

from pipelines.config import FileSourceConfig
from quantdag.definitions import build_definitions
from quantdag.project import Project, load_project

ROOT = Path(__file__).resolve().parents[2]
NY = ZoneInfo("America/New_York")
SAMPLE = ROOT / "data" / "sample" / "eqker_15min"
JAN, FEB = "2019-01-01", "2019-02-01"
D1, D2 = date(2019, 2, 7), date(2019, 2, 8)  # D1 within a week of February's start, D2 not


def _tick(session: date) -> datetime:
    return datetime(session.year, session.month, session.day, 18, 30, tzinfo=NY)


def _write_sample_until(directory: Path, last: date) -> None:
    """The bundled sample's files (bar-END New York times) holding the sessions up to ``last``."""
    directory.mkdir(exist_ok=True)
    for path in sorted(SAMPLE.glob("*.csv")):
        header, *rows = path.read_text().splitlines()
        kept = [r for r in rows if r[:10] <= last.isoformat()]
        (directory / path.name).write_text("\n".join([header, *kept]) + "\n")


def _append_session(directory: Path, session: date) -> int:
    """Append ``session``'s rows of the sample to the files; the number of rows appended."""
    added = 0
    for path in sorted(SAMPLE.glob("*.csv")):
        rows = [r for r in path.read_text().splitlines()[1:] if r[:10] == session.isoformat()]
        with (directory / path.name).open("a") as f:
            f.write("".join(r + "\n" for r in rows))
        added += len(rows)
    return added


def _rows_between(directory: Path, first: date, last: date) -> int:
    """Rows of the files in ``directory`` stamped from ``first`` to ``last`` (New York dates)."""
    return sum(
        sum(1 for r in p.read_text().splitlines()[1:] if str(first) <= r[:10] <= str(last))
        for p in directory.glob("*.csv")
    )


@pytest.fixture
def nightly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[dg.Definitions, dg.DagsterInstance, Path, Path]]:
    """The real definitions over temporary stores, the source files holding the sample up to D1,
    and a persistent temporary Dagster instance (sensors need one)."""
    for var in ("QUANTDAG_DATABASE_URL", "QUANTDAG_MLFLOW_URI", "QUANTDAG_OPTUNA_URI"):
        monkeypatch.delenv(var, raising=False)
    project = load_project({})
    env = project.settings.environments["local"]
    assert isinstance(env.source, FileSourceConfig)
    files = tmp_path / "source"
    local = env.model_copy(
        update={
            "source": env.source.model_copy(update={"path": str(files)}),
            "database_url": f"sqlite:///{tmp_path / 'trading.db'}",
        }
    )
    settings = project.settings.model_copy(
        update={"data_dir": str(tmp_path / "store"), "environments": {"local": local}}
    )
    _write_sample_until(files, D1)
    defs = build_definitions(Project(settings, project.universe, "local"))
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        yield defs, instance, files, tmp_path / "store"


def _launch(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    request: dg.RunRequest,
    job_name: str,
    instigator: dict[str, str],
    run_config: dict[str, object] | None = None,
) -> dg.ExecuteInProcessResult:
    """Execute ``request`` in process as the daemon would launch it: its job, partition, assets,
    config and tags, with the run key and the instigator's tag."""
    tags = {**request.tags, "dagster/run_key": str(request.run_key), **instigator}
    result = defs.resolve_job_def(job_name).execute_in_process(
        run_config=request.run_config if run_config is None else run_config,
        partition_key=request.partition_key,
        asset_selection=request.asset_selection,
        tags=tags,
        instance=instance,
    )
    assert result.success
    return result


def _meta(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, object]:
    for event in result.get_asset_materialization_events():
        mat = event.step_materialization_data.materialization
        if mat.asset_key.to_user_string() == asset:
            return {k: v.value for k, v in mat.metadata.items()}
    raise AssertionError(f"{asset} was not materialized by run {result.run_id}")


def test_nightly_learns_each_new_session(nightly) -> None:  # type: ignore[no-untyped-def]
    """D1 is within a week of February's start, so January's labels (their horizon reads a week
    past the month) are rebuilt before training; D2 is not, so training follows the data run."""
    defs, instance, files, store = nightly
    repo = defs.get_repository_def()
    schedule = defs.resolve_schedule_def("nightly_retraining_schedule")
    training_sensor = defs.resolve_sensor_def("nightly_training_sensor")
    backtest_sensor = defs.resolve_sensor_def("nightly_backtest_sensor")
    by_sensor = {"dagster/sensor_name": "nightly_training_sensor"}
    by_backtest_sensor = {"dagster/sensor_name": "nightly_backtest_sensor"}

    def evaluate(
        sensor: dg.SensorDefinition, cursor: str | None
    ) -> tuple[list[dg.RunRequest], str | None]:
        data = sensor.evaluate_tick(
            dg.build_sensor_context(instance=instance, cursor=cursor, repository_def=repo)
        )
        return list(data.run_requests or []), data.cursor

    # The daemon starts the sensors before any run: their cursors begin at the latest event.
    _, train_cursor = evaluate(training_sensor, None)
    _, backtest_cursor = evaluate(backtest_sensor, None)

    # History as a backfill leaves it: January, bars to labels, launched by hand.
    data_job = defs.resolve_job_def("all_assets_job")
    assert data_job.execute_in_process(partition_key=JAN, instance=instance).success
    requests, train_cursor = evaluate(training_sensor, train_cursor)
    assert requests == []  # a run the nightly did not start trains nothing

    trained: dict[date, dict[str, object]] = {}
    data_ends: dict[date, str] = {}
    for session in (D1, D2):
        appended = _append_session(files, session) if session == D2 else 0
        tick = dg.build_schedule_context(
            instance=instance, scheduled_execution_time=_tick(session), repository_def=repo
        )
        [data_request] = schedule.evaluate_tick(tick).run_requests or []
        assert data_request.run_key == f"nightly-{session}-data"
        assert data_request.partition_key == FEB
        as_of = _tick(session).astimezone(UTC).isoformat()
        assert data_request.run_config == {"ops": {"bars_15m": {"config": {"as_of": as_of}}}}
        data_run = _launch(defs, instance, data_request, "all_assets_job", {})
        ingest = _meta(data_run, "bars_15m")
        assert ingest["as_of"] == as_of
        if session == D1:  # the month's first nightly: February up to D1
            assert ingest["rows_in"] == _rows_between(files, date(2019, 2, 1), D1) > 0
        else:  # only the new session was fetched: every row appended, none of the days before
            assert ingest["rows_in"] == ingest["rows_stored"] == appended > 0
        built = {e.asset_key.to_user_string() for e in data_run.get_asset_materialization_events()}
        assert built == {
            "bars_15m",
            "bars_60m",
            "bars_1d",
            "feature_matrix",
            "triple_barrier_labels",
        }
        before_labels = train_cursor
        if session == D1:
            # Within a week of February's start: January's labels read the session's bars.
            assert data_request.tags["quantdag/nightly_label_months"] == JAN
            [labels_request], train_cursor = evaluate(training_sensor, train_cursor)
            assert labels_request.run_key == f"nightly-{session}-labels-{JAN}"
            assert labels_request.partition_key == JAN
            assert labels_request.asset_selection == [dg.AssetKey("triple_barrier_labels")]
            labels_run = _launch(defs, instance, labels_request, "all_assets_job", by_sensor)
            assert _meta(labels_run, "triple_barrier_labels")["rows"]
        else:
            assert "quantdag/nightly_label_months" not in data_request.tags

        # Training, in full mode as requested (run here in quick mode, for time).
        before_training = train_cursor
        [train_request], train_cursor = evaluate(training_sensor, train_cursor)
        assert (train_request.job_name, train_request.run_key) == (
            "training_job",
            f"nightly-{session}-training",
        )
        assert train_request.run_config == {
            "ops": {"walk_forward_models": {"config": {"mode": "full"}}}
        }
        quick = {"ops": {"walk_forward_models": {"config": {"mode": "quick"}}}}
        train_run = _launch(defs, instance, train_request, "training_job", by_sensor, quick)
        trained[session] = _meta(train_run, "training_set")
        run_id = pl.read_parquet(store / "parquet" / "champion_model" / "all.parquet")["run_id"][0]
        client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
        data_ends[session] = client.get_run(run_id).data.tags["data_end"]

        # Then the backtest on the new out-of-sample predictions.
        before_backtest = backtest_cursor
        [backtest_request], backtest_cursor = evaluate(backtest_sensor, backtest_cursor)
        assert backtest_request.run_key == f"nightly-{session}-backtest"
        backtest_run = _launch(defs, instance, backtest_request, "backtest_job", by_backtest_sensor)
        assert Path(str(_meta(backtest_run, "backtest_report")["report"])).exists()

        # The same ticks evaluated again request nothing: no second ingestion, training or
        # backtest (the schedule and each sensor find the session's run of their step).
        again = schedule.evaluate_tick(tick)
        assert not again.run_requests and "already has its data run" in (again.skip_message or "")
        for cursor in (before_labels, before_training, train_cursor):
            assert evaluate(training_sensor, cursor)[0] == []
        for cursor in (before_backtest, backtest_cursor):
            assert evaluate(backtest_sensor, cursor)[0] == []

    ends = {
        s: datetime.fromisoformat(str(m["end"])).astimezone(NY).date() for s, m in trained.items()
    }
    # The second model learnt from one session more than the first.
    assert ends == {D1: D1, D2: D2}
    assert xcals.get_calendar("XNYS").next_session(pd.Timestamp(D1)).date() == D2
    assert {s: e[:10] for s, e in data_ends.items()} == {D1: str(D1), D2: str(D2)}
    assert data_ends[D1] == str(trained[D1]["end"]) and data_ends[D2] == str(trained[D2]["end"])


def test_ingestion_runs_up_to_the_configured_as_of(tmp_path: Path) -> None:
    """The source holds the whole sample; ``as_of`` (the nightly's tick) bounds what is fetched."""
    from assets.bars import IngestConfig, build_source_bars_asset
    from resources import FileBarSourceResource, TradingDatabaseResource

    project = load_project({})
    source = project.env.source
    assert isinstance(source, FileSourceConfig)
    asset = build_source_bars_asset(project.universe, project.settings.validation)
    as_of = _tick(date(2019, 2, 12))
    result = asset(
        context=dg.build_asset_context(partition_key=FEB),
        config=IngestConfig(as_of=as_of.isoformat()),
        market_data=FileBarSourceResource.from_config(source),
        trading_db=TradingDatabaseResource(url=f"sqlite:///{tmp_path / 'trading.db'}"),
    )
    # Bar-END stamps in the files: the rows of February 1 to 12, and none later.
    expected = _rows_between(SAMPLE, date(2019, 2, 1), date(2019, 2, 12))
    assert result.metadata["rows_in"] == result.metadata["rows_stored"] == expected
    assert result.metadata["as_of"] == as_of.astimezone(UTC).isoformat()


def test_as_of_must_name_its_offset_and_not_be_in_the_future() -> None:
    from assets.bars import IngestConfig, ingest_as_of

    now = datetime(2019, 2, 13, tzinfo=UTC)
    assert ingest_as_of(IngestConfig(), now) == now
    assert ingest_as_of(IngestConfig(as_of="2019-02-12T18:30:00-05:00"), now) == datetime(
        2019, 2, 12, 23, 30, tzinfo=UTC
    )
    with pytest.raises(ValueError, match="no UTC offset"):
        ingest_as_of(IngestConfig(as_of="2019-02-12T18:30:00"), now)
    with pytest.raises(ValueError, match="later than now"):
        ingest_as_of(IngestConfig(as_of="2019-02-13T00:00:01+00:00"), now)
