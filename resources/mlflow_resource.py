"""MLflow tracking and model registry (a local SQLite store by default)."""

import dagster as dg

from pipelines.secrets import redact_uri


class MlflowResource(dg.ConfigurableResource):  # type: ignore[misc]
    """Where runs and registered models go. Give a Postgres-backed URI through
    ``dg.EnvVar("QUANTDAG_MLFLOW_URI")`` so credentials never show in the UI."""

    tracking_uri: str
    experiment: str = "quantdag"
    model_name: str = "quantdag"

    def client(self):  # type: ignore[no-untyped-def]
        import mlflow

        return mlflow.MlflowClient(self.tracking_uri)

    def run_link(self, run_id: str) -> str:
        return f"{redact_uri(self.tracking_uri)} run {run_id} (mlflow ui --backend-store-uri <uri>)"


class OptunaResource(dg.ConfigurableResource):  # type: ignore[misc]
    """Where hyper-parameter studies live (SQLite by default; Postgres through
    ``dg.EnvVar("QUANTDAG_OPTUNA_URI")`` so that several workers share one study)."""

    storage: str
