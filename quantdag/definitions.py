"""The one Dagster entry point (named in workspace.yaml and pyproject.toml)."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

from assets.backtest import build_backtest_report_asset
from assets.bars import build_bar_assets
from assets.live import live_assets
from assets.research import build_research_assets
from assets.training import (
    build_training_set_asset,
    build_walk_forward_models_asset,
    holdout_predictions,
)
from jobs import build_jobs, build_live_session_job, kill_switch_job
from jobs.schedules import build_nightly_retraining_schedule
from pipelines.models.holdout import HoldoutConfig
from pipelines.models.training import embargo_for
from quantdag.project import PROJECT_ROOT, Project, load_project
from quantdag.resources import build_resources
from sensors.alerts import (
    build_alert_retry_sensor,
    build_kill_switch_alert_sensor,
    build_run_failure_alert_sensor,
)
from sensors.live import LiveSensorConfig, build_live_trading_sensor
from sensors.nightly import build_nightly_sensors
from sensors.pipeline_metrics import build_pipeline_metrics_sensors


def build_definitions(project: Project) -> dg.Definitions:
    bars = build_bar_assets(project.universe, project.settings.validation)
    research = build_research_assets(project.universe, project.settings)
    jobs = build_jobs()
    job = {j.name: j for j in jobs}
    data_job = job["all_assets_job"]
    live_job = build_live_session_job(project)
    universe = project.universe
    return dg.Definitions(
        assets=[
            *bars,
            *research,
            build_training_set_asset([bars[0], *research], holdout_config(project)),
            build_walk_forward_models_asset(training_embargo(project)),
            holdout_predictions,
            build_backtest_report_asset(project.universe, project.settings, PROJECT_ROOT),
            *live_assets,
        ],
        jobs=[*jobs, kill_switch_job, live_job],
        schedules=[build_nightly_retraining_schedule(data_job, project.universe, project.settings)],
        sensors=[
            *build_nightly_sensors(data_job, job["training_job"], job["backtest_job"]),
            build_live_trading_sensor(
                live_job,
                LiveSensorConfig.from_settings(project.settings.live),
                calendar=universe.calendar,
                session_kind=universe.session,
            ),
            build_kill_switch_alert_sensor(),
            build_run_failure_alert_sensor(),
            build_alert_retry_sensor(),
            *build_pipeline_metrics_sensors(),
        ],
        resources=build_resources(project),
    )


def holdout_config(project: Project) -> HoldoutConfig:
    """The environment's research.holdout (else the top-level one) as the core's
    :class:`HoldoutConfig`."""
    h = project.research.holdout
    return HoldoutConfig(start=h.start, symbols=h.symbols, embargo=training_embargo(project))


def training_embargo(project: Project) -> timedelta:
    """The embargo after held-out rows: the labels' horizon, in the source's bars."""
    return embargo_for(project.universe.base_timeframe, project.settings.labels.max_holding_bars)


defs = build_definitions(load_project())
