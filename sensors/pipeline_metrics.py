"""``pipeline_metrics_sensor`` and ``pipeline_metrics_failure_sensor``: each finished batch run
(succeeded or failed) has its rows, quarantines, checks, step durations and out-of-sample
scores pushed to the Pushgateway (``pipeline_metrics`` resource), where Prometheus scrapes
them (deploy/prometheus). The live session serves its own metrics and is left out. Not
configured (no ``QUANTDAG_PUSHGATEWAY_URL``): the ticks skip, saying so."""

from __future__ import annotations

import dagster as dg

from pipelines.ops.pipeline_metrics import PushError
from resources.pipeline_metrics import PipelineMetricsResource, pipeline_run

LIVE_JOBS = frozenset({"live_session_job"})


def _push(
    context: dg.RunStatusSensorContext, pipeline_metrics: PipelineMetricsResource
) -> dg.SkipReason | None:
    run = context.dagster_run
    if run.job_name in LIVE_JOBS:
        return dg.SkipReason(f"{run.job_name} serves its own metrics")
    if not pipeline_metrics.configured:
        return dg.SkipReason("no Pushgateway configured (QUANTDAG_PUSHGATEWAY_URL)")
    try:
        groups = pipeline_metrics.push(pipeline_run(context.instance, run.run_id))
    except PushError as exc:
        # The cursor moves past this run: its figures stay in its assets' metadata.
        context.log.error(f"metrics of run {run.run_id} not pushed: {exc}")
        return dg.SkipReason(f"metrics of run {run.run_id} NOT pushed: {exc}")
    context.log.info(f"metrics of run {run.run_id} pushed ({groups} groups)")
    return None


def build_pipeline_metrics_sensors() -> list[dg.SensorDefinition]:
    """The two sensors (a run status sensor watches one status)."""

    def build(status: dg.DagsterRunStatus, name: str, what: str) -> dg.SensorDefinition:
        @dg.run_status_sensor(
            run_status=status,
            name=name,
            default_status=dg.DefaultSensorStatus.RUNNING,
            description=f"Pushes each {what} batch run's metrics to the Pushgateway.",
        )
        def push_run_metrics(
            context: dg.RunStatusSensorContext, pipeline_metrics: PipelineMetricsResource
        ) -> dg.SkipReason | None:
            return _push(context, pipeline_metrics)

        return push_run_metrics

    return [
        build(dg.DagsterRunStatus.SUCCESS, "pipeline_metrics_sensor", "successful"),
        build(dg.DagsterRunStatus.FAILURE, "pipeline_metrics_failure_sensor", "failed"),
    ]
