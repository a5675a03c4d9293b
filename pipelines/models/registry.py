"""MLflow tracking and the model registry: champion and challenger, decided by the gate.

A training run logs its parameters (and each fold's tuned ones), the metrics of every fold (as
steps) and overall, the skill gate's figures, the feature-set version and data range, and as
artifacts the final model in its native format, the ordered feature list, the calibration, the
feature transform and feature importances (gain, and mean absolute SHAP values from LightGBM's
``pred_contrib``). The SHA-256 of every artifact file is recorded on the run itself, so a model
is loaded only if each file matches what the registry recorded (rewriting a file and the
manifest beside it is not enough). The model is registered as the ``challenger``; it becomes
the ``champion`` only as :func:`pipelines.models.promotion.decide` rules, and the decision and
its reason are logged on the run and the version. The holdout is scored once per version
(:func:`score_holdout`); a second read is refused.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipelines.features.transform import FeatureTransform
from pipelines.models.estimators import FittedModel, ModelConfig, ModelError
from pipelines.models.evaluation import auc_score, log_loss_skill, log_losses, session_blocks
from pipelines.models.holdout import HoldoutError
from pipelines.models.promotion import Comparison, GateVerdict, PromotionRule, Unusable, decide
from pipelines.models.walk_forward import Calibrator, FoldFit, WalkForwardResult
from pipelines.secrets import redact_uri

CHAMPION, CHALLENGER = "champion", "challenger"


@dataclass(frozen=True)
class RegistryDecision:
    """What happened to a registered model version: promoted or not, and why."""

    run_id: str
    version: str
    promoted: bool
    reason: str
    gate_passed: bool
    champion_version: str | None


@dataclass(frozen=True)
class ChampionInfo:
    """The current champion as the registry holds it."""

    version: str
    run_id: str
    source: str
    trained_through: datetime | None


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


ChampionRescore = Callable[[ChampionInfo, Callable[[Path], FoldFit]], Comparison | Unusable | str]
"""Given the champion and a function that loads its verified recipe into a directory, the
comparison with the challenger on the same rows, or why there cannot be one."""
ARTIFACTS_TAG = "artifacts_sha256"
HOLDOUT_TAG = "holdout.scored_at"
HOLDOUT_EXTENT_TAG = "holdout.extent"


def _extent(holdout: pl.DataFrame) -> dict[str, Any]:
    """Where a holdout lies: the first time of its out-of-time rows, and its held-out symbols."""
    timed = holdout.filter(pl.col("segment").is_in(["time", "both"]))
    named = holdout.filter(pl.col("segment").is_in(["symbol", "both"]))
    return {
        "from": None if timed.is_empty() else timed["ts"].min().isoformat(),  # type: ignore[union-attr]
        "symbols": sorted(named["symbol"].unique().to_list()),
    }


def _scored(client: Any, experiment_id: str) -> list[Any]:
    """Every run of the experiment that scored a holdout, deleted ones included (a deleted run
    was scored all the same)."""
    from mlflow.entities import ViewType

    return list(
        client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{HOLDOUT_EXTENT_TAG}` != ''",
            run_view_type=ViewType.ALL,
            max_results=50_000,
        )
    )


def scored_holdout_rows(tracking_uri: str, experiment: str, data: pl.DataFrame) -> str | None:
    """Why ``data`` (development rows) may not be trained on: it holds rows of a holdout that a
    model of ``experiment`` has already been scored on (moving the holdout would turn rows
    used to evaluate into rows to learn from). None when it holds none."""
    client = _client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    extents = {run.data.tags[HOLDOUT_EXTENT_TAG]: run for run in _scored(client, exp.experiment_id)}
    for tag, run in extents.items():
        extent = json.loads(tag)
        start = None if extent["from"] is None else datetime.fromisoformat(extent["from"])
        hit = data.filter(
            pl.col("symbol").is_in(extent["symbols"])
            | (pl.lit(False) if start is None else pl.col("ts") >= start)
        )
        if hit.height:
            first = hit.row(0, named=True)
            return (
                f"{hit.height} development rows (e.g. {first['symbol']} at {first['ts']}) lie in "
                f"the holdout that run {run.info.run_id} was scored on "
                f"(from {extent['from']}, symbols {extent['symbols']}): restore that holdout in "
                "research.holdout (to start afresh, use a new MLflow store: QUANTDAG_MLFLOW_URI)"
            )
    return None


def _importance(fit: FoldFit, sample: pl.DataFrame) -> dict[str, dict[str, float]]:
    return feature_importance(fit.model, fit.transform.apply(sample) if fit.transform else sample)


def _digests(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


def log_and_register(
    result: WalkForwardResult,
    *,
    config: ModelConfig,
    verdict: GateVerdict,
    rule: PromotionRule,
    rescore: ChampionRescore,
    tracking_uri: str,
    experiment: str,
    model_name: str,
    feature_set_version: str,
    data_range: tuple[str, str],
    importance_sample: pl.DataFrame | None = None,
    tags: dict[str, str] | None = None,
    metrics: dict[str, float] | None = None,
) -> RegistryDecision:
    """Log the walk-forward run, register its final (most recent) model as challenger, and
    decide the champion: the model must have passed the gate (``verdict``) and, against a
    champion, beat it on the same rows (``rescore`` re-scores the champion; see
    :func:`pipelines.models.promotion.decide`). Raises before registering if anything fails to
    log."""
    import mlflow

    if not result.fits:
        raise ModelError("no fold produced a model: nothing to register")
    client = _client(tracking_uri)
    exp_id = experiment_id(client, tracking_uri, experiment)
    final = result.final
    overall = result.overall()
    with mlflow.start_run(experiment_id=exp_id) as run:
        mlflow.log_params(
            {
                "kind": config.kind,
                "seed": config.seed,
                "num_boost_round": config.num_boost_round,
                "early_stopping_rounds": config.early_stopping_rounds,
                **{f"param.{k}": v for k, v in config.params.items()},
                **{f"final.param.{k}": v for k, v in result.records[-1].params.items()},
            }
        )
        mlflow.set_tags(
            {
                "feature_set_version": feature_set_version,
                "data_start": data_range[0],
                "data_end": data_range[1],
                "folds": str(len(result.metrics)),
                "skipped_folds": json.dumps(result.skipped),
                "trained_through": final.trained_through.isoformat(),
                "tuning.trials": str(result.trials),
                "gate.passed": str(verdict.passed).lower(),
                "gate.reason": verdict.reason,
                **(tags or {}),
            }
        )
        for m in result.metrics:
            step = int(m["fold"])
            mlflow.log_metrics({f"fold.{k}": v for k, v in m.items() if k != "fold"}, step=step)
        for r in result.records:
            mlflow.log_metrics(
                {"fold.base_rate": r.base_rate, "fold.trials": float(r.trials)}, step=r.index
            )
        mlflow.log_metrics(
            {
                **{f"oos.{k}": v for k, v in overall.items()},
                **{f"gate.{k}": v for k, v in verdict.figures.items()},
                "final.base_rate": final.base_rate,
                **(metrics or {}),
            }
        )
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = Path(tmp) / "model"
            digest = final.model.save(model_dir)
            (model_dir / "features.json").write_text(json.dumps(list(final.model.features)))
            (model_dir / "calibration.json").write_text(
                json.dumps({"method": final.calibrator.method, "params": final.calibrator.params})
            )
            (model_dir / "base_rate.json").write_text(json.dumps(final.base_rate))
            if final.transform is not None:
                (model_dir / "transform.json").write_text(final.transform.to_json())
            if importance_sample is not None:
                (model_dir / "importance.json").write_text(
                    json.dumps(_importance(final, importance_sample), indent=1)
                )
            digests = _digests(model_dir)
            mlflow.log_artifacts(str(model_dir), artifact_path="model")
            if importance_sample is not None:
                folds_dir = Path(tmp) / "importance"
                folds_dir.mkdir()
                for k, fit in enumerate(result.fits):
                    (folds_dir / f"fold_{k}.json").write_text(
                        json.dumps(_importance(fit, importance_sample), indent=1)
                    )
                mlflow.log_artifacts(str(folds_dir), artifact_path="importance")
        mlflow.set_tags({"model_sha256": digest, ARTIFACTS_TAG: json.dumps(digests)})
        run_id = run.info.run_id
        source = f"{run.info.artifact_uri}/model"
    return _register(client, model_name, run_id, source, verdict, rule, rescore)


def experiment_id(client: Any, tracking_uri: str, name: str) -> str:
    """The id of experiment ``name``, created if need be. With a SQLite store its artifacts go
    beside the database (``mlartifacts/<name>``), not into whatever directory the process runs
    from."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    location = None
    if tracking_uri.startswith("sqlite:///") and ":memory:" not in tracking_uri:
        db = Path(tracking_uri.removeprefix("sqlite:///")).resolve()
        location = (db.parent / "mlartifacts" / name).as_uri()
    return str(client.create_experiment(name, artifact_location=location))


