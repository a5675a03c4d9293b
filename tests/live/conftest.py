"""Shared pieces of the live tests: one real session of the bundled 1-minute sample
(2019-02-15, 24 symbols), the 15-minute history before it, a small model trained on that
history, and the backtest engine's decisions on the same bars with the same model."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from pipelines.backtest.broker import BrokerConfig, CostModel
from pipelines.backtest.engine import BacktestResult
from pipelines.backtest.model_backtest import closing_bars, run_model_strategy, signal_volatility
from pipelines.backtest.strategy import SizingConfig
from pipelines.bars.aggregate import aggregate_bars
from pipelines.bars.validate import validate_bars
from pipelines.config import FileSourceConfig, load_settings
from pipelines.data.sources import FileBarSource
from pipelines.execution.path import PathConfig, path_config
from pipelines.features import FeatureConfig
from pipelines.features.build import build_features
from pipelines.labels.partition import barrier_config
from pipelines.models.estimators import ModelConfig, train_classifier
from pipelines.models.inference import predict_bar
from pipelines.models.walk_forward import Calibrator, FoldFit
from pipelines.timeframes import Timeframe
from quantdag.testing.alpaca_server import LocalAlpaca
from tests.conftest import ROOT, SAMPLE_SETTINGS

SESSION = date(2019, 2, 15)
OPEN = datetime(2019, 2, 15, 14, 30, tzinfo=UTC)
CLOSE = datetime(2019, 2, 15, 21, 0, tzinfo=UTC)
GRACE = timedelta(seconds=2)
CASH = Decimal("1000000")
TF = Timeframe.parse("15m")


@dataclass(frozen=True)
class Day:
    """The replayed session: its minute bars, the 15-minute history before it, the model,
    the sizing and path settings, and the fill model the simulated venue uses."""

    minutes: pl.DataFrame
    history: pl.DataFrame
    fit: FoldFit
    sizing: SizingConfig
    path: PathConfig
    fills: BrokerConfig
    settings_path: Path

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(sorted(self.minutes["symbol"].unique().to_list()))

    def day_bars(self) -> pl.DataFrame:
        """The session's 15-minute bars, built from its minutes by the batch aggregation."""
        return aggregate_bars(
            self.minutes, source=Timeframe.parse("1m"), target=TF, session="regular"
        )


def _minute_sample() -> pl.DataFrame:
    settings, universe = load_settings(ROOT / "config" / "settings.1m.yaml")
    cfg = settings.environments["local"].source
    assert isinstance(cfg, FileSourceConfig)
    src = FileBarSource(cfg, universe.base_timeframe, root=ROOT)
    raw = pl.concat(src.read_file(p, s) for p, s in src.files())
    day = raw.filter(pl.col("ts").dt.convert_time_zone("America/New_York").dt.date() == SESSION)
    result = validate_bars(
        day,
        universe=day["symbol"].unique().to_list(),
        timeframe=Timeframe.parse("1m"),
        session="regular",
    )
    return result.bars


def _model(history: pl.DataFrame) -> FoldFit:
    """A small LightGBM on the history's features: does the next bar close higher?"""
    feats = build_features(history, FeatureConfig(TF, "regular", "XNYS"))
    nxt = history.sort("symbol", "ts").with_columns(
        y=(pl.col("close").shift(-1).over("symbol") > pl.col("close")).cast(pl.Int64)
    )
    rows = feats.join(nxt.select("symbol", "ts", "y"), on=["symbol", "ts"]).drop_nulls("y")
    names = [c for c in feats.columns if c not in ("symbol", "ts")][:40]
    model = train_classifier(
        ModelConfig(
            "lightgbm", {"num_leaves": 7, "learning_rate": 0.1}, seed=3, num_boost_round=40
        ),
        rows,
        rows["y"].to_numpy(),
        features=names,
    )
    base_rate = float(rows["y"].mean())  # type: ignore[arg-type]
    return FoldFit(
        model,
        Calibrator("platt", {"a": 1.0, "b": 0.0}),
        None,
        base_rate,
        history["ts"].max(),  # type: ignore[arg-type]
    )


