"""The skill gate and the champion decision through a real MLflow store (SQLite): no skill is
never promoted, a champion is beaten only on rows both models never learnt from, the holdout
is read once, and a tampered model is refused."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipelines.models.estimators import ModelConfig, ModelError
from pipelines.models.holdout import HoldoutConfig, HoldoutError, split_holdout
from pipelines.models.promotion import GateConfig, PromotionRule, skill_gate
from pipelines.models.registry import (
    ARTIFACTS_TAG,
    _champion,
    load_champion,
    log_and_register,
    score_holdout,
    scored_holdout_rows,
)
from pipelines.models.training import champion_rescore, folds_for, plan_for
from pipelines.models.validity import block_shuffle, plant_signal
from pipelines.models.walk_forward import WalkForwardResult, run_walk_forward

pytestmark = pytest.mark.unit
PLAN = plan_for("quick", seed=3)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def data(sample_data: pl.DataFrame) -> pl.DataFrame:
    """The sample's labels with two independent planted signals (AUC 0.62 each)."""
    one = plant_signal(sample_data, target_auc=0.62, seed=11, column="s1")
    return plant_signal(one, target_auc=0.62, seed=12, column="s2")


def _train(data: pl.DataFrame, features: list[str]) -> WalkForwardResult:
    return run_walk_forward(data, folds_for(data, PLAN), PLAN.model, features=features)


def _register(result: WalkForwardResult, data: pl.DataFrame, uri: str, rule: PromotionRule):  # type: ignore[no-untyped-def]
    return log_and_register(
        result,
        config=PLAN.model,
        verdict=skill_gate(result.predictions, GateConfig()),
        rule=rule,
        rescore=champion_rescore(
            data, result.predictions, metric=rule.metric, embargo=PLAN.embargo
        ),
        tracking_uri=uri,
        experiment="test",
        model_name="quantdag-test",
        feature_set_version="1",
        data_range=("2019-01-01", "2019-02-15"),
        importance_sample=data.head(200),
    )


def test_gate_passes_a_real_signal_and_refuses_none(data: pl.DataFrame) -> None:
    skilled = skill_gate(_train(data, ["s1"]).predictions, GateConfig())
    assert skilled.passed, skilled.reason
    assert skilled.figures["auc_within_fold"] > 0.55
    shuffled = block_shuffle(data, seed=4)
    none = skill_gate(
        _train(shuffled, ["trend_sma_20", "momentum_rsi_14"]).predictions, GateConfig()
    )
    assert not none.passed and "does not beat the base-rate forecast" in none.reason


def test_promotion_needs_the_gate_and_a_win_on_common_rows(
    data: pl.DataFrame, tmp_path: Path
) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    rule = PromotionRule("log_loss", margin=0.0)
    noise = _register(_train(block_shuffle(data, seed=4), ["trend_sma_20"]), data, uri, rule)
    assert not noise.promoted and not noise.gate_passed
    assert "not deployable" in noise.reason
    assert _champion(client, "quantdag-test") is None  # no champion: nothing passed the gate
    tags = client.get_model_version("quantdag-test", noise.version).tags
    assert tags["deployable"] == "false"

    weak = _train(data, ["s1"])
    first = _register(weak, data, uri, rule)
    assert first.promoted and "no champion yet" in first.reason

    again = _register(weak, data, uri, rule)  # the same model: a tie keeps the champion
    assert not again.promoted and "never learnt from" in again.reason
    assert "improvement +0.00000" in again.reason

    better = _register(_train(data, ["s1", "s2"]), data, uri, rule)  # better, within noise
    assert not better.promoted and re.search(r"z \+[\d.]+ < [\d.]+ \(2 SE at", better.reason)

    boosted = plant_signal(data, target_auc=0.75, seed=13, column="s3")
    strong = _register(_train(boosted, ["s1", "s3"]), boosted, uri, rule)
    assert strong.promoted, strong.reason
    assert strong.champion_version == first.version
    run = client.get_run(strong.run_id)
    assert run.data.metrics["champion.improvement"] > 0
    assert run.data.metrics["champion.rows"] < len(weak.predictions)  # only rows after its training
    assert str(client.get_registered_model("quantdag-test").aliases["champion"]) == strong.version
    assert re.search(r"z \+[\d.]+ >= [\d.]+ \(2 SE at \d+ blocks", strong.reason)

    # A champion whose files no longer verify cannot trade: a challenger that passed the gate
    # replaces it, even a weaker one, and says why; no version is left without a decision.
    source = client.get_model_version("quantdag-test", strong.version).source
    (Path(source.removeprefix("file://")) / "calibration.json").write_text("{}")
    after = _register(weak, data, uri, rule)
    assert after.promoted and f"champion v{strong.version} is unusable" in after.reason
    assert "SHA-256 does not match" in after.reason
    assert str(client.get_registered_model("quantdag-test").aliases["champion"]) == after.version


def test_an_unreadable_registry_is_not_taken_for_an_empty_one() -> None:
    from mlflow.exceptions import MlflowException

    class BrokenRegistry:
        def get_registered_model(self, name: str) -> None:
            raise MlflowException("database is locked", error_code="INTERNAL_ERROR")

    with pytest.raises(MlflowException, match="locked"):
        _champion(BrokenRegistry(), "quantdag-test")