def _champion(client: Any, name: str) -> ChampionInfo | None:
    """The champion, or None when the registry positively has none (no such registered model,
    or no ``champion`` alias on it). Any other registry error propagates."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    version = (model.aliases or {}).get(CHAMPION)
    if version is None:
        return None
    mv = client.get_model_version(name, str(version))
    tag = client.get_run(mv.run_id).data.tags.get("trained_through")
    through = datetime.fromisoformat(tag) if tag else None
    return ChampionInfo(str(mv.version), mv.run_id, mv.source, through)


def _register(
    client: Any,
    name: str,
    run_id: str,
    source: str,
    verdict: GateVerdict,
    rule: PromotionRule,
    rescore: ChampionRescore,
) -> RegistryDecision:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(name)
    champion = _champion(client, name)
    version = str(client.create_model_version(name, source=source, run_id=run_id).version)
    client.set_registered_model_alias(name, CHALLENGER, version)

    def rescore_champion() -> Comparison | Unusable | str:
        assert champion is not None
        info = champion
        return rescore(info, lambda into: load_version(client, info.source, info.run_id, into))

    try:
        decision = decide(
            verdict, rule, None if champion is None else champion.version, rescore_champion
        )
    except Exception as exc:
        # The version exists already: say on it that no decision was made, and why; a failure
        # to say so must not hide the error itself.
        reason = f"no decision: comparing with the champion failed ({type(exc).__name__})"
        try:
            client.set_tag(run_id, "registry.decision", "failed")
            client.set_model_version_tag(name, version, "decision_reason", reason)
            client.set_model_version_tag(name, version, "deployable", "false")
        except Exception as tagging:
            exc.add_note(f"tagging the version as undecided failed too: {tagging}")
        raise
    if decision.promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    label = "promoted" if decision.promoted else "kept challenger"
    client.set_tag(run_id, "registry.decision", label)
    client.set_tag(run_id, "registry.reason", decision.reason)
    if decision.comparison is not None:
        c = decision.comparison
        client.log_metric(run_id, "champion.improvement", c.improvement.value)
        client.log_metric(run_id, "champion.improvement_se", c.improvement.se)
        client.log_metric(run_id, "champion.rows", float(c.rows))
    client.set_model_version_tag(name, version, "decision_reason", decision.reason)
    client.set_model_version_tag(name, version, "deployable", str(verdict.passed).lower())
    return RegistryDecision(
        run_id,
        version,
        decision.promoted,
        decision.reason,
        verdict.passed,
        None if champion is None else champion.version,
    )


def load_version(client: Any, source: str, run_id: str, into: Path) -> FoldFit:
    """Download a registered model's artifacts into ``into`` and load them, refusing any file
    whose SHA-256 differs from what its run recorded: the model, its calibration, the feature
    transform fitted in training (applied, never refitted) and the base rate it knew."""
    import mlflow

    recorded = client.get_run(run_id).data.tags.get(ARTIFACTS_TAG)
    if recorded is None:
        raise ModelError(
            f"run {run_id} recorded no artifact checksums ({ARTIFACTS_TAG}); it was logged by "
            "an older version: retrain it before loading"
        )
    expected: dict[str, str] = json.loads(recorded)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(into)))
    found = _digests(local)
    for file, digest in expected.items():
        if found.get(file) != digest:
            raise ModelError(
                f"{local / file}: its SHA-256 does not match the one run {run_id} recorded; "
                "refusing to load a model whose files were changed"
            )
    model = FittedModel.load(local)
    cal = json.loads((local / "calibration.json").read_text())
    path = local / "transform.json"
    transform = FeatureTransform.from_json(path.read_text()) if path.exists() else None
    base_rate = float(json.loads((local / "base_rate.json").read_text()))
    through_tag = client.get_run(run_id).data.tags.get("trained_through")
    if through_tag is None:
        raise ModelError(
            f"run {run_id} records no trained_through date: what it learnt from is unknown; "
            "retrain it"
        )
    through = datetime.fromisoformat(through_tag)
    return FoldFit(model, Calibrator(cal["method"], cal["params"]), transform, base_rate, through)


def load_champion(tracking_uri: str, model_name: str, into: Path) -> tuple[str, FoldFit]:
    """The champion's version and its verified recipe (see :func:`load_version`)."""
    client = _client(tracking_uri)
    champion = _champion(client, model_name)
    if champion is None:
        raise ModelError(f"{model_name} has no champion: nothing passed the gate yet")
    return champion.version, load_version(client, champion.source, champion.run_id, into)


