"""The batch pipeline's metrics: what one run materialized and checked, as Prometheus series,
pushed to a Pushgateway where one is configured (:func:`push_run_metrics`).

A batch run is gone before Prometheus could scrape it, so its figures are pushed: one group
per materialized asset partition (grouping key ``job="quantdag_pipeline"``, ``asset``,
``partition``; ``partition="all"`` for an unpartitioned asset), which a later materialization
of the same partition replaces; one group per check verdict (``check`` added to the key), which
the check's next verdict replaces; and one group per Dagster job for the run itself. The
figures come from the metadata the assets already record (``rows_in``, ``rows_stored``,
``quarantined_by_reason``, ``dagster/row_count``, ``oos_*``), the checks' verdicts and the
steps' durations; all are gauges of the latest push (Pushgateway semantics). A step that
materializes several partitions or assets gives each the whole step's duration. Groups are
never deleted by QuantDAG: after removing an asset or partitions, delete their groups
(``curl -X DELETE http://pushgateway:9091/metrics/job/quantdag_pipeline/asset/<a>/partition/<p>``
or the Pushgateway's UI).

=============================================== =============================================
name                                            what (labels beyond ``asset``, ``partition``)
=============================================== =============================================
quantdag_pipeline_rows_in                       rows read from the source (``rows_in``)
quantdag_pipeline_rows_stored                   rows stored (``rows_stored``, else
                                                ``dagster/row_count``)
quantdag_pipeline_rows_quarantined{rule}        rows quarantined, by validation rule
quantdag_pipeline_materialized_timestamp_seconds when the materialization was recorded (Unix s)
quantdag_pipeline_step_duration_seconds         duration of the step that materialized it (s)
quantdag_pipeline_check_failed{check,severity}  1 if the check's verdict was a failure, else 0;
                                                severity ERROR blocks downstream, WARN not
quantdag_pipeline_oos_score{metric}             out-of-sample scores of the walk-forward
                                                predictions (``oos_auc``, ``oos_log_loss``...)
quantdag_pipeline_run_duration_seconds          (job group, label ``dagster_job``) the run's
                                                wall time
quantdag_pipeline_run_success                   (job group) 1 if the run succeeded, else 0
quantdag_pipeline_run_finished_timestamp_seconds (job group) when the run ended (Unix s)
=============================================== =============================================

Example::

    run = PipelineRun("abc123", "__ASSET_JOB", "SUCCESS", 1_700_000_000.0, 1_700_000_030.0,
                      [Materialization("bars_15m", "2019-01-01", {"rows_in": 100}, 12.5, ...)])
    push_run_metrics(run, "http://127.0.0.1:9091")
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway
from prometheus_client.exposition import basic_auth_handler, default_handler

from pipelines.secrets import redact_uri

JOB = "quantdag_pipeline"
RUNS_JOB = "quantdag_pipeline_runs"
UNPARTITIONED = "all"


@dataclass(frozen=True)
class Materialization:
    """One asset partition a run materialized: its metadata as plain values (numbers, strings,
    dicts), the step's duration (s, None: unknown) and when it was recorded (Unix s)."""

    asset: str
    partition: str | None
    metadata: Mapping[str, Any]
    step_seconds: float | None
    at: float


@dataclass(frozen=True)
class CheckVerdict:
    """One check's verdict on an asset partition (``severity`` ERROR blocks, WARN does not)."""

    asset: str
    partition: str | None
    check: str
    passed: bool
    severity: str


@dataclass(frozen=True)
class PipelineRun:
    """What one finished run did. ``status``: SUCCESS or FAILURE (or CANCELED); times in Unix s."""

    run_id: str
    job: str
    status: str
    started: float
    ended: float
    materializations: Sequence[Materialization] = ()
    checks: Sequence[CheckVerdict] = field(default_factory=tuple)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def partition_registry(
    materialization: Materialization | None, checks: Sequence[CheckVerdict]
) -> CollectorRegistry:
    """The series of one asset partition: its materialization (if the run made one) and the
    verdicts of its checks."""
    r = CollectorRegistry()
    if materialization is not None:
        meta = materialization.metadata
        rows_in = _number(meta.get("rows_in"))
        if rows_in is not None:
            Gauge("quantdag_pipeline_rows_in", "Rows read from the source", registry=r).set(rows_in)
        stored = _number(meta.get("rows_stored", meta.get("dagster/row_count")))
        if stored is not None:
            Gauge("quantdag_pipeline_rows_stored", "Rows stored", registry=r).set(stored)
        by_rule = meta.get("quarantined_by_reason")
        if isinstance(by_rule, Mapping):
            quarantined = Gauge(
                "quantdag_pipeline_rows_quarantined",
                "Rows quarantined, by validation rule",
                ["rule"],
                registry=r,
            )
            for rule, count in sorted(by_rule.items()):
                n = _number(count)
                if n is None:
                    raise ValueError(
                        f"{materialization.asset} {materialization.partition}: quarantined_by_"
                        f"reason[{rule!r}] is {count!r}, not a count"
                    )
                quarantined.labels(str(rule)).set(n)
        Gauge(
            "quantdag_pipeline_materialized_timestamp_seconds",
            "When the materialization was recorded (Unix s)",
            registry=r,
        ).set(materialization.at)
        if materialization.step_seconds is not None:
            Gauge(
                "quantdag_pipeline_step_duration_seconds",
                "Duration of the step that materialized it (s)",
                registry=r,
            ).set(materialization.step_seconds)
        scores = {
            k.removeprefix("oos_"): v
            for k, v in meta.items()
            if k.startswith("oos_") and _number(v) is not None
        }
        if scores:
            oos = Gauge(
                "quantdag_pipeline_oos_score",
                "Out-of-sample scores of the walk-forward predictions",
                ["metric"],
                registry=r,
            )
            for metric, value in sorted(scores.items()):
                oos.labels(metric).set(float(value))
    if checks:
        failed = Gauge(
            "quantdag_pipeline_check_failed",
            "1 if the check's verdict was a failure (ERROR blocks downstream)",
            ["check", "severity"],
            registry=r,
        )
        for c in checks:
            failed.labels(c.check, c.severity).set(0.0 if c.passed else 1.0)
    return r


