"""The nightly's chain after its data run: earlier months' labels, training, then the backtest.

Each sensor reacts only to successful runs the nightly started (they carry its session tag), so
a run launched by hand starts nothing. Run keys are made of the session and the step, and a
step that already has a run for the session is not requested again.
"""

from __future__ import annotations

from datetime import date

import dagster as dg

from jobs.schedules import (
    LABEL_MONTHS_TAG,
    SESSION_TAG,
    STEP_TAG,
    existing_runs,
    nightly_run_key,
    nightly_tags,
)

LABELS_ASSET = dg.AssetKey("triple_barrier_labels")


def _session(run: dg.DagsterRun) -> date | None:
    value = run.tags.get(SESSION_TAG)
    return date.fromisoformat(value) if value else None


def _label_months(run: dg.DagsterRun) -> list[str]:
    value = run.tags.get(LABEL_MONTHS_TAG, "")
    return [m for m in value.split(",") if m]


def _labels_missing(instance: dg.DagsterInstance, session: date, months: list[str]) -> list[str]:
    """The months among ``months`` without a successful labels run for ``session`` yet."""
    return [
        m
        for m in months
        if not any(
            r.status == dg.DagsterRunStatus.SUCCESS
            for r in existing_runs(instance, session, "labels", partition=m)
        )
    ]


def build_nightly_sensors(
    data_job: dg.UnresolvedAssetJobDefinition,
    training_job: dg.UnresolvedAssetJobDefinition,
    backtest_job: dg.UnresolvedAssetJobDefinition,
) -> list[dg.SensorDefinition]:
    """``nightly_training_sensor`` (after the data run: the labels of earlier months the
    session changes, then training in full mode) and ``nightly_backtest_sensor``."""

    @dg.run_status_sensor(
        name="nightly_training_sensor",
        run_status=dg.DagsterRunStatus.SUCCESS,
        monitored_jobs=[data_job],
        request_jobs=[data_job, training_job],
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="After the nightly's data run succeeds: rebuilds the labels of earlier "
        "months the new session changes, then (once they succeed) requests training_job in "
        "full mode.",
    )
    def nightly_training_sensor(context: dg.RunStatusSensorContext):  # type: ignore[no-untyped-def]
        run = context.dagster_run
        session = _session(run)
        if session is None:
            return dg.SkipReason(f"run {run.run_id} was not started by the nightly")
        step = run.tags.get(STEP_TAG)
        instance = context.instance
        if step == "data":
            months = _label_months(run)
            if months:
                return [
                    dg.RunRequest(
                        job_name=data_job.name,
                        run_key=nightly_run_key(session, "labels", date.fromisoformat(m)),
                        partition_key=m,
                        asset_selection=[LABELS_ASSET],
                        tags={
                            **nightly_tags(session, "labels"),
                            LABEL_MONTHS_TAG: ",".join(months),
                        },
                    )
                    for m in months
                    if not existing_runs(instance, session, "labels", partition=m)
                ] or dg.SkipReason(f"the labels runs of the nightly of {session} exist already")
        elif step == "labels":
            waiting = _labels_missing(instance, session, _label_months(run))
            if waiting:
                return dg.SkipReason(
                    f"the nightly of {session} still waits for the labels of {', '.join(waiting)}"
                )
        else:
            return dg.SkipReason(f"run {run.run_id} is the nightly's {step} step, not data")
        done = existing_runs(instance, session, "training")
        if done:
            return dg.SkipReason(f"the nightly of {session} already has its training run")
        return dg.RunRequest(
            job_name=training_job.name,
            run_key=nightly_run_key(session, "training"),
            run_config={"ops": {"walk_forward_models": {"config": {"mode": "full"}}}},
            tags=nightly_tags(session, "training"),
        )

    @dg.run_status_sensor(
        name="nightly_backtest_sensor",
        run_status=dg.DagsterRunStatus.SUCCESS,
        monitored_jobs=[training_job],
        request_job=backtest_job,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="After the nightly's training run succeeds: requests backtest_job on the "
        "new out-of-sample predictions.",
    )
    def nightly_backtest_sensor(context: dg.RunStatusSensorContext):  # type: ignore[no-untyped-def]
        run = context.dagster_run
        session = _session(run)
        if session is None:
            return dg.SkipReason(f"run {run.run_id} was not started by the nightly")
        if existing_runs(context.instance, session, "backtest"):
            return dg.SkipReason(f"the nightly of {session} already has its backtest run")
        return dg.RunRequest(
            run_key=nightly_run_key(session, "backtest"), tags=nightly_tags(session, "backtest")
        )

    return [nightly_training_sensor, nightly_backtest_sensor]