@dataclass(frozen=True)
class HoldoutScore:
    """A model version's one reading of the holdout: its figures (overall and per segment)
    and its predictions (``symbol``, ``ts``, ``segment``, ``y``, ``prob``, ``base_rate``)."""

    version: str
    run_id: str
    metrics: dict[str, float]
    predictions: pl.DataFrame


def score_holdout(
    tracking_uri: str,
    model_name: str,
    version: str,
    holdout: pl.DataFrame,
    *,
    as_of: datetime,
    into: Path,
) -> HoldoutScore:
    """Score model ``version`` once on the ``holdout`` rows (features, ``y``, ``segment``) and
    record the figures on its run, with how many versions have now read these rows
    (``reads``) and where the holdout lies (so that training refuses its rows later). A
    version already scored is refused."""
    client = _client(tracking_uri)
    mv = client.get_model_version(model_name, version)

    def refuse_if_read() -> None:
        done = client.get_run(mv.run_id).data.tags.get(HOLDOUT_TAG)
        if done:
            raise HoldoutError(
                f"{model_name} v{version} was already scored on the holdout (at {done}); its "
                f"figures are on MLflow run {mv.run_id}. A second read is refused: the holdout "
                "is read once per model so that it can never choose between models"
            )

    refuse_if_read()
    if holdout.height == 0:
        raise HoldoutError(
            "the holdout holds no labelled rows: declare research.holdout in the settings "
            "(a start date inside the data, or symbols of the universe)"
        )
    fit = load_version(client, mv.source, mv.run_id, into)
    raw, prob = fit.predict(holdout)
    predictions = holdout.select("symbol", "ts", "segment", "y", *_maybe(holdout, "ret", "t1"))
    predictions = predictions.with_columns(
        prob_raw=pl.Series(raw), prob=pl.Series(prob), base_rate=pl.lit(fit.base_rate)
    )
    metrics = holdout_metrics(predictions)
    refuse_if_read()
    from mlflow.entities import Metric, RunTag

    extent = json.dumps(_extent(holdout), sort_keys=True)
    earlier = _scored(client, client.get_run(mv.run_id).info.experiment_id)
    # Every version that reads the same holdout (its start and symbols, whatever sessions were
    # added since) spends it a little: the count is shown with the figures, so that choosing
    # among versions by their holdout score is visible.
    metrics["reads"] = float(1 + sum(r.data.tags[HOLDOUT_EXTENT_TAG] == extent for r in earlier))
    stamp = int(as_of.timestamp() * 1000)
    client.log_batch(
        mv.run_id,
        metrics=[Metric(f"holdout.{k}", v, stamp, 0) for k, v in metrics.items()],
        tags=[
            RunTag(HOLDOUT_TAG, as_of.isoformat()),
            RunTag(HOLDOUT_EXTENT_TAG, extent),
        ],
    )
    return HoldoutScore(str(version), mv.run_id, metrics, predictions)


