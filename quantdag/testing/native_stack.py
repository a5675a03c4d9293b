"""The docker-compose stack run natively on one machine, for tests and ``make bench``: no Docker.

:func:`native_stack` starts what ``docker-compose.yml`` deploys, each service a process of its
own on 127.0.0.1 with a free port, and stops every one of them (its whole process group) on
exit, whatever happened:

- throw-away PostgreSQL databases on a local server: Dagster's storage (dagster-postgres,
  ``deploy/dagster.postgres.yaml`` via ``DAGSTER_PG_URL``), the trading database
  (``QUANTDAG_DATABASE_URL``, Optuna's studies too) and MLflow's tracking store; dropped on exit;
- ``dagster api grpc`` serving the project's Definitions (the compose ``code`` service: runs are
  launched from it, so its environment is every run's);
- ``dagster-webserver`` and ``dagster-daemon`` on a temporary ``DAGSTER_HOME`` holding that
  instance config (queued run coordinator), with a workspace naming the gRPC server;
- optional services (:data:`OPTIONAL`): ``mlflow server`` on the MLflow database
  (``QUANTDAG_MLFLOW_URI`` points at it; without it, a SQLite store in the work directory),
  ``prometheus-pushgateway`` (``QUANTDAG_PUSHGATEWAY_URL``), and ``prometheus`` with
  ``deploy/prometheus/prometheus.yml`` and its alert rules, its targets moved to the loopback
  ports and a job scraping Prometheus itself.

The settings file is copied into the work directory with ``data_dir`` moved there, so Parquet
frames and reports never land in the project's ``.quantdag``. Example::

    with native_stack(tmp_path) as stack:
        run_id = stack.submit("market_data_job", partition="2019-01-01", run_config=IN_PROCESS)
        assert stack.wait_for_runs([run_id])[run_id] == "SUCCESS"
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import requests
import sqlalchemy as sa
import yaml

from quantdag.project import DEFAULT_SETTINGS, PROJECT_ROOT

DEPLOY = PROJECT_ROOT / "deploy"
PG_ADMIN_URL = os.environ.get(
    "QUANTDAG_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
LOCATION = "quantdag"
REPOSITORY = "__repository__"  # the name Dagster gives the one repository of a Definitions
TERMINAL = frozenset({"SUCCESS", "FAILURE", "CANCELED"})
OPTIONAL = ("mlflow", "pushgateway", "prometheus")
"""Services started beside Dagster's three unless left out."""
EXCEPTION_LINE = re.compile(r"^\s*(\w+\.)*\w*(Error|Exception|Exit)\b: ")
BIN = Path(sys.executable).parent  # the environment's console scripts (dagster, mlflow)
IN_PROCESS: dict[str, Any] = {"execution": {"config": {"in_process": {}}}}
"""Run config running a run's steps in the run's own process. The jobs' default executor starts
a process per step, and each loads the project's definitions again (about 7 s of CPU each)."""


class StackError(RuntimeError):
    """A service of the native stack did not start, or a run did not finish in time; the
    message names the service and ends with its log's last lines."""


def prometheus_binaries() -> tuple[str | None, str | None]:
    """The ``prometheus`` and Pushgateway executables on PATH (Debian names the latter
    ``prometheus-pushgateway``), or None for each one absent."""
    return shutil.which("prometheus"), (
        shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")
    )


