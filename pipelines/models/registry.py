"""MLflow tracking and the model registry: champion and challenger by rule.

A training run logs its parameters, the metrics of every fold (as steps) and overall, the
feature-set version and data range, and as artifacts the final model in its native format with
its checksum, the ordered feature list, the calibration and feature importances (gain, and mean
absolute SHAP values from LightGBM's ``pred_contrib``). The model is then registered as the
``challenger``; it becomes the ``champion`` only if its out-of-sample metric beats the current
champion's by ``margin``. The decision and its reason are logged on the run and the version.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipelines.features.transform import FeatureTransform
from pipelines.models.estimators import FittedModel, ModelConfig, ModelError
from pipelines.models.walk_forward import Calibrator, WalkForwardResult
from pipelines.secrets import redact_uri

CHAMPION, CHALLENGER = "champion", "challenger"


@dataclass(frozen=True)
class PromotionRule:
    """Promote when the challenger's ``metric`` beats the champion's by more than ``margin``
    (a tie keeps the champion).
    Example: ``PromotionRule("log_loss", lower_is_better=True, margin=0.001)``."""

    metric: str = "log_loss"
    lower_is_better: bool = True
    margin: float = 0.0


@dataclass(frozen=True)
class RegistryDecision:
    run_id: str
    version: str
    promoted: bool
    reason: str
    challenger_value: float
    champion_version: str | None
    champion_value: float | None


def feature_importance(model: FittedModel, sample: pl.DataFrame) -> dict[str, dict[str, float]]:
    """Gain importance and mean |SHAP| (LightGBM ``pred_contrib``) per feature."""
    if model.kind != "lightgbm":
        return {}
    gain = model.model.feature_importance(importance_type="gain")
    x = sample.select(model.features).to_numpy().astype(np.float64)
    contrib = model.model.predict(x, num_iteration=model.best_iteration, pred_contrib=True)
    shap = np.abs(contrib[:, :-1]).mean(axis=0)
    return {
        name: {"gain": float(g), "mean_abs_shap": float(s)}
        for name, g, s in zip(model.features, gain, shap, strict=True)
    }


def _client(tracking_uri: str) -> Any:
    """A client for ``tracking_uri``, after checking the store answers (so that a store that
    is down fails here, before anything is logged or registered)."""
    import mlflow
    import sqlalchemy as sa
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    try:
        if tracking_uri.startswith(("postgresql", "mysql", "mssql")):
            # One quick try: MLflow itself retries a dead database for about 100 seconds.
            engine = sa.create_engine(tracking_uri)
            try:
                with engine.connect():
                    pass
            finally:
                engine.dispose()
        mlflow.set_tracking_uri(tracking_uri)
        client = mlflow.MlflowClient(tracking_uri)
        client.search_experiments(max_results=1)
    except (MlflowException, SQLAlchemyError, OSError) as exc:
        raise ModelError(
            f"the MLflow store at {redact_uri(tracking_uri)} does not answer "
            f"({type(exc).__name__}); start it or point QUANTDAG_MLFLOW_URI elsewhere; "
            "nothing was logged or registered"
        ) from None
    return client


def log_and_register(
    result: WalkForwardResult,
    *,
    config: ModelConfig,
    tracking_uri: str,
    experiment: str,
    model_name: str,
    feature_set_version: str,
    data_range: tuple[str, str],
    rule: PromotionRule,
    importance_sample: pl.DataFrame | None = None,
    extra_artifacts: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
) -> RegistryDecision:
    """Log the walk-forward run, register its final (most recent) model as challenger, and
    promote it to champion by ``rule``. Raises before registering if anything fails to log."""
    import mlflow

    if not result.models:
        raise ModelError("no fold produced a model: nothing to register")
    client = _client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    final, calibrator = result.models[-1], result.calibrators[-1]
    overall = result.overall()
    with mlflow.start_run(experiment_id=exp_id) as run:
        mlflow.log_params(
            {
                "kind": config.kind,
                "seed": config.seed,
                "num_boost_round": config.num_boost_round,
                "early_stopping_rounds": config.early_stopping_rounds,
                **{f"param.{k}": v for k, v in config.params.items()},
            }
        )
        mlflow.set_tags(
            {
                "feature_set_version": feature_set_version,
                "data_start": data_range[0],
                "data_end": data_range[1],
                "folds": str(len(result.metrics)),
                "skipped_folds": json.dumps(result.skipped),
                **(tags or {}),
            }
        )
        for m in result.metrics:
            step = int(m["fold"])
            mlflow.log_metrics({f"fold.{k}": v for k, v in m.items() if k != "fold"}, step=step)
        mlflow.log_metrics({f"oos.{k}": v for k, v in overall.items()})
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = Path(tmp) / "model"
            digest = final.save(model_dir)
            (model_dir / "features.json").write_text(json.dumps(list(final.features)))
            (model_dir / "calibration.json").write_text(
                json.dumps({"method": calibrator.method, "params": calibrator.params})
            )
            transform = result.transforms[-1] if result.transforms else None
            if transform is not None:
                (model_dir / "transform.json").write_text(transform.to_json())
            for name, text in (extra_artifacts or {}).items():
                (model_dir / name).write_text(text)
            if importance_sample is not None:
                sample = transform.apply(importance_sample) if transform else importance_sample
                (model_dir / "importance.json").write_text(
                    json.dumps(feature_importance(final, sample), indent=1)
                )
            mlflow.log_artifacts(str(model_dir), artifact_path="model")
            if importance_sample is not None:
                folds_dir = Path(tmp) / "importance"
                folds_dir.mkdir()
                transforms = result.transforms or [None] * len(result.models)
                for k, (model, tf) in enumerate(zip(result.models, transforms, strict=True)):
                    sample = tf.apply(importance_sample) if tf else importance_sample
                    (folds_dir / f"fold_{k}.json").write_text(
                        json.dumps(feature_importance(model, sample), indent=1)
                    )
                mlflow.log_artifacts(str(folds_dir), artifact_path="importance")
        mlflow.set_tag("model_sha256", digest)
        run_id = run.info.run_id
        source = f"{run.info.artifact_uri}/model"
    return _register(client, model_name, run_id, source, overall[rule.metric], rule)


def _register(
    client: Any, name: str, run_id: str, source: str, value: float, rule: PromotionRule
) -> RegistryDecision:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)
    version = client.create_model_version(name, source=source, run_id=run_id).version
    client.set_registered_model_alias(name, CHALLENGER, version)
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champion = None
    champion_value = None
    if champion is None:
        promoted, reason = True, "no champion yet"
    else:
        champion_run = client.get_run(champion.run_id)
        champion_value = champion_run.data.metrics.get(f"oos.{rule.metric}")
        if champion_value is None:
            promoted, reason = True, f"the champion has no oos.{rule.metric}"
        else:
            gain = (champion_value - value) if rule.lower_is_better else (value - champion_value)
            promoted = gain > rule.margin  # "better by the margin": a tie keeps the champion
            reason = (
                f"oos.{rule.metric} {value:.6f} vs champion v{champion.version} "
                f"{champion_value:.6f}: improvement {gain:+.6f} "
                f"{'>' if promoted else '<='} margin {rule.margin}"
            )
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    client.set_tag(run_id, "registry.decision", "promoted" if promoted else "kept challenger")
    client.set_tag(run_id, "registry.reason", reason)
    client.set_model_version_tag(name, version, "decision_reason", reason)
    return RegistryDecision(
        run_id,
        str(version),
        promoted,
        reason,
        float(value),
        None if champion is None else str(champion.version),
        champion_value,
    )


def load_champion(
    tracking_uri: str, model_name: str, into: Path
) -> tuple[FittedModel, Calibrator, FeatureTransform | None]:
    """Download the champion's artifacts into ``into`` and load them (checksums verified): the
    model, its calibration and the feature transform fitted in training (applied, never
    refitted, at inference)."""
    import mlflow

    client = _client(tracking_uri)
    version = client.get_model_version_by_alias(model_name, CHAMPION)
    local = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(into))
    )
    model = FittedModel.load(local)
    cal = json.loads((local / "calibration.json").read_text())
    path = local / "transform.json"
    transform = FeatureTransform.from_json(path.read_text()) if path.exists() else None
    return model, Calibrator(cal["method"], cal["params"]), transform
