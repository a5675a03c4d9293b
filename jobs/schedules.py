"""The nightly retraining schedule: after the close, on exchange sessions only."""

from __future__ import annotations

from datetime import datetime

import dagster as dg
import exchange_calendars as xcals
import pandas as pd

RETRAIN_CRON = "30 18 * * 1-5"  # 18:30 New York, after the close and the post-close prints


def build_nightly_retraining_schedule(
    job: dg.UnresolvedAssetJobDefinition, calendar: str
) -> dg.ScheduleDefinition:
    @dg.schedule(
        name="nightly_retraining_schedule",
        cron_schedule=RETRAIN_CRON,
        execution_timezone="America/New_York",
        job=job,
        description="Retrain after each session's close; skips exchange holidays.",
    )
    def nightly_retraining_schedule(context: dg.ScheduleEvaluationContext):  # type: ignore[no-untyped-def]
        when: datetime = context.scheduled_execution_time
        day = pd.Timestamp(when.date())
        if not xcals.get_calendar(calendar).is_session(day):
            return dg.SkipReason(f"{day.date()} is not a {calendar} session: nothing new to learn")
        return dg.RunRequest(
            run_key=f"retrain-{day.date()}",
            run_config={"ops": {"walk_forward_models": {"config": {"mode": "full"}}}},
        )

    return nightly_retraining_schedule
