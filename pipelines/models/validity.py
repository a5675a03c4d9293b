"""Controls that prove the research path can tell signal from noise.

* **Positive control** (:func:`plant_signal`): one feature whose information about the label
  is known is added to real bars' features. Given ``target_auc``, the feature is
  ``s * d / 2 * (2y - 1) + e`` with ``e ~ N(0, 1)`` and ``d = sqrt(2) * Phi^-1(target_auc)``,
  so its AUC for ``y`` is ``target_auc`` by construction (two unit normals ``d`` apart). The
  whole path (walk-forward, calibration, bet sizing, the engine with costs) must recover that
  AUC and make money with it; with ``s = -1`` on the rows the models are tested on (the relation
  the models learnt inverted out of sample) it must lose. Anything between a real signal and
  the ledger that destroys or inverts it fails one of the two.
* **Block shuffle** (:func:`block_shuffle`): the labels of whole sessions are moved to other
  sessions and turned by a random number of bars, which keeps their serial structure
  (neighbouring labels overlap) but breaks every relation to the features, the time of day's
  included. Unlike an i.i.d. shuffle it still lets a purge or embargo failure show, as labels
  that overlap across a train/test boundary stay alike.
* **Leak canary** (:func:`leak_canary`): the walk-forward on block-shuffled labels must score
  chance out of sample; the same with purging switched off must not (the canary has power).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import Decimal

import numpy as np
import numpy.typing as npt
import polars as pl
from scipy.stats import norm

from pipelines.backtest.broker import BrokerConfig
from pipelines.backtest.model_backtest import Market, simulate_model
from pipelines.backtest.strategy import SizingConfig
from pipelines.bars.calendar import session_dates
from pipelines.labels.triple_barrier import BarrierConfig
from pipelines.models.estimators import ModelConfig
from pipelines.models.evaluation import Score, session_clusters, stratified_auc
from pipelines.models.splits import Fold
from pipelines.models.walk_forward import WalkForwardResult, run_walk_forward

PLANTED = "statistical_planted_signal"


def planted_separation(target_auc: float) -> float:
    """The distance ``d`` between two unit normals whose AUC is ``target_auc``."""
    if not 0.5 <= target_auc < 1.0:
        raise ValueError("target_auc must lie in [0.5, 1)")
    return math.sqrt(2.0) * float(norm.ppf(target_auc))


def plant_signal(
    data: pl.DataFrame,
    *,
    target_auc: float,
    seed: int,
    flip: npt.NDArray[np.int64] | None = None,
    column: str = PLANTED,
) -> pl.DataFrame:
    """``data`` with a ``column`` whose AUC for ``y`` is ``target_auc`` (see the module
    docstring); rows at the indices ``flip`` get the inverted relation."""
    d = planted_separation(target_auc)
    rng = np.random.default_rng(seed)
    sign = np.ones(data.height)
    if flip is not None:
        sign[flip] = -1.0
    y = data["y"].to_numpy().astype(np.float64)
    values = sign * d / 2.0 * (2.0 * y - 1.0) + rng.standard_normal(data.height)
    return data.with_columns(pl.Series(column, values))


def planted_walk_forward(
    data: pl.DataFrame,
    folds: list[Fold],
    config: ModelConfig,
    *,
    features: list[str],
    target_auc: float,
    seed: int,
    flipped: bool = False,
    weight: str | None = None,
) -> WalkForwardResult:
    """The walk-forward of :func:`pipelines.models.walk_forward.run_walk_forward` with the
    planted feature among ``features``. ``flipped``: each fold's test rows carry the inverted
    relation (its models learnt the planted one from their training rows). ``data``'s rows
    must be those the ``folds`` index (see :func:`decouple_features`)."""
    if not flipped:
        planted = plant_signal(data, target_auc=target_auc, seed=seed)
        return run_walk_forward(
            planted, folds, config, features=[*features, PLANTED], weight=weight
        )
    parts = [
        run_walk_forward(
            plant_signal(data, target_auc=target_auc, seed=seed, flip=fold.test),
            [fold],
            config,
            features=[*features, PLANTED],
            weight=weight,
        )
        for fold in folds
    ]
    return WalkForwardResult(
        pl.concat([p.predictions for p in parts]),
        [m for p in parts for m in p.metrics],
        [s for p in parts for s in p.skipped],
        [f for p in parts for f in p.fits],
        [r for p in parts for r in p.records],
    )


def decouple_features(data: pl.DataFrame, features: list[str], *, seed: int) -> pl.DataFrame:
    """``data`` with its real ``features`` moved, session by session, to other sessions
    (:func:`block_shuffle`): they keep their distributions and serial structure but tell
    nothing about the labels, so a planted feature is the only information there is and its
    AUC is the whole of what a model can find."""
    return block_shuffle(data, seed=seed, columns=tuple(features))


def planted_auc(
    data: pl.DataFrame, predictions: pl.DataFrame, *, target_auc: float, seed: int
) -> Score:
    """The planted feature's own within-fold AUC on the predicted rows, as planted (not
    flipped): the realisation of ``target_auc`` on those rows."""
    planted = plant_signal(data, target_auc=target_auc, seed=seed)
    rows = predictions.select("symbol", "ts", "fold", "y").join(
        planted.select("symbol", "ts", PLANTED), on=["symbol", "ts"], how="left"
    )
    return within_fold_auc(rows, PLANTED)


def within_fold_auc(predictions: pl.DataFrame, column: str = "prob") -> Score:
    """The within-fold AUC of ``column`` with its session-clustered standard error."""
    return stratified_auc(
        predictions["y"].to_numpy(),
        predictions[column].to_numpy(),
        predictions["fold"].to_numpy(),
        session_clusters(predictions["ts"]),
    )


def block_shuffle(
    data: pl.DataFrame, *, seed: int, columns: tuple[str, ...] = ("y",)
) -> pl.DataFrame:
    """``data`` with the ``columns`` (labels, or features) of every session moved, whole, to
    another session, and turned by a random number of bars: one permutation of the sessions
    and one turn per session for all symbols, so that bar i of symbol s in session d takes the
    values of bar (i + k_d) mod n of s in session pi(d), n being that session's bars of s. The
    values keep their serial structure (but at the one seam), and lose any relation to the
    other columns, the time of day's included. Rows whose symbol has no bars in the donor
    session are dropped."""
    day = session_dates(pl.col("ts"))
    keyed = data.with_columns(_day=day, _i=pl.int_range(pl.len()).over("symbol", day))
    days = keyed["_day"].unique().sort()
    rng = np.random.default_rng(seed)
    mapping = pl.DataFrame(
        {
            "_day": days,
            "_from": days.gather(rng.permutation(days.len())),
            "_turn": rng.integers(0, 1_000_000, days.len()),
        }
    )
    counts = keyed.group_by("symbol", pl.col("_day").alias("_from")).agg(_n=pl.len())
    donors = keyed.select(
        "symbol", pl.col("_day").alias("_from"), pl.col("_i").alias("_j"), *columns
    )
    moved = (
        keyed.drop(*columns)
        .join(mapping, on="_day")
        .join(counts, on=["symbol", "_from"], how="inner")
        .with_columns(_j=(pl.col("_i") + pl.col("_turn")) % pl.col("_n"))
        .join(donors, on=["symbol", "_from", "_j"], how="inner")
        .sort("ts", "symbol")
    )
    return moved.select(data.columns)


@dataclass(frozen=True)
class CanaryResult:
    """The out-of-sample within-fold AUC on block-shuffled labels, and whether it stayed
    within ``z`` standard errors of chance (``passed``: no leak seen)."""

    auc: Score
    z: float

    @property
    def passed(self) -> bool:
        return self.auc.z < self.z


def leak_canary(
    data: pl.DataFrame,
    split: Callable[[pl.DataFrame], list[Fold]],
    config: ModelConfig,
    *,
    features: list[str],
    seeds: tuple[int, ...] = (1, 2, 3),
    z: float = 3.0,
) -> CanaryResult:
    """The walk-forward (folds from ``split``) on block-shuffled labels, once per seed (one
    shuffle each): chance is expected; a within-fold AUC ``z`` standard errors above 0.5 means
    rows leaked across the folds' boundaries. The seeds' predictions are pooled, each seed's
    folds a stratum of their own, and a session left out of the jackknife is left out of every
    seed's run, so their dependence is accounted for."""
    parts = []
    for seed in seeds:
        shuffled = block_shuffle(data, seed=seed)
        result = run_walk_forward(
            shuffled,
            split(shuffled),
            replace(config, seed=seed),
            features=features,
            calibration="none",
        )
        parts.append(result.predictions.with_columns(fold=pl.col("fold") + 10_000 * seed))
    return CanaryResult(within_fold_auc(pl.concat(parts)), z)


