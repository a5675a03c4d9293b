"""One complete resource set per environment (``QUANTDAG_ENV``: local | paper | live)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dagster as dg

from pipelines.config import AlpacaSourceConfig, FileSourceConfig
from pipelines.data.object_store import LocationError, check_location
from quantdag.project import PROJECT_ROOT, Project
from resources import (
    AlpacaBarSourceResource,
    FileBarSourceResource,
    MlflowResource,
    OptunaResource,
    PolarsParquetIOManager,
    TradingDatabaseResource,
)
from resources.alerts import AlertsResource
from resources.pipeline_metrics import PipelineMetricsResource


def alerts_resource(environ: dict[str, str] | None = None) -> AlertsResource:
    """Where alerts go, from the environment only (a webhook URL carries a token):
    ``QUANTDAG_ALERT_WEBHOOK_URL``; ``QUANTDAG_ALERT_SMTP_HOST``, ``_PORT`` (25), ``_FROM``,
    ``_TO`` (comma-separated), ``_USER``, ``_PASSWORD``, ``_STARTTLS`` (1). Nothing set: alerts
    go to the error log and the ``alert_log`` table."""
    env = dict(os.environ) if environ is None else environ

    def secret(name: str) -> Any:
        return dg.EnvVar(name) if env.get(name) else ""

    return AlertsResource(
        webhook_url=secret("QUANTDAG_ALERT_WEBHOOK_URL"),
        smtp_host=env.get("QUANTDAG_ALERT_SMTP_HOST", ""),
        smtp_port=int(env.get("QUANTDAG_ALERT_SMTP_PORT", "25")),
        smtp_sender=env.get("QUANTDAG_ALERT_SMTP_FROM", "quantdag@localhost"),
        smtp_recipients=[a.strip() for a in env.get("QUANTDAG_ALERT_SMTP_TO", "").split(",") if a],
        smtp_username=env.get("QUANTDAG_ALERT_SMTP_USER", ""),
        smtp_password=secret("QUANTDAG_ALERT_SMTP_PASSWORD"),
        smtp_starttls=env.get("QUANTDAG_ALERT_SMTP_STARTTLS", "") == "1",
    )


def parquet_io_manager(
    project: Project, environ: dict[str, str] | None = None
) -> PolarsParquetIOManager:
    """Where the large frames go: ``QUANTDAG_PARQUET_URL`` when set (``s3://bucket/prefix`` on
    any S3-compatible server, or a directory every run worker shares), else
    ``<data_dir>/parquet`` on this host. The URL names the place only: the credentials and the
    endpoint are read from the environment when a frame is stored or loaded
    (``QUANTDAG_S3_ACCESS_KEY_ID``, ``QUANTDAG_S3_SECRET_ACCESS_KEY``,
    ``QUANTDAG_S3_ENDPOINT_URL`` or the ``AWS_`` ones), and a URL holding a credential is
    refused here, when the definitions load."""
    env = dict(os.environ) if environ is None else environ
    url = env.get("QUANTDAG_PARQUET_URL", "").strip()
    if url:
        try:
            check_location(url)
        except LocationError as exc:
            raise LocationError(f"QUANTDAG_PARQUET_URL: {exc}") from None
        return PolarsParquetIOManager(base_dir=url)
    return PolarsParquetIOManager(base_dir=str(Path(project.settings.data_dir) / "parquet"))


def build_resources(project: Project) -> dict[str, Any]:
    """Resources of the selected environment. A database URL in ``QUANTDAG_DATABASE_URL``
    overrides the settings file and is read through ``dg.EnvVar`` (never shown in the UI)."""
    env = project.env
    url: Any = (
        dg.EnvVar("QUANTDAG_DATABASE_URL")
        if os.environ.get("QUANTDAG_DATABASE_URL")
        else _anchored(env.database_url)
    )
    source = env.source
    market_data: Any
    if isinstance(source, FileSourceConfig):
        market_data = FileBarSourceResource.from_config(source)
    else:
        assert isinstance(source, AlpacaSourceConfig)
        market_data = AlpacaBarSourceResource.from_config(
            source,
            api_key=dg.EnvVar("APCA_API_KEY_ID"),
            secret_key=dg.EnvVar("APCA_API_SECRET_KEY"),
            url_override=os.environ.get("APCA_DATA_URL"),
        )
    return {
        "market_data": market_data,
        "trading_db": TradingDatabaseResource(url=url),
        "alerts": alerts_resource(),
        # Batch runs' metrics to a Pushgateway (its URL may carry credentials: env only).
        "pipeline_metrics": PipelineMetricsResource(
            gateway_url=dg.EnvVar("QUANTDAG_PUSHGATEWAY_URL")
            if os.environ.get("QUANTDAG_PUSHGATEWAY_URL")
            else ""
        ),
        "parquet_io_manager": parquet_io_manager(project),
        "mlflow": MlflowResource(
            tracking_uri=dg.EnvVar("QUANTDAG_MLFLOW_URI")
            if os.environ.get("QUANTDAG_MLFLOW_URI")
            else _anchored(f"sqlite:///{project.settings.data_dir}/mlflow.db"),
            # One experiment and one registered model (hence one champion) per environment:
            # a model trained and judged on the sample is never the paper account's champion.
            experiment=_per_environment(project),
            model_name=_per_environment(project),
            ui_url=os.environ.get(
                "QUANTDAG_MLFLOW_UI_URL",
                "http://127.0.0.1:5000" if project.environment == "local" else "",
            ),
        ),
        "optuna": OptunaResource(
            storage=dg.EnvVar("QUANTDAG_OPTUNA_URI")
            if os.environ.get("QUANTDAG_OPTUNA_URI")
            else _anchored(f"sqlite:///{project.settings.data_dir}/optuna.db"),
        ),
    }


def _per_environment(project: Project) -> str:
    name = project.universe.name
    return name if project.environment == "local" else f"{name}-{project.environment}"


def _anchored(url: str) -> str:
    """A relative SQLite path is taken from the project directory, not the working directory."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
        return prefix + str(PROJECT_ROOT / url.removeprefix(prefix))
    return url