def _maybe(frame: pl.DataFrame, *columns: str) -> list[str]:
    return [c for c in columns if c in frame.columns]


def holdout_metrics(predictions: pl.DataFrame) -> dict[str, float]:
    """Rows, base rate, AUC and log loss with their skill over the base-rate forecast (both
    with standard errors clustered by contiguous blocks of sessions), overall, out of time
    (segments ``time`` and ``both``: every row from the holdout's start on) and for each
    segment with both classes. The ``symbol`` segment shares its sessions with the training
    rows: new symbols, not a new period."""
    out: dict[str, float] = {}
    groups = [
        ("all", predictions),
        ("out_of_time", predictions.filter(pl.col("segment").is_in(["time", "both"]))),
    ] + [(str(key[0]), part) for key, part in predictions.group_by("segment", maintain_order=True)]
    for name, part in groups:
        y, p = part["y"].to_numpy(), part["prob"].to_numpy()
        out[f"{name}.rows"] = float(part.height)
        out[f"{name}.positive_share"] = float(y.mean()) if y.size else 0.0
        # A model without usable trees forecasts one number: its z-scores then measure float
        # noise around the base rate, not skill, and are shown as such.
        out[f"{name}.forecast_spread"] = float(p.max() - p.min()) if p.size else 0.0
        clusters = session_blocks(part["ts"])
        if np.unique(y).size < 2 or np.unique(clusters).size < 2:
            continue
        out[f"{name}.log_loss"] = float(log_losses(y, p).mean())
        out |= {f"{name}.{k}": v for k, v in auc_score(y, p, clusters).as_dict("auc").items()}
        skill = log_loss_skill(y, p, part["base_rate"].to_numpy(), clusters)
        out |= {f"{name}.{k}": v for k, v in skill.as_dict("log_loss_skill").items()}
    return out