def run_registry(run: PipelineRun) -> CollectorRegistry:
    """The run's own series (its job's group)."""
    r = CollectorRegistry()
    Gauge("quantdag_pipeline_run_duration_seconds", "The run's wall time (s)", registry=r).set(
        max(run.ended - run.started, 0.0)
    )
    Gauge("quantdag_pipeline_run_success", "1 if the run succeeded", registry=r).set(
        1.0 if run.status == "SUCCESS" else 0.0
    )
    Gauge(
        "quantdag_pipeline_run_finished_timestamp_seconds",
        "When the run ended (Unix s)",
        registry=r,
    ).set(run.ended)
    return r


def metric_groups(run: PipelineRun) -> list[tuple[dict[str, str], CollectorRegistry]]:
    """Each Pushgateway group of ``run`` (grouping key, registry): one per materialized asset
    partition, one per check verdict (``check`` in its key: a run that only executes a check
    replaces that check's verdict and nothing else, and a materialization without its checks
    leaves their last verdicts), then the job's."""
    groups: dict[tuple[str, ...], tuple[dict[str, str], CollectorRegistry]] = {}
    for m in run.materializations:
        key = {"asset": m.asset, "partition": m.partition or UNPARTITIONED}
        groups[tuple(key.values())] = (key, partition_registry(m, ()))
    for c in run.checks:
        key = {"asset": c.asset, "partition": c.partition or UNPARTITIONED, "check": c.check}
        groups[tuple(key.values())] = (key, partition_registry(None, [c]))
    out = [groups[k] for k in sorted(groups)]
    out.append(({"dagster_job": run.job}, run_registry(run)))
    return out


Pusher = Callable[..., None]


class PushError(RuntimeError):
    """The Pushgateway could not be reached or refused the push (the message holds no
    credential)."""


def push_run_metrics(run: PipelineRun, gateway: str, *, push: Pusher = push_to_gateway) -> int:
    """Push ``run``'s groups to the Pushgateway at ``gateway`` (``http://host:9091``, or
    ``https://user:password@host`` for one behind basic authentication: the credentials go
    in the Authorization header, never in a message); each replaces the group of the same key.
    Returns the number of groups pushed. Raises :class:`PushError` when the gateway cannot be
    reached or refuses."""
    try:
        parts = urlsplit(gateway)
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise PushError(
            f"Pushgateway URL {redact_uri(gateway)!r}: give http(s)://host:port, a password "
            "percent-encoded (QUANTDAG_PUSHGATEWAY_URL)"
        )
    netloc = parts.netloc.rpartition("@")[2]
    url = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    handler: Callable[..., Callable[[], None]] = default_handler
    if parts.username is not None:
        user, password = unquote(parts.username), unquote(parts.password or "")

        def handler(**kw: Any) -> Callable[[], None]:
            return basic_auth_handler(username=user, password=password, **kw)

    try:
        groups = metric_groups(run)
    except ValueError as exc:
        raise PushError(f"metrics of run {run.run_id} not pushed: {exc}") from None
    for grouping_key, registry in groups:
        job = RUNS_JOB if "dagster_job" in grouping_key else JOB
        try:
            push(
                url,
                job=job,
                registry=registry,
                grouping_key=grouping_key,
                timeout=10,
                handler=handler,
            )
        except (OSError, ValueError) as exc:  # URLError and HTTPError are OSErrors
            raise PushError(
                f"metrics not pushed to {redact_uri(gateway)}: {type(exc).__name__}: "
                f"{redact_uri(str(exc))}"
            ) from None
    return len(groups)
