"""No secret anywhere a user can see it.

``make run``'s entry point (``python -m quantdag.run``) runs with a recognisable secret planted
in every variable that may hold one: the passwords of the trading database, the MLflow store,
the Optuna storage and Dagster's own storage (four fresh databases on the local PostgreSQL,
whose trust authentication ignores the password) and the Alpaca keys (the paper environment,
on the bundled Alpaca-compatible server, which refuses any other keys: the keys are really
used). Then every place the run writes to is searched for every secret: its output, Dagster's
event log, runs and snapshots, every table of the four databases, and every file written under
the test's directory (Parquet read column by column, SQLite files table by table, compressed
blobs decompressed). The UI's view of the definitions is searched the same way.

Duration, on the 2-core development machine shared with other work: the run takes 33 s (load
2.3) to 59 s (load 5.5), the whole test 36-65 s. Without ``OMP_WAIT_POLICY=PASSIVE``, which the
run is given here (it changes no result), it took 85-110 s at load 5-6: LightGBM's two OpenMP
threads spin-wait for cores that other processes hold (the quick walk-forward alone: 20-56 s,
against 8-11 s with passive waiting or one thread). The rest: start-up 20 s where
``PYTHONDONTWRITEBYTECODE`` is set (every module compiled again; 6 s with a bytecode cache),
the bars and features of two months 15 s, MLflow's migrations of a fresh store 5 s (7 s on
SQLite), Dagster's PostgreSQL event log a new connection per event (about 1,000, 6 s).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

from quantdag.testing.alpaca_server import AlpacaFakeServer, sample_bars
from tests.secrets_search import Search, postgres_rows, scan_file, scan_rows

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
VARIABLES = (
    "QUANTDAG_DATABASE_URL",
    "QUANTDAG_MLFLOW_URI",
    "QUANTDAG_OPTUNA_URI",
    "DAGSTER_PG_URL",
    "APCA_API_KEY_ID",
    "APCA_API_SECRET_KEY",
)
DATABASES = {  # variable -> the SQLAlchemy driver its consumer expects
    "QUANTDAG_DATABASE_URL": "postgresql+psycopg",
    "QUANTDAG_MLFLOW_URI": "postgresql+psycopg",
    "QUANTDAG_OPTUNA_URI": "postgresql+psycopg",
    "DAGSTER_PG_URL": "postgresql",  # dagster-postgres (psycopg2)
}
PARTITIONS = ("2019-01-01", "2019-02-01")  # the months of the bundled sample


def _fresh_databases(admin_url: str, secrets: dict[str, str]) -> dict[str, str]:
    """One fresh database per URL variable; its URL carries the variable's planted secret."""
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    urls = {}
    with admin.connect() as conn:
        for variable, driver in DATABASES.items():
            name = f"quantdag_secrets_{variable.split('_')[-2].lower()}_{uuid.uuid4().hex[:8]}"
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
            url = sa.make_url(admin_url).set(
                drivername=driver, password=secrets[variable], database=name
            )
            urls[variable] = url.render_as_string(hide_password=False)
    admin.dispose()
    return urls


def _drop_databases(admin_url: str, urls: dict[str, str]) -> None:
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for url in urls.values():
            conn.exec_driver_sql(
                f'DROP DATABASE IF EXISTS "{sa.make_url(url).database}" WITH (FORCE)'
            )
    admin.dispose()


def _without_password(url: str) -> str:
    """The test reads the databases back as the admin (trust authentication, no password)."""
    return sa.make_url(url).set(drivername="postgresql+psycopg", password=None).render_as_string()


@pytest.fixture
def planted() -> dict[str, str]:
    """A recognisable, unique secret per variable and per run."""
    return {
        v: f"S3cr3t-{v.split('_', 1)[1].lower().replace('_', '')}-{uuid.uuid4().hex}"
        for v in VARIABLES
    }


@pytest.fixture
def databases(pg_server: str, planted: dict[str, str]) -> Iterator[dict[str, str]]:
    urls = _fresh_databases(pg_server, planted)
    try:
        yield urls
    finally:
        _drop_databases(pg_server, urls)