@dataclass(frozen=True)
class ControlResult:
    """A positive control's outcome: the model's within-fold AUC, the planted feature's own
    AUC on the same rows, and the backtest's profit after every cost (USD) and fills."""

    target_auc: float
    auc: Score
    planted_auc: Score
    pnl_usd: float
    fills: int
    predictions: pl.DataFrame

    def recovered(self, z: float = 3.0) -> bool:
        """The model's AUC is within ``z`` standard errors of the target."""
        return abs(self.auc.value - self.target_auc) <= z * self.auc.se


def positive_control(
    bars: pl.DataFrame,
    data: pl.DataFrame,
    folds: list[Fold],
    config: ModelConfig,
    *,
    features: list[str],
    target_auc: float,
    seed: int,
    flipped: bool,
    sizing: SizingConfig,
    broker: BrokerConfig,
    barriers: BarrierConfig,
    market: Market,
    cash: Decimal = Decimal("1000000"),
) -> ControlResult:
    """The planted signal through the whole path: the walk-forward with ``features`` and the
    planted one (:func:`planted_walk_forward`), its calibrated probabilities sized against
    their base rate and traded by the event engine with ``broker``'s costs on the real
    ``bars``."""
    result = planted_walk_forward(
        data, folds, config, features=features, target_auc=target_auc, seed=seed, flipped=flipped
    )
    predictions = result.predictions
    trades = simulate_model(
        bars,
        predictions,
        sizing=sizing,
        broker=broker,
        cash=cash,
        barriers=barriers,
        market=market,
    )
    return ControlResult(
        target_auc,
        within_fold_auc(predictions),
        planted_auc(data, predictions, target_auc=target_auc, seed=seed),
        float(trades.equity["equity"][-1]) - float(cash),
        len(trades.ledger.fills),
        predictions,
    )