def test_holdout_is_read_once_and_tampered_models_are_refused(
    data: pl.DataFrame, tmp_path: Path
) -> None:
    import mlflow

    split = split_holdout(data, HoldoutConfig(start=datetime(2019, 2, 11).date(), symbols=("JPM",)))
    assert (
        split.development["ts"].max()
        < split.holdout.filter(pl.col("segment") == "time")["ts"].min()
    )
    assert "JPM" not in split.development["symbol"].to_list()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = _train(split.development, ["s1"])
    decision = _register(result, split.development, uri, PromotionRule())
    score = score_holdout(
        uri, "quantdag-test", decision.version, split.holdout, as_of=NOW, into=tmp_path / "h1"
    )
    assert score.metrics["all.rows"] == split.holdout.height
    assert {"time", "symbol", "both"} <= {k.split(".")[0] for k in score.metrics}
    assert score.metrics["all.auc"] > 0.55  # the planted signal holds out of sample
    run = mlflow.MlflowClient(uri).get_run(decision.run_id)
    assert run.data.metrics["holdout.all.rows"] == split.holdout.height
    assert run.data.metrics["holdout.reads"] == 1
    timed = split.holdout.filter(pl.col("segment").is_in(["time", "both"])).height
    assert score.metrics["out_of_time.rows"] == timed > 0
    with pytest.raises(HoldoutError, match="already scored on the holdout"):
        score_holdout(
            uri, "quantdag-test", decision.version, split.holdout, as_of=NOW, into=tmp_path / "h2"
        )
    # The champion loads with every file checked against the run's record, not the manifest.
    version, fit = load_champion(uri, "quantdag-test", tmp_path / "dl")
    assert version == decision.version and fit.base_rate == result.final.base_rate
    np.testing.assert_allclose(
        fit.predict(split.holdout)[1], result.final.predict(split.holdout)[1]
    )
    source = Path(
        mlflow.MlflowClient(uri)
        .get_model_version("quantdag-test", version)
        .source.removeprefix("file://")
    )
    (source / "calibration.json").write_text(json.dumps({"method": "none", "params": {}}))
    with pytest.raises(ModelError, match="SHA-256 does not match"):
        load_champion(uri, "quantdag-test", tmp_path / "dl2")
    assert "calibration.json" in json.loads(run.data.tags[ARTIFACTS_TAG])
    # A second version reading the same rows is counted; a holdout moved later, which would
    # turn scored rows into training rows, is refused by name.
    second = _register(
        _train(split.development, ["s1", "s2"]), split.development, uri, PromotionRule()
    )
    again = score_holdout(
        uri, "quantdag-test", second.version, split.holdout, as_of=NOW, into=tmp_path / "h3"
    )
    assert again.metrics["reads"] == 2
    assert scored_holdout_rows(uri, "test", split.development) is None
    moved = split_holdout(data, HoldoutConfig(start=datetime(2019, 2, 13).date(), symbols=()))
    why = scored_holdout_rows(uri, "test", moved.development)
    assert why is not None and "restore that holdout" in why
    later = split_holdout(data, HoldoutConfig(start=datetime(2019, 2, 13).date(), symbols=("JPM",)))
    why = scored_holdout_rows(uri, "test", later.development)  # the start moved, not the names
    assert why is not None and "2019-02-11" in why.split(" lie in ")[0]


def test_nothing_to_register_is_an_error(data: pl.DataFrame, tmp_path: Path) -> None:
    empty = WalkForwardResult(pl.DataFrame(), [], ["all skipped"])
    with pytest.raises(ModelError, match="nothing to register"):
        log_and_register(
            empty,
            config=ModelConfig("lightgbm"),
            verdict=skill_gate(pl.DataFrame({"y": []}), GateConfig()),
            rule=PromotionRule(),
            rescore=lambda info, load: "none",
            tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
            experiment="e",
            model_name="m",
            feature_set_version="1",
            data_range=("a", "b"),
        )


def test_development_labels_end_before_the_holdout_and_its_embargo() -> None:
    from datetime import timedelta

    ts = [datetime(2019, 2, 8, 20, 0, tzinfo=UTC) + timedelta(hours=h) for h in range(0, 80, 4)]
    frame = pl.DataFrame(
        {
            "symbol": ["A"] * len(ts),
            "ts": ts,
            "t1": [t + timedelta(hours=30) for t in ts],  # labels spanning a weekend
            "y": [1, 0] * (len(ts) // 2),
        }
    ).with_columns(pl.col("ts", "t1").dt.cast_time_unit("us"))
    config = HoldoutConfig(start=datetime(2019, 2, 11).date(), embargo=timedelta(hours=4))
    split = split_holdout(frame, config)
    start = config.start_utc
    assert start is not None
    assert (split.development["t1"] < start - timedelta(hours=4)).all()
    assert split.purged > 0 and (split.holdout["ts"] >= start).all()
    assert split.development.height + split.purged + split.holdout.height == frame.height
