"""MLflow tracking and model registry (a local SQLite store by default)."""

import dagster as dg

from pipelines.secrets import redact_uri


class MlflowResource(dg.ConfigurableResource):  # type: ignore[misc]
    """Where runs and registered models go. Give a Postgres-backed URI through
    ``dg.EnvVar("QUANTDAG_MLFLOW_URI")`` so credentials never show in the UI."""

    tracking_uri: str
    experiment: str = "quantdag"
    model_name: str = "quantdag"
    ui_url: str = ""
    """The MLflow UI serving this tracking store (``make dev`` starts one on
    http://127.0.0.1:5000; ``QUANTDAG_MLFLOW_UI_URL``); empty: no links, the run id only."""

    def client(self):  # type: ignore[no-untyped-def]
        import mlflow

        return mlflow.MlflowClient(self.tracking_uri)

    def run_link(self, run_id: str) -> str:
        return f"{redact_uri(self.tracking_uri)} run {run_id} (mlflow ui --backend-store-uri <uri>)"

    def run_url(self, run_id: str, artifact: str | None = None) -> str | None:
        """The MLflow UI's page of ``run_id`` (or of one of its artifacts), None without a UI."""
        if not self.ui_url:
            return None
        experiment = self.client().get_run(run_id).info.experiment_id
        url = f"{self.ui_url.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}"
        return f"{url}/artifactPath/{artifact}" if artifact else url

    def attach(self, run_id: str, path: str, folder: str) -> str:
        """Log the file ``path`` as an artifact of ``run_id`` under ``folder``; its artifact
        path."""
        self.client().log_artifact(run_id, path, artifact_path=folder)
        return f"{folder}/{path.rsplit('/', 1)[-1]}"


class OptunaResource(dg.ConfigurableResource):  # type: ignore[misc]
    """Where hyper-parameter studies live (SQLite by default; Postgres through
    ``dg.EnvVar("QUANTDAG_OPTUNA_URI")`` so that several workers share one study)."""

    storage: str