def _settings(tmp_path: Path) -> Path:
    """The repository's settings and universe, with every file the run writes under tmp_path."""
    settings = yaml.safe_load((ROOT / "config" / "settings.yaml").read_text())
    settings["universe"] = str(ROOT / "config" / "universe.yaml")
    settings["data_dir"] = str(tmp_path / "data")
    for name, env in settings["environments"].items():
        env["database_url"] = f"sqlite:///{tmp_path / 'data' / f'trading-{name}.db'}"
        env.pop("research", None)  # the sample's holdout, so that its reading is searched too
        if env["source"]["kind"] == "files":
            env["source"]["path"] = str(ROOT / env["source"]["path"])
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.mark.slow  # the whole of make run (see the module docstring)
def test_make_run_leaves_no_secret_anywhere(
    tmp_path: Path,
    planted: dict[str, str],
    databases: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dagster_home, workdir = tmp_path / "dagster_home", tmp_path / "work"
    dagster_home.mkdir()
    workdir.mkdir()  # the working directory: MLflow's artifacts go to ./mlruns
    (dagster_home / "dagster.yaml").write_text(
        (ROOT / "deploy" / "dagster.postgres.yaml").read_text()
    )
    values = {**planted, **databases}
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("QUANTDAG_", "DAGSTER_", "APCA_"))
    }
    env |= {
        **values,
        "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
        "DAGSTER_HOME": str(dagster_home),
        "QUANTDAG_SETTINGS": str(_settings(tmp_path)),
        "QUANTDAG_ENV": "paper",
        # OpenMP threads that sleep while waiting: LightGBM's spin-waiting threads are several
        # times slower on a machine whose cores are busy (see the module docstring).
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    keys = {"api_key": planted["APCA_API_KEY_ID"], "secret_key": planted["APCA_API_SECRET_KEY"]}
    with AlpacaFakeServer(sample_bars(), **keys) as server:
        env["APCA_DATA_URL"] = server.url
        started = time.monotonic()
        run = subprocess.run(
            [sys.executable, "-m", "quantdag.run", *(f"--partition={p}" for p in PARTITIONS)],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=540,
        )
        elapsed = time.monotonic() - started
    (tmp_path / "stdout.txt").write_text(run.stdout)
    (tmp_path / "stderr.txt").write_text(run.stderr)
    print(f"python -m quantdag.run took {elapsed:.1f} s")
    assert run.returncode == 0, f"make run failed:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}"
    assert server.requests, "the paper environment fetched its bars with the planted keys"

    search = Search(planted)
    search.scan("stdout", run.stdout)
    search.scan("stderr", run.stderr)

    # Dagster, as the UI reads it: runs (config, tags), event logs, job and plan snapshots.
    monkeypatch.setenv("DAGSTER_PG_URL", databases["DAGSTER_PG_URL"])
    materialized: Counter[str] = Counter()
    links: list[str] = []
    named: set[str] = set()  # variables whose names the stored job snapshots hold
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = instance.get_runs()
        for r in runs:
            search.scan("dagster run", dg.serialize_value(r))
            snapshot = dg.serialize_value(instance.get_job_snapshot(r.job_snapshot_id))
            search.scan("dagster job snapshot", snapshot)
            named |= {v for v in VARIABLES if v in snapshot}
            plan = instance.get_execution_plan_snapshot(r.execution_plan_snapshot_id)
            search.scan("dagster plan snapshot", dg.serialize_value(plan))
            for entry in instance.all_logs(r.run_id):
                search.scan("dagster event log", dg.serialize_value(entry))
                mat = entry.asset_materialization
                if mat is not None:
                    materialized[mat.asset_key.to_user_string()] += 1
                    if "mlflow_run" in mat.metadata:
                        links.append(str(mat.metadata["mlflow_run"].value))
        assert {r.job_name for r in runs} == {
            "market_data_job",
            "research_job",
            "training_job",
            "backtest_job",
        } and len(runs) == 2 * len(PARTITIONS) + 2
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    # Each partition of each asset once: bars in the market-data job, the rest in the research job.
    assert materialized["bars_15m"] == materialized["feature_matrix"] == len(PARTITIONS)
    assert materialized["champion_model"] == materialized["backtest_report"] == 1
    # The resources' config, stored with each run, names the variables it reads.
    assert named == set(VARIABLES) - {"DAGSTER_PG_URL"}

    # Every row of every table of the four databases (Dagster's storage included).
    counts = {}
    for variable, url in databases.items():
        rows = list(postgres_rows(_without_password(url)))
        counts[variable] = Counter(table for table, _ in rows)
        scan_rows(search, variable, iter(rows))
    assert counts["QUANTDAG_DATABASE_URL"]["bars"] > 10_000
    # One training run and its model version; one run per backtest trial (a 3 x 2 grid).
    assert counts["QUANTDAG_MLFLOW_URI"]["model_versions"] == 1
    assert counts["QUANTDAG_MLFLOW_URI"]["runs"] == 1 + 6
    assert (
        counts["DAGSTER_PG_URL"]["event_logs"] > 100 and counts["DAGSTER_PG_URL"]["snapshots"] > 0
    )
    # make run trains in quick mode, which does not tune: the Optuna storage is never opened.
    # (Optuna's own tables are searched in tests/models/test_stores.py.)
    assert counts["QUANTDAG_OPTUNA_URI"] == Counter(), "make run now tunes: assert its study here"

    # Every file written under tmp_path: Parquet, reports, MLflow artifacts, Dagster's files.
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    for path in files:
        scan_file(search, path, tmp_path)
    names = {p.relative_to(tmp_path).as_posix() for p in files}
    assert any(n.startswith("data/reports/backtest_") and n.endswith(".html") for n in names)
    assert any(n.startswith("work/mlruns/") and n.endswith("model/model.txt") for n in names)
    assert {
        "data/parquet/oos_predictions/all.parquet",
        "data/parquet/training_set/all.parquet",
        "data/parquet/holdout_predictions/all.parquet",
    } <= names
    assert search.searched["parquet text columns"] > 10

    print(f"searched: {dict(search.searched)}")
    assert not search.hits, "secrets found:\n" + "\n".join(search.hits)
    # What is shown still says where: the MLflow run's store, the trading database.
    mlflow_db = sa.make_url(databases["QUANTDAG_MLFLOW_URI"]).database
    trading_db = sa.make_url(databases["QUANTDAG_DATABASE_URL"]).database
    assert len(links) == 2  # the champion decision and the holdout's reading
    assert all(
        link.startswith(f"postgresql+psycopg://***@127.0.0.1:5432/{mlflow_db} run ")
        for link in links
    )
    assert f"Trading database: postgresql+psycopg://***@127.0.0.1:5432/{trading_db}" in run.stdout


UI_QUERY = """
query UiView($repository: RepositorySelector!) {
  allTopLevelResourceDetailsOrError(repositorySelector: $repository) {
    __typename
    ... on ResourceDetailsList {
      results { name configuredValues { key value type } configFields { name defaultValueAsJson } }
    }
    ... on PythonError { message }
  }
  repositoryOrError(repositorySelector: $repository) {
    __typename
    ... on Repository { jobs { name } }
  }
}
"""
LAUNCHPAD_QUERY = """
query Launchpad($job: PipelineSelector!) {
  runConfigSchemaOrError(selector: $job) {
    __typename
    ... on RunConfigSchema { rootDefaultYaml }
    ... on PythonError { message }
  }
}
"""
# The resource fields that read a secret, and the variable each must show instead of its value.
SECRET_FIELDS = {
    ("trading_db", "url"): "QUANTDAG_DATABASE_URL",
    ("mlflow", "tracking_uri"): "QUANTDAG_MLFLOW_URI",
    ("optuna", "storage"): "QUANTDAG_OPTUNA_URI",
    ("market_data", "api_key"): "APCA_API_KEY_ID",
    ("market_data", "secret_key"): "APCA_API_SECRET_KEY",
    ("pipeline_metrics", "gateway_url"): "QUANTDAG_PUSHGATEWAY_URL",
    ("alerts", "webhook_url"): "QUANTDAG_ALERT_WEBHOOK_URL",
    ("alerts", "smtp_password"): "QUANTDAG_ALERT_SMTP_PASSWORD",
}
# Secrets the definitions' resources read besides VARIABLES, and how each is written.
UI_SECRETS = {
    "QUANTDAG_PUSHGATEWAY_URL": "http://pusher:{}@127.0.0.1:9091",
    "QUANTDAG_ALERT_WEBHOOK_URL": "https://hooks.example.com/services/{}",
    "QUANTDAG_ALERT_SMTP_PASSWORD": "{}",
    "QUANTDAG_S3_ACCESS_KEY_ID": "{}",
    "QUANTDAG_S3_SECRET_ACCESS_KEY": "{}",
}


def test_the_ui_shows_variable_names_not_values(
    tmp_path: Path, planted: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The code location as the webserver loads it (the paper environment, every secret set):
    its resources page, the launchpad's default config of every job, and the whole repository
    snapshot the webserver receives hold the variables' names, never their values."""
    from dagster._core.test_utils import in_process_test_workspace
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster_graphql.test.utils import (
        execute_dagster_graphql,
        infer_repository,
        infer_repository_selector,
    )

    planted = {**planted, **{v: f"S3cr3t-ui-{uuid.uuid4().hex}" for v in UI_SECRETS}}
    for variable, secret in planted.items():
        value = (
            f"postgresql://postgres:{secret}@127.0.0.1:5432/x"
            if variable in DATABASES
            else UI_SECRETS.get(variable, "{}").format(secret)
        )
        monkeypatch.setenv(variable, value)
    monkeypatch.setenv("QUANTDAG_PARQUET_URL", "s3://quantdag-frames/parquet")
    monkeypatch.setenv("QUANTDAG_ENV", "paper")
    monkeypatch.setenv("QUANTDAG_SETTINGS", str(_settings(tmp_path)))
    # A fresh module, so that the definitions are built under this environment.
    module = tmp_path / "ui_definitions.py"
    module.write_text(
        "from quantdag.definitions import build_definitions\n"
        "from quantdag.project import load_project\n\n"
        "defs = build_definitions(load_project())\n"
    )
    origin = LoadableTargetOrigin(
        python_file=str(module), attribute="defs", working_directory=str(ROOT)
    )
    search = Search(planted)
    with (
        dg.instance_for_test() as instance,
        in_process_test_workspace(instance, origin) as context,
    ):
        repository = infer_repository_selector(context)
        view = execute_dagster_graphql(context, UI_QUERY, {"repository": repository}).data
        search.scan("graphql resources and jobs", json.dumps(view))
        jobs = [j["name"] for j in view["repositoryOrError"]["jobs"]]
        launchpad = {}
        for job in jobs:
            selector = {**repository, "pipelineName": job}
            schema = execute_dagster_graphql(context, LAUNCHPAD_QUERY, {"job": selector}).data
            assert schema["runConfigSchemaOrError"]["__typename"] == "RunConfigSchema"
            launchpad[job] = schema["runConfigSchemaOrError"]["rootDefaultYaml"]
            search.scan(f"launchpad:{job}", launchpad[job])
        remote = infer_repository(context)
        search.scan("repository snapshot", dg.serialize_value(remote.repository_snap))
        for job in jobs:
            snapshot = remote.get_full_job(job).job_snapshot
            search.scan("job snapshot", dg.serialize_value(snapshot))

    assert not search.hits, "secrets shown in the UI:\n" + "\n".join(search.hits)
    resources = view["allTopLevelResourceDetailsOrError"]
    assert resources["__typename"] == "ResourceDetailsList"
    shown = {
        (r["name"], v["key"]): (v["type"], v["value"])
        for r in resources["results"]
        for v in r["configuredValues"]
    }
    assert {k: shown[k] for k in SECRET_FIELDS} == {
        k: ("ENV_VAR", variable) for k, variable in SECRET_FIELDS.items()
    }
    assert {"all_assets_job", "market_data_job", "training_job", "backtest_job"} <= set(jobs)
    assert "env: APCA_API_SECRET_KEY" in launchpad["market_data_job"]
    assert "env: QUANTDAG_OPTUNA_URI" in launchpad["training_job"]
