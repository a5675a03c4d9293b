"""Where batch runs' metrics go: a Prometheus Pushgateway (real) or a list in memory (fake);
and what a finished run did, read from the instance's event log (:func:`pipeline_run`)."""

from typing import Any

import dagster as dg

from pipelines.ops.pipeline_metrics import (
    CheckVerdict,
    Materialization,
    PipelineRun,
    metric_groups,
    push_run_metrics,
)

_EVENTS = {
    dg.DagsterEventType.ASSET_MATERIALIZATION,
    dg.DagsterEventType.ASSET_CHECK_EVALUATION,
    dg.DagsterEventType.STEP_SUCCESS,
}


class PipelineMetricsResource(dg.ConfigurableResource):  # type: ignore[misc]
    """Pushes a finished run's metrics to the Pushgateway at ``gateway_url``
    (``http://127.0.0.1:9091``; it may carry credentials: give it as
    ``dg.EnvVar("QUANTDAG_PUSHGATEWAY_URL")``). Empty: not configured, nothing is pushed (the
    figures stay in the assets' metadata)."""

    gateway_url: str = ""

    @property
    def configured(self) -> bool:
        return bool(self.gateway_url)

    def push(self, run: PipelineRun) -> int:
        """Push ``run``'s groups; the number pushed (0 when not configured)."""
        if not self.gateway_url:
            return 0
        return push_run_metrics(run, self.gateway_url)


_RECORDED: dict[str, list[tuple[dict[str, str], Any]]] = {}


class RecordingPipelineMetricsResource(PipelineMetricsResource):
    """The fake: the groups a push would send, kept in :attr:`pushed` under ``name`` (Dagster
    hands a sensor a copy of its resource: the record is kept outside the instance)."""

    gateway_url: str = "memory://"
    name: str = "default"

    @property
    def pushed(self) -> list[tuple[dict[str, str], Any]]:
        return _RECORDED.setdefault(self.name, [])

    def push(self, run: PipelineRun) -> int:
        groups = metric_groups(run)
        self.pushed.extend(groups)
        return len(groups)


def _plain(value: Any) -> Any:
    inner = getattr(value, "value", value)
    return inner if isinstance(inner, int | float | str | dict | list | bool) else None


def pipeline_run(instance: dg.DagsterInstance, run_id: str) -> PipelineRun:
    """What run ``run_id`` materialized and checked, and how long its steps took, from
    ``instance``'s event log."""
    record = instance.get_run_record_by_id(run_id)
    if record is None:
        raise ValueError(f"run {run_id} is not in this Dagster instance")
    run = record.dagster_run
    steps: dict[str, float] = {}
    materialized: list[tuple[Any, Any]] = []
    checks: list[CheckVerdict] = []
    for entry in instance.all_logs(run_id, of_type=_EVENTS):
        event = entry.dagster_event
        if event is None:
            continue
        data: Any = event.event_specific_data
        if event.event_type is dg.DagsterEventType.STEP_SUCCESS and event.step_key:
            steps[event.step_key] = data.duration_ms / 1e3
        elif event.event_type is dg.DagsterEventType.ASSET_MATERIALIZATION:
            materialized.append((entry, data.materialization))
        elif event.event_type is dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            checks.append(
                CheckVerdict(
                    data.asset_key.to_user_string(),
                    getattr(data, "partition", None),
                    data.check_name,
                    bool(data.passed),
                    data.severity.value,
                )
            )
    materializations = [
        Materialization(
            m.asset_key.to_user_string(),
            m.partition,
            {k: v for k, v in ((k, _plain(v)) for k, v in m.metadata.items()) if v is not None},
            steps.get(entry.step_key or ""),
            entry.timestamp,
        )
        for entry, m in materialized
    ]
    started = record.start_time or record.create_timestamp.timestamp()
    ended = record.end_time or started
    return PipelineRun(
        run_id, run.job_name, run.status.value, started, ended, materializations, checks
    )
