"""The Parquet store and the file market-data source on S3-compatible object storage: a real S3
server (moto's, on 127.0.0.1) reached through s3fs exactly as AWS S3 or MinIO would be, the
credentials and endpoint from the environment only."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pipelines.data.object_store import LocationError, s3_options
from pipelines.data.sources import FileBarSource
from pipelines.timeframes import Timeframe
from quantdag.project import load_project
from quantdag.resources import parquet_io_manager
from resources import FileBarSourceResource, PolarsParquetIOManager
from tests.conftest import ROOT

moto_server = pytest.importorskip(
    "moto.server", reason="moto[server] (a dev dependency) gives the local S3 server"
)
boto3 = pytest.importorskip("boto3", reason="moto[server] brings boto3")

pytestmark = pytest.mark.integration
MONTHS = ["2019-01-01", "2019-02-01", "2019-03-01"]
MONTHLY = dg.MonthlyPartitionsDefinition(start_date="2019-01-01", end_date="2019-04-01")


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@dataclass
class S3:
    bucket: str
    client: Any
    key_id: str
    secret: str
    endpoint: str

    def keys(self, prefix: str = "") -> list[str]:
        listed = self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for o in listed.get("Contents", []))


@pytest.fixture
def s3(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> S3:
    """A fresh bucket, and unique credentials planted in the QUANTDAG_S3_ variables only."""
    key_id, secret = f"AKIA{uuid.uuid4().hex[:16].upper()}", f"planted-{uuid.uuid4().hex}"
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask an instance's role
    monkeypatch.setenv("QUANTDAG_S3_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("QUANTDAG_S3_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("QUANTDAG_S3_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("QUANTDAG_S3_REGION", "us-east-1")
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        region_name="us-east-1",
    )
    bucket = f"quantdag-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return S3(bucket, client, key_id, secret, endpoint)


def _frame(month: str, rows: int = 3) -> pl.DataFrame:
    return pl.DataFrame({"month": [month] * rows, "x": [float(i) for i in range(rows)]})


def _store(manager: PolarsParquetIOManager, month: str, frame: pl.DataFrame) -> dict[str, Any]:
    context = dg.build_output_context(asset_key=["features", "f"], partition_key=month)
    manager.handle_output(context, frame)
    return {k: v.value for k, v in context.get_logged_metadata().items()}


def _load(
    manager: PolarsParquetIOManager, months: list[str], allow_missing: bool = False
) -> pl.DataFrame:
    context = dg.build_input_context(
        asset_key=["features", "f"],
        asset_partitions_def=MONTHLY,
        asset_partition_key_range=dg.PartitionKeyRange(months[0], months[-1]),
        definition_metadata={"allow_missing_partitions": allow_missing},
    )
    return manager.load_input(context)


def test_partitioned_frames_round_trip_and_overwrite(s3: S3) -> None:
    manager = PolarsParquetIOManager(base_dir=f"s3://{s3.bucket}/research/")
    frames = {m: _frame(m, rows=i + 2) for i, m in enumerate(MONTHS)}
    shown = {m: _store(manager, m, f) for m, f in frames.items()}
    assert shown["2019-02-01"] == {
        "path": f"s3://{s3.bucket}/research/features/f/2019-02-01.parquet",
        "rows": 3,
    }
    # Each partition is one object where the metadata says, and nothing else was written.
    assert s3.keys() == [f"research/features/f/{m}.parquet" for m in MONTHS]
    assert_frame_equal(_load(manager, MONTHS), pl.concat(frames.values()))

    replacement = _frame("2019-02-01", rows=7).with_columns(pl.col("x") * 10)
    _store(manager, "2019-02-01", replacement)
    assert_frame_equal(_load(manager, ["2019-02-01"]), replacement)
    assert s3.keys() == [f"research/features/f/{m}.parquet" for m in MONTHS]
    uploads = s3.client.list_multipart_uploads(Bucket=s3.bucket)
    assert not uploads.get("Uploads"), "an unfinished upload was left behind"


def test_a_missing_partition_is_an_error_that_says_what_to_run(s3: S3) -> None:
    manager = PolarsParquetIOManager(base_dir=f"s3://{s3.bucket}/research")
    _store(manager, "2019-01-01", _frame("2019-01-01"))
    with pytest.raises(FileNotFoundError) as err:
        _load(manager, MONTHS)
    text = str(err.value)
    assert "features/f: no stored frame for 2019-02-01, 2019-03-01" in text
    assert f"under s3://{s3.bucket}/research/features/f/" in text
    assert "--select features/f --partition 2019-02-01" in text
    assert s3.secret not in text and s3.key_id not in text


def test_allow_missing_partitions_reads_what_is_stored(s3: S3) -> None:
    manager = PolarsParquetIOManager(base_dir=f"s3://{s3.bucket}/research")
    _store(manager, "2019-01-01", _frame("2019-01-01"))
    _store(manager, "2019-03-01", _frame("2019-03-01", rows=4))
    loaded = _load(manager, MONTHS, allow_missing=True)
    assert loaded["month"].value_counts(sort=True).rows() == [("2019-03-01", 4), ("2019-01-01", 3)]
    with pytest.raises(FileNotFoundError, match="no partition has been materialized yet"):
        _load(PolarsParquetIOManager(base_dir=f"s3://{s3.bucket}/empty"), MONTHS, True)


def test_a_missing_bucket_is_named(s3: S3) -> None:
    manager = PolarsParquetIOManager(base_dir=f"s3://{s3.bucket}-absent/research")
    with pytest.raises(FileNotFoundError, match=f"s3://{s3.bucket}-absent: the bucket does not"):
        _load(manager, MONTHS)


def test_credentials_never_go_in_the_url_or_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    project = load_project({})
    monkeypatch.setenv("QUANTDAG_PARQUET_URL", "s3://AKIAEXAMPLE:hunter2@bucket/parquet")
    with pytest.raises(LocationError, match="QUANTDAG_PARQUET_URL: s3://\\*\\*\\*@bucket") as err:
        parquet_io_manager(project)
    assert "hunter2" not in str(err.value)
    monkeypatch.setenv("QUANTDAG_PARQUET_URL", "gs://bucket/parquet")
    with pytest.raises(LocationError, match="gs:// scheme is not supported"):
        parquet_io_manager(project)
    monkeypatch.setenv("QUANTDAG_PARQUET_URL", "s3://bucket/parquet")
    manager = parquet_io_manager(project)
    assert manager.base_dir == "s3://bucket/parquet"
    assert set(type(manager).model_fields) == {"base_dir"}  # nothing else the UI could show
    monkeypatch.delenv("QUANTDAG_PARQUET_URL")
    assert parquet_io_manager(project).base_dir == ".quantdag/parquet"
    half = {"QUANTDAG_S3_ACCESS_KEY_ID": "k"}
    with pytest.raises(LocationError, match="QUANTDAG_S3_SECRET_ACCESS_KEY is not set"):
        s3_options(half)
    assert s3_options({"AWS_ENDPOINT_URL": "http://minio:9000", "AWS_REGION": "eu-west-1"}) == {
        "use_listings_cache": False,
        "client_kwargs": {"endpoint_url": "http://minio:9000", "region_name": "eu-west-1"},
    }


def _upload_sample(s3: S3, prefix: str) -> None:
    for path in sorted((ROOT / "data" / "sample" / "eqker_15min").glob("*.csv")):
        s3.client.put_object(Bucket=s3.bucket, Key=f"{prefix}/{path.name}", Body=path.read_bytes())


def test_the_file_source_reads_a_bucket_as_it_reads_a_directory(s3: S3) -> None:
    _upload_sample(s3, "vendor/eqker_15min")
    project = load_project({})
    local = project.env.source
    remote = local.model_copy(update={"path": f"s3://{s3.bucket}/vendor/eqker_15min"})
    tf = Timeframe.parse("15m")
    on_disk = FileBarSource(local, tf, root=ROOT)
    in_bucket = FileBarSource(remote, tf, storage_options=s3_options(dict(os.environ)))
    assert in_bucket.name == on_disk.name == "files:eqker_15min"
    assert in_bucket.file_names(None) == on_disk.file_names(None)
    assert in_bucket.file_names(["AAPL", "MSFT"]) == ["AAPL_15min.csv", "MSFT_15min.csv"]
    window = datetime(2019, 1, 1, tzinfo=UTC), datetime(2019, 3, 1, tzinfo=UTC)
    symbols = ["AAPL", "JPM", "SPY"]
    assert_frame_equal(
        in_bucket.fetch(symbols, *window, universe=symbols),
        on_disk.fetch(symbols, *window, universe=symbols),
    )
    with pytest.raises(ValueError, match="no file for NOPE"):
        in_bucket.fetch(["NOPE"], *window, universe=["NOPE"])


def test_features_and_labels_materialize_through_s3(s3: S3, tmp_path: Any) -> None:
    """The project's real assets on the bundled sample, bars read from the bucket and features
    and labels stored in it; the credentials appear nowhere in the run's events."""
    from assets.bars import build_bar_assets
    from assets.research import build_research_assets
    from resources import MlflowResource, OptunaResource, TradingDatabaseResource
    from resources.alerts import RecordingAlertsResource

    _upload_sample(s3, "vendor/eqker_15min")
    project = load_project({})
    src = project.env.source
    resources = {
        "market_data": FileBarSourceResource(
            path=f"s3://{s3.bucket}/vendor/eqker_15min",
            pattern=src.pattern,
            format=src.format,
            columns=src.columns.model_dump(exclude_none=True),
            timezone=src.timezone,
            label=src.label,
        ),
        "trading_db": TradingDatabaseResource(url=f"sqlite:///{tmp_path / 'trading.db'}"),
        "parquet_io_manager": PolarsParquetIOManager(base_dir=f"s3://{s3.bucket}/parquet"),
        "mlflow": MlflowResource(
            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
            experiment="t",
            model_name="t",
            ui_url="http://mlflow.test",
        ),
        "optuna": OptunaResource(storage=f"sqlite:///{tmp_path / 'optuna.db'}"),
        "alerts": RecordingAlertsResource(),
    }
    bars = build_bar_assets(project.universe, project.settings.validation)
    research = build_research_assets(project.universe, project.settings)
    instance = dg.DagsterInstance.ephemeral()
    for month in ("2019-01-01", "2019-02-01"):
        assert dg.materialize(
            bars[:1], partition_key=month, resources=resources, instance=instance
        ).success
    result = dg.materialize(
        [*bars[:1], *research],
        partition_key="2019-02-01",
        resources=resources,
        instance=instance,
        selection=["feature_matrix", "triple_barrier_labels"],
    )
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["point_in_time"] and checks["within_vertical_barrier"]
    assert s3.keys("parquet/") == [
        "parquet/feature_matrix/2019-02-01.parquet",
        "parquet/triple_barrier_labels/2019-02-01.parquet",
    ]
    meta = result.asset_materializations_for_node("feature_matrix")[0].metadata
    assert meta["path"].value == f"s3://{s3.bucket}/parquet/feature_matrix/2019-02-01.parquet"
    stored = pl.read_parquet(
        s3.client.get_object(Bucket=s3.bucket, Key="parquet/feature_matrix/2019-02-01.parquet")[
            "Body"
        ].read()
    )
    assert stored.height == meta["rows"].value > 0

    runs = instance.get_runs()
    assert len(runs) == 3
    everything = json.dumps([str(e) for run in runs for e in instance.all_logs(run.run_id)])
    assert "feature_matrix" in everything  # the search reads the run's events
    for secret in (s3.key_id, s3.secret, s3.endpoint):
        assert secret not in everything