@pytest.fixture(scope="session")
def day(sample_bars: pl.DataFrame) -> Day:
    from assets.backtest import BacktestConfig, configurations

    settings, _ = load_settings(SAMPLE_SETTINGS)
    history = sample_bars.filter(pl.col("ts") < OPEN)
    grid, selected = configurations(BacktestConfig(), settings)
    path = path_config(settings.trading, strategy="model", bar_minutes=15, calendar="XNYS")
    # No square-root impact: the venue does not know the labels' volatility. Costs otherwise
    # as in the backtest (slippage, spread, commission), and a participation cap that binds.
    fills = BrokerConfig(
        CostModel(slippage_bps=1.0, half_spread_bps=1.0, commission_bps=0.5, impact_k=0.0),
        participation=0.02,
        max_leverage=1.0,
    )
    return Day(
        _minute_sample(),
        history,
        _model(history),
        grid[selected],
        path,
        fills,
        SAMPLE_SETTINGS,
    )


@pytest.fixture
def server(day: Day) -> Iterator[LocalAlpaca]:
    """The local Alpaca replaying the session, filling with the day's fill model."""
    with LocalAlpaca(
        day.minutes.select("symbol", "ts", "open", "high", "low", "close", "volume"),
        cash=CASH,
        fill=day.fills,
        fill_minutes=15,
        fill_latency_s=30.0,
    ) as srv:
        yield srv


def backtest_of(
    day: Day, decided_at: Callable[[datetime], datetime] | None = None
) -> tuple[BacktestResult, pl.DataFrame]:
    """The backtest engine on the same bars with the same model, deciding each bar at
    ``decided_at(bar start)`` (default: its end plus the grace, when the live session decides
    a bar some symbol's last minute is missing from); and the predictions it read."""
    bars = day.day_bars()
    every = pl.concat([day.history.select(bars.columns), bars]).sort("symbol", "ts")
    feats = build_features(every, FeatureConfig(TF, "regular", "XNYS"))
    today = feats.filter(pl.col("ts") >= OPEN).sort("symbol", "ts")
    prob = predict_bar(
        day.fit.model, today, transform=day.fit.transform, calibrator=day.fit.calibrator
    )
    vol = signal_volatility(every, barrier_config(_labels()))
    predictions = (
        today.select("symbol", "ts")
        .with_columns(prob=pl.Series(prob, dtype=pl.Float64), base_rate=day.fit.base_rate)
        .join(vol, on=["symbol", "ts"], how="left")
    )
    step = timedelta(minutes=15)
    closing = closing_bars(bars["ts"], 15, "XNYS") if day.sizing.flat_at_close else frozenset()
    result = run_model_strategy(
        bars,
        predictions,
        day.sizing,
        cash=CASH,
        config=day.fills,
        path=replace(day.path, strategy="model"),
        closing=closing,
        clock=decided_at or (lambda ts: min(ts + step, CLOSE) + GRACE),
    )
    return result, predictions


def _labels():  # type: ignore[no-untyped-def]
    settings, _ = load_settings(SAMPLE_SETTINGS)
    return settings.labels


def register_champion(fit: FoldFit, uri: str, name: str) -> str:
    """Register ``fit`` as ``name``'s champion in the MLflow store at ``uri`` the way the
    training asset does (native files, SHA-256 of each recorded on its run); its version."""
    import json
    import tempfile

    import mlflow

    from pipelines.models.registry import ARTIFACTS_TAG, CHAMPION, _digests, experiment_id

    client = mlflow.MlflowClient(uri)
    exp = experiment_id(client, uri, name)
    run = client.create_run(exp)
    run_id = run.info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        fit.model.save(model_dir)
        (model_dir / "features.json").write_text(json.dumps(list(fit.model.features)))
        (model_dir / "calibration.json").write_text(
            json.dumps({"method": fit.calibrator.method, "params": fit.calibrator.params})
        )
        (model_dir / "base_rate.json").write_text(json.dumps(fit.base_rate))
        client.log_artifacts(run_id, str(model_dir), artifact_path="model")
        client.set_tag(run_id, ARTIFACTS_TAG, json.dumps(_digests(model_dir)))
    client.set_tag(run_id, "trained_through", fit.trained_through.isoformat())
    client.set_terminated(run_id)
    client.create_registered_model(name)
    mv = client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run_id)
    client.set_registered_model_alias(name, CHAMPION, str(mv.version))
    return str(mv.version)
