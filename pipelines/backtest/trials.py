"""Every backtested configuration is a trial, and the reported Sharpe ratio pays for them all.

A trial is one configuration of a strategy family (model, threshold, exits, sizing, costs) run
on one model's predictions; its daily returns (the equity at each New York session's last bar:
per-bar returns of overlapping holdings are autocorrelated, daily ones far less) are recorded
in a :class:`TrialLog` (an MLflow experiment in production). The Deflated Sharpe Ratio of the
reported configuration (Bailey and López de Prado 2014) then uses N = every trial recorded for
the family, on any night, and V = the variance of their daily Sharpe ratios; the Probability of
Backtest Overfitting (Bailey et al. 2015) is taken by CSCV over the daily returns of the
configurations tried together on the same days. Running the very same configuration on the very
same predictions again is the same trial, not a new one (a key identifies it).

Example: ``log.record(family, trials, as_of=now)`` returns the daily Sharpe ratios of every
trial of the family, these included; :func:`deflate` turns them into the selection figures.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import polars as pl

from pipelines.backtest.analytics import probability_of_backtest_overfitting
from pipelines.backtest.statistics import expected_max_sharpe, probabilistic_sharpe_ratio
from pipelines.bars.calendar import NEW_YORK

F64 = npt.NDArray[np.float64]
MIN_PBO_DAYS = 6


def daily_returns(equity: pl.DataFrame, start_equity: float) -> pl.DataFrame:
    """``date`` (New York) and ``ret``: the simple return from one session's last equity to
    the next (the first from ``start_equity``), from an equity curve (``ts``, ``equity``)."""
    closes = (
        equity.sort("ts")
        .group_by(pl.col("ts").dt.convert_time_zone(NEW_YORK).dt.date().alias("date"))
        .agg(pl.col("equity").last())
        .sort("date")
    )
    previous = closes["equity"].shift(1).fill_null(start_equity)
    return closes.select("date", ret=closes["equity"] / previous - 1.0)


def sharpe(returns: F64) -> float:
    """Mean over standard deviation (ddof=1) of per-period returns. A series that never moved
    (a configuration that never traded) has Sharpe 0; fewer than two returns, or a constant
    non-zero one, has none (a ValueError says so)."""
    r = np.asarray(returns, dtype=np.float64)
    if r.size < 2:
        raise ValueError("a Sharpe ratio needs at least two returns")
    sd = float(np.std(r, ddof=1))
    if sd > 0:
        return float(np.mean(r)) / sd
    if not r.any():
        return 0.0
    raise ValueError("the Sharpe ratio of a constant non-zero return series is undefined")


@dataclass(frozen=True)
class Trial:
    """One configuration of the family, run once: ``name`` (e.g. ``threshold=0.02 exits=
    barriers``), its ``params``, the identity of what it ran on (``basis``: e.g. the model
    run), and its daily returns."""

    name: str
    params: dict[str, Any]
    basis: str
    daily: pl.DataFrame

    @property
    def sharpe(self) -> float:
        return sharpe(self.daily["ret"].to_numpy())

    @property
    def key(self) -> str:
        """Identifies the trial: the same configuration on the same basis is the same trial."""
        body = json.dumps({"params": self.params, "basis": self.basis}, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()[:16]


def predictions_basis(predictions: pl.DataFrame) -> str:
    """The identity of what trials ran on: a digest of the forecasts (``symbol``, ``ts``,
    ``prob``), whatever order their rows are in. A model retrained to the very same forecasts
    is the same basis, so re-running a grid on it adds no trial."""
    keys = predictions.select("symbol", "ts", "prob").sort("symbol", "ts")
    return hashlib.sha256(keys.hash_rows(seed=0).to_numpy().tobytes()).hexdigest()[:16]


class TrialLog(Protocol):
    """Where trials are kept across runs."""

    def record(self, family: str, trials: Sequence[Trial], *, as_of: datetime) -> list[float]:
        """Record ``trials`` (those already recorded, by key, are not added again) and return
        the daily Sharpe ratios of every trial recorded for ``family``."""
        ...


@dataclass
class MemoryTrialLog:
    """A :class:`TrialLog` in memory (tests, research sessions)."""

    trials: dict[str, dict[str, float]] = field(default_factory=dict)

    def record(self, family: str, trials: Sequence[Trial], *, as_of: datetime) -> list[float]:
        book = self.trials.setdefault(family, {})
        for t in trials:
            book.setdefault(t.key, t.sharpe)
        return list(book.values())


@dataclass(frozen=True)
class MlflowTrialLog:
    """A :class:`TrialLog` in an MLflow experiment: one run per trial, tagged with its family
    and key, its parameters, its daily Sharpe and its daily returns (``daily_returns.json``)."""

    tracking_uri: str
    experiment: str

    def record(self, family: str, trials: Sequence[Trial], *, as_of: datetime) -> list[float]:
        from pipelines.models.registry import _client, experiment_id

        client = _client(self.tracking_uri)
        exp_id = experiment_id(client, self.tracking_uri, self.experiment)
        # A trial counts once its run is terminated, its last write: a run left half written
        # by a crash stays RUNNING, is ignored, and the trial is recorded again.
        where = f"tags.family = '{family.replace(chr(39), '')}' and attributes.status = 'FINISHED'"
        seen = {
            r.data.tags.get("trial_key")
            for r in client.search_runs([exp_id], filter_string=where, max_results=50_000)
        }
        for t in trials:
            if t.key in seen:
                continue
            run = client.create_run(
                exp_id,
                run_name=t.name,
                tags={
                    "family": family,
                    "trial_key": t.key,
                    "basis": t.basis,
                    "recorded_at": as_of.isoformat(),
                },
            )
            rid = run.info.run_id
            for k, v in t.params.items():
                client.log_param(rid, k, v)
            stamp = int(as_of.timestamp() * 1000)
            client.log_metric(rid, "sharpe_daily", t.sharpe, timestamp=stamp)
            client.log_metric(rid, "days", float(t.daily.height), timestamp=stamp)
            client.log_text(
                rid,
                json.dumps(
                    {
                        "date": [d.isoformat() for d in t.daily["date"]],
                        "ret": t.daily["ret"].to_list(),
                    }
                ),
                "daily_returns.json",
            )
            client.set_terminated(rid)
            seen.add(t.key)
        runs = client.search_runs([exp_id], filter_string=where, max_results=50_000)
        return [float(r.data.metrics["sharpe_daily"]) for r in runs]


@dataclass(frozen=True)
class Selection:
    """What choosing the reported configuration among every trial costs its Sharpe (daily
    figures; ``annualised`` multiplies by sqrt(252)): ``n_trials`` (N), ``sr_variance`` (V,
    the variance of the trials' daily Sharpe ratios), ``sr0`` (the expected maximum Sharpe of
    N skill-less trials), ``dsr`` (P[true Sharpe > 0] after the selection), and the PBO of the
    configurations tried together (None, with ``notes``, where it cannot be taken)."""

    sharpe: float
    days: int
    n_trials: int
    sr_variance: float
    sr0: float
    psr: float | None
    dsr: float | None
    pbo: float | None
    pbo_configurations: int
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, float]:
        out = {
            "sharpe_daily": self.sharpe,
            "sharpe_daily_annualised": self.sharpe * math.sqrt(252),
            "days": float(self.days),
            "n_trials": float(self.n_trials),
            "trials_sharpe_variance": self.sr_variance,
            "expected_max_sharpe": self.sr0,
            "pbo_configurations": float(self.pbo_configurations),
        }
        for key, value in (("psr", self.psr), ("deflated_sharpe", self.dsr), ("pbo", self.pbo)):
            if value is not None:
                out[key] = value
        return out


def deflate(selected: Trial, family_sharpes: Sequence[float], tried: Sequence[Trial]) -> Selection:
    """The selection figures of ``selected`` given the daily Sharpe ratios of every trial of
    its family (``family_sharpes``, ``selected``'s included) and the configurations ``tried``
    together with it (for the PBO)."""
    r = selected.daily["ret"].to_numpy()
    if r.size < 3:
        raise ValueError(f"the deflated Sharpe needs at least 3 daily returns, got {r.size}")
    sr = sharpe(r)
    n = max(len(family_sharpes), 1)
    v = float(np.var(family_sharpes, ddof=1)) if n > 1 else 0.0
    sr0 = expected_max_sharpe(n, v)
    notes = []
    psr: float | None = None
    dsr: float | None = None
    if np.std(r) > 0:
        from scipy.stats import kurtosis, skew  # a second of start-up, for the few who need it

        sk, ku = float(skew(r)), float(kurtosis(r, fisher=False))
        psr = probabilistic_sharpe_ratio(sr, r.size, skewness=sk, kurt=ku)
        dsr = probabilistic_sharpe_ratio(sr, r.size, skewness=sk, kurt=ku, benchmark=sr0)
    else:
        notes.append(
            "the reported configuration never traded (its equity never changed): there is no "
            "Sharpe ratio to test, so no PSR or deflated Sharpe; lower its threshold"
        )
    if n == 1:
        notes.append("one trial recorded: the deflated Sharpe equals the PSR")
    pbo: float | None = None
    matrix = returns_matrix(tried)
    if matrix.shape[1] < 2:
        notes.append("PBO needs at least two configurations tried together")
    elif matrix.shape[0] < MIN_PBO_DAYS:
        notes.append(f"PBO needs at least {MIN_PBO_DAYS} days; the test period has {r.size}")
    else:
        groups = min(16, matrix.shape[0] - matrix.shape[0] % 2)
        pbo = probability_of_backtest_overfitting(matrix, groups)
    return Selection(sr, int(r.size), n, v, sr0, psr, dsr, pbo, matrix.shape[1], tuple(notes))


def returns_matrix(trials: Sequence[Trial]) -> F64:
    """Days x configurations: the daily returns of ``trials`` on their common days."""
    if not trials:
        return np.zeros((0, 0))
    joined = trials[0].daily.select("date", pl.col("ret").alias("t0"))
    for k, t in enumerate(trials[1:], start=1):
        joined = joined.join(t.daily.select("date", pl.col("ret").alias(f"t{k}")), on="date")
    return joined.sort("date").drop("date").to_numpy().astype(np.float64)