def missing_services(
    services: Collection[str] = OPTIONAL, pg_admin_url: str = PG_ADMIN_URL
) -> str | None:
    """Why the native stack with ``services`` cannot start here (a sentence for a skip), or
    None if it can."""
    try:
        with sa.create_engine(pg_admin_url).connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError:
        return (
            f"PostgreSQL is not reachable at {pg_admin_url} (start it: pg_ctlcluster "
            "--skip-systemctl-redirect 15 main start; or set QUANTDAG_TEST_PG_URL)"
        )
    prometheus, pushgateway = prometheus_binaries()
    if "prometheus" in services and prometheus is None:
        return "Prometheus is not installed (Debian: apt-get install prometheus; .ci/run does it)"
    if "pushgateway" in services and pushgateway is None:
        return (
            "the Prometheus Pushgateway is not installed (Debian: apt-get install "
            "prometheus-pushgateway)"
        )
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Service:
    """One process of the stack (the leader of its own process group), its log and the URL
    that answers 200 once it serves (None: a listening port is enough)."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    health_url: str | None
    _handle: IO[bytes]

    def tail(self, lines: int = 25) -> str:
        """The last ``lines`` lines of the service's log."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def errors(self, last: int = 8) -> list[str]:
        """The log's last ``last`` exception lines (``SomeError: message``): a traceback's
        cause comes before its end."""
        lines = (self.log.read_text(errors="replace") if self.log.exists() else "").splitlines()
        found = []
        for i, line in enumerate(lines):
            if EXCEPTION_LINE.match(line):
                more = []  # a message's own further lines (a ConfigError lists every key)
                for nxt in lines[i + 1 : i + 6]:
                    if not nxt.strip() or nxt.lstrip().startswith(("File ", "Traceback", "The ")):
                        break
                    more.append(nxt.rstrip())
                found.append("\n".join([line.strip(), *more]))
        return list(dict.fromkeys(found))[-last:]

    def check_alive(self) -> None:
        """Raise :class:`StackError` if the process has exited."""
        code = self.proc.poll()
        if code is not None:
            errors = "\n".join(self.errors())
            raise StackError(
                f"{self.name} exited with code {code}; errors in {self.log}:\n{errors}\n"
                f"its last lines:\n{self.tail(10)}"
            )


