"""The nightly: after each exchange session's close, bring in the session and retrain.

The schedule requests the data run of the session's month (bars, aggregates, features, labels)
with the tick's time as the ingestion's ``as_of``; the sensors in ``sensors/nightly.py`` chain
the rest on success: earlier months' labels the session changes, then ``training_job``, then
``backtest_job``. Every run carries the session and its step as tags and has a run key made of
them, so a tick evaluated again starts nothing twice.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import dagster as dg

from assets.partitions import market_partitions
from pipelines.bars.calendar import NEW_YORK, sessions_between
from pipelines.config import Settings, UniverseConfig
from pipelines.features import FeatureConfig
from pipelines.labels.partition import label_months_reading, label_padding_days

REGULAR_CRON = "30 18 * * 1-5"  # 18:30 New York, after the close (early closes too)
EXTENDED_CRON = "30 20 * * 1-5"  # after the post-market, which ends at 20:00 New York

SESSION_TAG = "quantdag/nightly_session"
"""The session (New York date, ISO) a nightly run is for."""
STEP_TAG = "quantdag/nightly_step"
"""``data`` | ``labels`` | ``training`` | ``backtest``."""
LABEL_MONTHS_TAG = "quantdag/nightly_label_months"
"""On the data run: earlier months (first days, ISO, comma-separated) whose labels the session
changes; absent when none."""


def nightly_tags(session: date, step: str) -> dict[str, str]:
    return {SESSION_TAG: session.isoformat(), STEP_TAG: step}


def nightly_run_key(session: date, step: str, month: date | None = None) -> str:
    suffix = f"-{month.isoformat()}" if month else ""
    return f"nightly-{session.isoformat()}-{step}{suffix}"


def existing_runs(
    instance: dg.DagsterInstance, session: date, step: str, partition: str | None = None
) -> list[dg.DagsterRun]:
    """Runs of one nightly step already in the instance (any status, re-executions included)."""
    tags = nightly_tags(session, step)
    if partition is not None:
        tags["dagster/partition"] = partition
    return list(instance.get_runs(filters=dg.RunsFilter(tags=tags)))


def build_nightly_retraining_schedule(
    data_job: dg.UnresolvedAssetJobDefinition, universe: UniverseConfig, settings: Settings
) -> dg.ScheduleDefinition:
    """The nightly's first run: ``data_job`` (bars, aggregates, features, labels) on the
    session's month, ingesting up to the tick's time; nothing on days that are not sessions."""
    calendar = universe.calendar
    source_bars = f"bars_{universe.base_timeframe.label}"
    per_session = FeatureConfig(universe.base_timeframe, universe.session).bars_per_session
    _, after_days = label_padding_days(settings.labels, per_session)
    grain = universe.partition_grain  # a daily source's partitions are years
    first_month = universe.history_start.replace(day=1)
    if grain == "year":
        first_month = first_month.replace(month=1)
    partitions = market_partitions(universe)

    @dg.schedule(
        name="nightly_retraining_schedule",
        cron_schedule=REGULAR_CRON if universe.session == "regular" else EXTENDED_CRON,
        execution_timezone=NEW_YORK,
        job=data_job,
        description="After each session's close: ingest the session and rebuild its month's "
        "bars, features and labels; the nightly sensors then retrain and backtest. Skips "
        "exchange holidays and weekends.",
    )
    def nightly_retraining_schedule(context: dg.ScheduleEvaluationContext):  # type: ignore[no-untyped-def]
        when: datetime = context.scheduled_execution_time
        session = when.astimezone(ZoneInfo(NEW_YORK)).date()
        if sessions_between(calendar, session, session).frame.height == 0:
            return dg.SkipReason(f"{session} is not a {calendar} session: nothing new to learn")
        if universe.history_end is not None and session > universe.history_end:
            return dg.SkipReason(
                f"{session} is after the universe's history_end ({universe.history_end}): the "
                "data set ends there and has no partition for it; remove history_end from the "
                "universe file to follow new sessions"
            )
        if session < universe.history_start:
            return dg.SkipReason(
                f"{session} is before the universe's history_start ({universe.history_start})"
            )
        key = partitions.get_partition_key_for_timestamp(when.timestamp())
        if key not in partitions.get_partition_keys(current_time=when):
            # A fixed data set (history_end) has fixed periods, each existing once it has ended.
            return dg.SkipReason(
                f"the partition {key} of {session} does not exist yet at {when:%Y-%m-%d %H:%M}: "
                "with history_end set, a period exists once it has ended"
            )
        done = existing_runs(context.instance, session, "data")
        if done:
            return dg.SkipReason(
                f"the nightly of {session} already has its data run {done[0].run_id}"
            )
        label_months = label_months_reading(session, after_days, first_month, grain)
        tags = nightly_tags(session, "data")
        if label_months:
            tags[LABEL_MONTHS_TAG] = ",".join(m.isoformat() for m in label_months)
        return dg.RunRequest(
            run_key=nightly_run_key(session, "data"),
            partition_key=key,
            run_config={
                "ops": {source_bars: {"config": {"as_of": when.astimezone(UTC).isoformat()}}}
            },
            tags=tags,
        )

    return nightly_retraining_schedule