@dataclass
class NativeStack:
    """A running native stack: where each service listens, the databases, the environment
    the Dagster processes run with, and helpers to submit runs through the webserver."""

    workdir: Path
    dagster_home: Path
    settings: Path
    env: dict[str, str]
    databases: dict[str, str]  # "dagster", "trading"(, "mlflow") -> SQLAlchemy URL
    webserver_url: str
    mlflow_url: str | None
    prometheus_url: str | None
    pushgateway_url: str | None
    services: dict[str, Service] = field(default_factory=dict)
    ready_after: dict[str, float] = field(default_factory=dict)
    """Seconds from the start until each service answered."""
    began: float = field(default_factory=time.monotonic)
    _client: Any = field(default=None, repr=False)

    def graphql(self, query: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The ``data`` of a GraphQL query to the webserver; GraphQL errors raise."""
        answer = requests.post(
            f"{self.webserver_url}/graphql",
            json={"query": query, "variables": dict(variables or {})},
            timeout=120,
        )
        answer.raise_for_status()
        body = answer.json()
        if body.get("errors"):
            raise StackError(f"GraphQL errors from the webserver: {body['errors']}")
        return body["data"]  # type: ignore[no-any-return]

    def client(self) -> Any:
        """dagster-graphql's ``DagsterGraphQLClient`` on the webserver (one, kept: it reads the
        schema on its first call)."""
        if self._client is None:
            from dagster_graphql import DagsterGraphQLClient

            port = int(self.webserver_url.rsplit(":", 1)[1])
            self._client = DagsterGraphQLClient("127.0.0.1", port_number=port, timeout=120)
        return self._client

    def submit(
        self,
        job: str,
        *,
        partition: str | None = None,
        run_config: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """Submit ``job`` (of ``partition``) through the webserver's GraphQL API; the
        daemon's queued run coordinator launches it. Returns the run id."""
        all_tags = dict(tags or {})
        if partition is not None:
            all_tags["dagster/partition"] = partition
        return str(
            self.client().submit_job_execution(
                job,
                repository_location_name=LOCATION,
                repository_name=REPOSITORY,
                run_config=dict(run_config or {}),
                tags=all_tags,
            )
        )

    def runs(
        self, *, run_ids: Iterable[str] = (), tags: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Runs as the webserver lists them (``runId``, ``status``, ``startTime``, ``endTime``
        in Unix seconds, ``tags``), selected by id or by tags."""
        run_filter: dict[str, Any] = {}
        if run_ids:
            run_filter["runIds"] = list(run_ids)
        if tags:
            run_filter["tags"] = [{"key": k, "value": v} for k, v in tags.items()]
        data = self.graphql(
            """query ($filter: RunsFilter) {
                runsOrError(filter: $filter) {
                    __typename
                    ... on Runs { results {
                        runId status startTime endTime tags { key value }
                    } }
                    ... on PythonError { message }
                }
            }""",
            {"filter": run_filter},
        )["runsOrError"]
        if data["__typename"] != "Runs":
            raise StackError(f"the webserver could not list runs: {data}")
        return list(data["results"])

    def wait_for_runs(
        self, run_ids: Iterable[str], timeout: float = 300, poll: float = 0.5
    ) -> dict[str, str]:
        """Wait until every run has ended (succeeded, failed or was canceled); their statuses.
        Raises :class:`StackError` naming the runs still going after ``timeout`` seconds, or
        when a service of the stack died meanwhile."""
        ids = list(run_ids)
        deadline = time.monotonic() + timeout
        while True:
            statuses = {r["runId"]: r["status"] for r in self.runs(run_ids=ids)}
            if len(statuses) == len(ids) and TERMINAL.issuperset(statuses.values()):
                return statuses
            if time.monotonic() > deadline:
                going = {
                    i: statuses.get(i, "unknown") for i in ids if statuses.get(i) not in TERMINAL
                }
                raise StackError(
                    f"runs not finished after {timeout:.0f} s: {going}; the daemon's log ends:\n"
                    + self.services["daemon"].tail()
                )
            self.check_alive()
            time.sleep(poll)

    def check_alive(self) -> None:
        """Raise :class:`StackError` if a service has exited."""
        for service in self.services.values():
            service.check_alive()

    def wait_ready(self, name: str, timeout: float = 120) -> None:
        """Wait until service ``name`` answers (its health URL); records when."""
        service = self.services[name]
        url = service.health_url
        _until(name, lambda: url is None or _http_ok(url), timeout, self.check_alive)
        self.ready_after.setdefault(name, round(time.monotonic() - self.began, 1))

    def failure_of(self, run_id: str) -> str:
        """Why a run failed, from its event log: each failed step's error and its causes, for
        an assertion message."""
        data = self.graphql(
            """query ($id: ID!) {
                runOrError(runId: $id) {
                    ... on Run { eventConnection(limit: 5000) { events {
                        __typename
                        ... on ExecutionStepFailureEvent { stepKey error {
                            message errorChain { error { message } }
                        } }
                        ... on RunFailureEvent { message }
                    } } }
                }
            }""",
            {"id": run_id},
        )
        events = (data["runOrError"].get("eventConnection") or {}).get("events", [])
        lines = []
        for e in events:
            if e["__typename"] == "RunFailureEvent":
                lines.append(str(e["message"]))
            elif e["__typename"] == "ExecutionStepFailureEvent":
                error = e.get("error") or {}
                chain = [error.get("message", "")] + [
                    c["error"]["message"] for c in error.get("errorChain") or []
                ]
                lines.append(f"{e['stepKey']}: " + " <- ".join(m.strip() for m in chain if m))
        return "\n".join(lines) or f"run {run_id}: no failure event recorded"

    @contextmanager
    def instance(self) -> Iterator[Any]:
        """The stack's Dagster instance (Postgres storage) in this process."""
        with instance_at(self.dagster_home, self.env["DAGSTER_PG_URL"]) as instance:
            yield instance


@contextmanager
def instance_at(home: Path, pg_url: str) -> Iterator[Any]:
    """The Dagster instance of ``home`` whose config reads ``DAGSTER_PG_URL``, in this process;
    the variable is set to ``pg_url`` meanwhile."""
    import dagster as dg

    before = os.environ.get("DAGSTER_PG_URL")
    os.environ["DAGSTER_PG_URL"] = pg_url
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            yield instance
    finally:
        if before is None:
            os.environ.pop("DAGSTER_PG_URL", None)
        else:
            os.environ["DAGSTER_PG_URL"] = before


def plain_url(url: str) -> str:
    """``url`` for the libraries that pick their own driver (dagster-postgres and MLflow use
    psycopg2 with ``postgresql://``)."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@contextmanager
def throwaway_databases(
    roles: Iterable[str], pg_admin_url: str = PG_ADMIN_URL
) -> Iterator[dict[str, str]]:
    """A fresh, empty database per role on the server of ``pg_admin_url`` (role -> URL with
    the psycopg driver), dropped on exit even while something is still connected."""
    tag = uuid.uuid4().hex[:8]
    names = {role: f"quantdag_stack_{tag}_{role}" for role in roles}
    admin = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    created: list[str] = []
    try:
        with admin.connect() as conn:
            for name in names.values():
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
                created.append(name)
        base = pg_admin_url.rsplit("/", 1)[0]
        yield {role: f"{base}/{name}" for role, name in names.items()}
    finally:
        with admin.connect() as conn:
            for name in created:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def stack_settings(
    settings: Path, workdir: Path, *, universe: Path | None = None, source_path: str | None = None
) -> Path:
    """A copy of ``settings`` as ``workdir/settings.yaml`` whose ``data_dir`` (Parquet frames,
    reports) is ``workdir/data`` and whose universe file is named by absolute path (or is
    ``universe``); with ``source_path``, the local environment's file source reads there."""
    text = yaml.safe_load(settings.read_text())
    named = Path(text["universe"])
    named = named if named.is_absolute() else settings.parent / named
    text["universe"] = str((universe or named).resolve())
    text["data_dir"] = str(workdir / "data")
    if source_path is not None:
        text["environments"]["local"]["source"]["path"] = source_path
    out = workdir / "settings.yaml"
    out.write_text(yaml.safe_dump(text, sort_keys=False))
    return out


def instance_yaml(home: Path, run_queue: Mapping[str, Any] | None = None) -> Path:
    """``deploy/dagster.postgres.yaml`` as ``home/dagster.yaml``; ``run_queue`` entries (e.g.
    ``max_concurrent_runs``) replace its queued run coordinator's."""
    source, target = DEPLOY / "dagster.postgres.yaml", home / "dagster.yaml"
    if not run_queue:
        shutil.copy(source, target)
        return target
    config = yaml.safe_load(source.read_text())
    config["run_coordinator"]["config"].update(run_queue)
    target.write_text(yaml.safe_dump(config, sort_keys=False))
    return target


def _prometheus_yaml(workdir: Path, port: int, pushgateway: int, live: int) -> Path:
    """``deploy/prometheus/prometheus.yml`` with its targets on our loopback ports, scraping
    every second, plus a job scraping Prometheus itself; its alert rules beside it."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    ports = {"quantdag_live": live, "quantdag_pipeline": pushgateway}
    for job in config["scrape_configs"]:
        if job["job_name"] not in ports:
            raise StackError(
                f"deploy/prometheus/prometheus.yml has a scrape job {job['job_name']!r} the "
                "native stack does not know: give it a loopback port in native_stack.py"
            )
        job["static_configs"] = [{"targets": [f"127.0.0.1:{ports[job['job_name']]}"]}]
    config["scrape_configs"].append(
        {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
    )
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", workdir / "alerts.yml")
    out = workdir / "prometheus.yml"
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def _until(what: str, ok: Callable[[], bool], timeout: float, alive: Callable[[], None]) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        alive()
        if time.monotonic() > deadline:
            raise StackError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def _http_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _stop(services: Iterable[Service], grace: float = 15) -> None:
    """SIGTERM to each service's process group, SIGKILL to what is left after ``grace``
    seconds (run workers and MLflow's workers are in their server's group); logs closed."""
    services = list(services)
    for s in services:
        with suppress(ProcessLookupError):
            os.killpg(s.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for s in services:
        with suppress(subprocess.TimeoutExpired):
            s.proc.wait(max(0.1, deadline - time.monotonic()))
        with suppress(ProcessLookupError):
            os.killpg(s.proc.pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            s.proc.wait(10)
        s._handle.close()


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without QUANTDAG_, DAGSTER_, APCA_ or MLFLOW_ variables (a
    developer's own settings must not leak into the stack), plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("QUANTDAG_", "DAGSTER_", "APCA_", "MLFLOW_"))
    }
    # LightGBM's OpenMP threads spin while they wait; on a busy machine that starves the rest.
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    env["PYTHONUNBUFFERED"] = "1"
    return env | dict(extra)


@contextmanager
def native_stack(
    workdir: Path,
    *,
    settings: Path = DEFAULT_SETTINGS,
    universe: Path | None = None,
    source_path: str | None = None,
    run_queue: Mapping[str, Any] | None = None,
    services: Collection[str] = OPTIONAL,
    deferred: Collection[str] = (),
    extra_env: Mapping[str, str] | None = None,
    pg_admin_url: str = PG_ADMIN_URL,
    timeout: float = 120,
) -> Iterator[NativeStack]:
    """Start the stack (see the module's docstring) in ``workdir`` and yield it once every
    service answers; stop every process and drop the databases on exit.

    ``settings`` is the QuantDAG settings file (its copy is used, see :func:`stack_settings`,
    which also takes ``universe`` and ``source_path``); ``run_queue`` overrides entries of
    the instance config's queued run coordinator (see :func:`instance_yaml`); ``services``
    are the optional services to start, of :data:`OPTIONAL`; those in ``deferred`` are not
    waited for (call :meth:`NativeStack.wait_ready` before using them), so a slow one (MLflow
    imports for 10-40 s) starts while the rest works; ``extra_env`` is added to the Dagster
    processes' environment. Raises :class:`StackError` naming the service (with the end of
    its log) that exited or did not answer within ``timeout`` seconds.
    """
    unknown = set(services) - set(OPTIONAL)
    if unknown:
        raise ValueError(f"unknown services {sorted(unknown)}: choose among {OPTIONAL}")
    reason = missing_services(services, pg_admin_url)
    if reason is not None:
        raise StackError(f"the native stack cannot start: {reason}")
    prometheus_bin, pushgateway_bin = prometheus_binaries()
    workdir.mkdir(parents=True, exist_ok=True)
    home = workdir / "dagster_home"
    home.mkdir(exist_ok=True)
    instance_yaml(home, run_queue)
    ports = {
        n: free_port()
        for n in ("grpc", "webserver", "mlflow", "prometheus", "pushgateway", "live_metrics")
    }
    url = {n: f"http://127.0.0.1:{p}" for n, p in ports.items()}
    workspace = workdir / "workspace.yaml"
    location = {"host": "127.0.0.1", "port": ports["grpc"], "location_name": LOCATION}
    workspace.write_text(yaml.safe_dump({"load_from": [{"grpc_server": location}]}))
    roles = ("dagster", "trading", "mlflow") if "mlflow" in services else ("dagster", "trading")
    with ExitStack() as stack:
        dbs = stack.enter_context(throwaway_databases(roles, pg_admin_url))
        settings_copy = stack_settings(
            settings, workdir, universe=universe, source_path=source_path
        )
        env = clean_env(
            {
                "DAGSTER_HOME": str(home),
                "DAGSTER_PG_URL": plain_url(dbs["dagster"]),
                "QUANTDAG_SETTINGS": str(settings_copy),
                "QUANTDAG_DATABASE_URL": dbs["trading"],
                "QUANTDAG_OPTUNA_URI": dbs["trading"],
                "QUANTDAG_MLFLOW_URI": url["mlflow"]
                if "mlflow" in services
                else f"sqlite:///{workdir / 'mlflow.db'}",
                "QUANTDAG_METRICS_ADDR": "127.0.0.1",
                "QUANTDAG_METRICS_PORT": str(ports["live_metrics"]),
                "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
                **(
                    {"QUANTDAG_PUSHGATEWAY_URL": url["pushgateway"]}
                    if "pushgateway" in services
                    else {}
                ),
                **(extra_env or {}),
            }
        )
        result = NativeStack(
            workdir=workdir,
            dagster_home=home,
            settings=settings_copy,
            env=env,
            databases=dbs,
            webserver_url=url["webserver"],
            mlflow_url=url["mlflow"] if "mlflow" in services else None,
            prometheus_url=url["prometheus"] if "prometheus" in services else None,
            pushgateway_url=url["pushgateway"] if "pushgateway" in services else None,
        )
        stack.callback(lambda: _stop(reversed(list(result.services.values()))))

        def start(
            name: str, cmd: list[str], health: str | None, service_env: Mapping[str, str] = env
        ) -> None:
            log = workdir / f"{name}.log"
            handle = log.open("wb")
            proc = subprocess.Popen(
                cmd,
                cwd=PROJECT_ROOT,
                env=dict(service_env),
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped with its children
            )
            result.services[name] = Service(name, proc, log, health, handle)

        # The slowest first: MLflow imports for 10-40 s, the code server loads the definitions.
        if "mlflow" in services:
            start(
                "mlflow",
                [
                    str(BIN / "mlflow"),
                    "server",
                    "--host=127.0.0.1",
                    f"--port={ports['mlflow']}",
                    "--workers=1",
                    f"--artifacts-destination={workdir / 'mlartifacts'}",
                ],
                f"{url['mlflow']}/health",
                # The store's URI from the environment, not the command line, as in compose.
                env | {"MLFLOW_BACKEND_STORE_URI": plain_url(dbs["mlflow"])},
            )
        start(
            "code",
            [
                str(BIN / "dagster"),
                "api",
                "grpc",
                "--module-name=quantdag.definitions",
                "--host=127.0.0.1",
                f"--port={ports['grpc']}",
                f"--location-name={LOCATION}",
            ],
            None,
        )
        if "pushgateway" in services:
            assert pushgateway_bin is not None
            start(
                "pushgateway",
                [pushgateway_bin, f"--web.listen-address=127.0.0.1:{ports['pushgateway']}"],
                f"{url['pushgateway']}/-/ready",
            )
        if "prometheus" in services:
            assert prometheus_bin is not None
            config = _prometheus_yaml(
                workdir, ports["prometheus"], ports["pushgateway"], ports["live_metrics"]
            )
            start(
                "prometheus",
                [
                    prometheus_bin,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={workdir / 'prometheus-data'}",
                    f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
                ],
                f"{url['prometheus']}/-/ready",
            )
        # The webserver and the daemon load the workspace when they start: a code server not
        # yet serving would leave its location in error (the daemon retries only after 60 s).
        _until("the code server", lambda: _listening(ports["grpc"]), timeout, result.check_alive)
        result.ready_after["code"] = round(time.monotonic() - result.began, 1)
        start(
            "webserver",
            [
                str(BIN / "dagster-webserver"),
                "--host=127.0.0.1",
                f"--port={ports['webserver']}",
                f"--workspace={workspace}",
            ],
            f"{url['webserver']}/server_info",
        )
        start("daemon", [str(BIN / "dagster-daemon"), "run", f"--workspace={workspace}"], None)
        result.wait_ready("webserver", timeout)
        _check_location(result)
        _until("the daemon's heartbeat", lambda: _daemon_up(result), timeout, result.check_alive)
        result.ready_after["daemon"] = round(time.monotonic() - result.began, 1)
        for name in services:
            if name not in deferred:
                result.wait_ready(name, timeout)
        yield result


def _check_location(stack: NativeStack) -> None:
    """Raise :class:`StackError` with the load error if the code location did not load."""
    data = stack.graphql(
        """{ workspaceOrError { __typename ... on Workspace { locationEntries {
            name loadStatus
            locationOrLoadError { __typename ... on PythonError { message } }
        } } } }"""
    )["workspaceOrError"]
    entries = {e["name"]: e for e in data.get("locationEntries", [])}
    entry = entries.get(LOCATION)
    if entry is None or entry["locationOrLoadError"]["__typename"] != "RepositoryLocation":
        raise StackError(
            f"the code location {LOCATION!r} did not load in the webserver: {entry}; errors in "
            f"the code server's log:\n" + "\n".join(stack.services["code"].errors())
        )


def _daemon_up(stack: NativeStack) -> bool:
    """Whether the daemon's run queue has sent a heartbeat (it then launches queued runs)."""
    data = stack.graphql(
        """{ instance { daemonHealth { daemonStatus(daemonType: "QUEUED_RUN_COORDINATOR") {
            healthy
        } } } }"""
    )
    return bool(data["instance"]["daemonHealth"]["daemonStatus"]["healthy"])
