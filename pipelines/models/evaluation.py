"""Out-of-sample scores with standard errors that respect overlapping labels.

Triple-barrier labels of neighbouring bars share most of their future path, and the bars of one
session share its news: rows are not independent, so a naive standard error (one row, one
observation) overstates how much a score can be trusted. Here rows are grouped into clusters
(by default the New York session of the label's start, which contains a whole label span when
labels are cut at the session close) and every standard error is cluster-robust:

* the AUC's by Obuchowski's clustered generalisation of DeLong's estimator (Obuchowski 1997,
  "Nonparametric analysis of clustered ROC curve data", Biometrics 53);
* a mean per-row difference of log losses (model against a reference forecast) by the usual
  cluster-robust variance of a mean.

Example: ``auc_score(y, p, session_clusters(ts))`` is the AUC with its standard error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from pipelines.bars.calendar import NEW_YORK

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
LOSS_CLIP = 1e-9  # as sklearn's log_loss: a probability of exactly 0 or 1 costs 20.7, not inf


class EvaluationError(ValueError):
    """A score cannot be computed on these rows; the message says why."""


def session_clusters(ts: pl.Series) -> I64:
    """Cluster ids (0..K-1, in time order) of the New York trading date of each timestamp."""
    day = ts.dt.convert_time_zone(NEW_YORK).dt.date()
    codes = day.rank("dense").cast(pl.Int64) - 1
    return np.asarray(codes.to_numpy(), dtype=np.int64)


def session_blocks(ts: pl.Series, max_groups: int = 40) -> I64:
    """Cluster ids of at most ``max_groups`` contiguous runs of New York sessions, in time
    order (each session its own cluster when there are fewer). Errors clustered on these see
    dependence that lasts several days (a regime), which single sessions do not."""
    sessions = session_clusters(ts)
    return _contiguous_groups(sessions, int(sessions.max()) + 1 if sessions.size else 0, max_groups)


def _contiguous_groups(index: I64, k: int, max_groups: int) -> I64:
    """Cluster indices 0..k-1 (in time order) cut into at most ``max_groups`` contiguous runs."""
    b = max(1, min(max_groups, k))
    return np.minimum(index * b // max(k, 1), b - 1).astype(np.int64)


@dataclass(frozen=True)
class Score:
    """An estimate, its cluster-robust standard error, the rows and clusters it came from.
    ``z`` is ``(value - null) / se``."""

    value: float
    se: float
    null: float
    rows: int
    clusters: int

    @property
    def z(self) -> float:
        if not self.se > 0:
            return math.copysign(math.inf, self.value - self.null) if self.value != self.null else 0
        return (self.value - self.null) / self.se

    def interval(self, z: float = 1.96) -> tuple[float, float]:
        """The two-sided normal interval ``value +- z * se``."""
        return self.value - z * self.se, self.value + z * self.se

    def as_dict(self, prefix: str) -> dict[str, float]:
        return {
            prefix: self.value,
            f"{prefix}_se": self.se,
            f"{prefix}_z": self.z,
            f"{prefix}_clusters": float(self.clusters),
        }


def _check(y: npt.NDArray[Any], p: F64, clusters: I64) -> tuple[I64, F64, I64]:
    y = np.asarray(y).astype(np.int64)
    p = np.asarray(p, dtype=np.float64)
    clusters = np.asarray(clusters, dtype=np.int64)
    if not (y.shape == p.shape == clusters.shape) or y.ndim != 1:
        raise EvaluationError("y, probabilities and clusters must be 1-d and of one length")
    if not np.isin(y, (0, 1)).all():
        raise EvaluationError("y must hold 0 and 1 only")
    if not np.isfinite(p).all():
        raise EvaluationError("a probability is NaN or infinite")
    return y, p, clusters


def _cluster_index(clusters: I64) -> tuple[I64, int]:
    _, inverse = np.unique(clusters, return_inverse=True)
    return inverse.astype(np.int64), int(inverse.max()) + 1 if inverse.size else 0


def _auc_influence(y: I64, p: F64) -> tuple[float, F64]:
    """The AUC and each row's influence on it, from DeLong's structural components: for a
    positive, the share of negatives it outranks less the AUC, over the number of positives;
    for a negative, the share of positives that outrank it less the AUC, over the number of
    negatives (ties count one half). Summed by cluster, the influences give Obuchowski's
    clustered variance."""
    pos, neg = p[y == 1], p[y == 0]
    m, n = pos.size, neg.size
    if m == 0 or n == 0:
        raise EvaluationError("the AUC needs both classes among the rows")
    neg_sorted, pos_sorted = np.sort(neg), np.sort(pos)
    below = np.searchsorted(neg_sorted, pos, side="left")
    v10 = (below + 0.5 * (np.searchsorted(neg_sorted, pos, side="right") - below)) / n
    above = np.searchsorted(pos_sorted, neg, side="right")
    v01 = (m - above + 0.5 * (above - np.searchsorted(pos_sorted, neg, side="left"))) / m
    theta = float(v10.mean())
    psi = np.empty(y.size)
    psi[y == 1] = (v10 - theta) / m
    psi[y == 0] = (v01 - theta) / n
    return theta, psi


def _clustered_variance(psi: F64, clusters: I64) -> float:
    index, k = _cluster_index(clusters)
    if k < 2:
        raise EvaluationError("a clustered standard error needs at least two clusters")
    sums = np.bincount(index, weights=psi, minlength=k)
    return k / (k - 1) * float(sums @ sums)


def _stratified(y: I64, p: F64, strata: I64) -> tuple[float, F64]:
    """The AUC within each stratum, averaged with weights proportional to the stratum's number
    of (positive, negative) pairs, and each row's influence on it. Strata with one class only
    have no pairs and carry no weight."""
    theta, psi = 0.0, np.zeros(y.size)
    total = 0.0
    parts = []
    for g in np.unique(strata):
        rows = np.flatnonzero(strata == g)
        pairs = float((y[rows] == 1).sum()) * float((y[rows] == 0).sum())
        if pairs:
            parts.append((rows, pairs))
            total += pairs
    if not parts:
        raise EvaluationError("the AUC needs both classes within at least one stratum")
    for rows, pairs in parts:
        t, ps = _auc_influence(y[rows], p[rows])
        theta += pairs / total * t
        psi[rows] = pairs / total * ps
    return theta, psi


def auc_score(y: npt.NDArray[Any], p: F64, clusters: I64) -> Score:
    """The AUC of ``p`` for the binary ``y`` (ties count one half), with Obuchowski's
    cluster-robust standard error; the null is 0.5 (no skill)."""
    y, p, clusters = _check(y, p, clusters)
    theta, psi = _auc_influence(y, p)
    var = _clustered_variance(psi, clusters)
    return Score(theta, math.sqrt(var), 0.5, int(y.size), int(np.unique(clusters).size))


def stratified_auc(
    y: npt.NDArray[Any], p: F64, strata: npt.NDArray[Any], clusters: I64, max_groups: int = 40
) -> Score:
    """The AUC within each stratum (e.g. a walk-forward fold), averaged by the strata's
    numbers of label pairs: ranking skill that a shift of the forecast's level between strata
    cannot create or hide. Its standard error is a grouped jackknife: the clusters (sessions,
    in time order) are cut into at most ``max_groups`` contiguous groups and each group is left
    out in turn. Unlike a linearised (influence) estimate it sees how much the strata's own
    AUCs differ, which is most of the uncertainty when a stratum holds few sessions. The
    score's ``clusters`` is the number of groups left out (its degrees of freedom + 1)."""
    y, p, clusters = _check(y, p, clusters)
    codes = np.unique(np.asarray(strata), return_inverse=True)[1].astype(np.int64)
    theta, _ = _stratified(y, p, codes)
    index, k = _cluster_index(clusters)
    if k < 2:
        raise EvaluationError("a clustered standard error needs at least two clusters")
    groups = _contiguous_groups(index, k, max_groups)
    b = int(groups.max()) + 1
    leave_out = np.empty(b)
    for g in range(b):
        keep = groups != g
        try:
            leave_out[g] = _stratified(y[keep], p[keep], codes[keep])[0]
        except EvaluationError:
            raise EvaluationError(
                "too few sessions to leave one group out and still rank both classes"
            ) from None
    var = (b - 1) / b * float(((leave_out - leave_out.mean()) ** 2).sum())
    return Score(theta, math.sqrt(var), 0.5, int(y.size), b)


def auc_difference(y: npt.NDArray[Any], p_a: F64, p_b: F64, clusters: I64) -> Score:
    """AUC of ``p_a`` minus AUC of ``p_b`` on the same rows (paired), with a cluster-robust
    standard error from the difference of their influences; null 0."""
    y, p_a, clusters = _check(y, p_a, clusters)
    _, p_b, _ = _check(y, p_b, clusters)
    theta_a, psi_a = _auc_influence(y, p_a)
    theta_b, psi_b = _auc_influence(y, p_b)
    var = _clustered_variance(psi_a - psi_b, clusters)
    diff = theta_a - theta_b
    return Score(diff, math.sqrt(var), 0.0, int(y.size), int(np.unique(clusters).size))


def log_losses(y: npt.NDArray[Any], p: F64) -> F64:
    """Per-row log loss (natural log) of forecasts ``p`` for outcomes ``y``."""
    q = np.clip(np.asarray(p, dtype=np.float64), LOSS_CLIP, 1.0 - LOSS_CLIP)
    out: F64 = -np.where(np.asarray(y) == 1, np.log(q), np.log1p(-q))
    return out


def mean_difference(d: F64, clusters: I64) -> Score:
    """The mean of per-row values ``d`` with a cluster-robust standard error; null 0."""
    d = np.asarray(d, dtype=np.float64)
    if d.size == 0:
        raise EvaluationError("no rows to average")
    clusters = np.asarray(clusters, dtype=np.int64)
    mean = float(d.mean())
    var = _clustered_variance((d - mean) / d.size, clusters)
    return Score(mean, math.sqrt(var), 0.0, int(d.size), int(np.unique(clusters).size))


def log_loss_skill(y: npt.NDArray[Any], p: F64, reference: F64, clusters: I64) -> Score:
    """How much lower the log loss of ``p`` is than that of the ``reference`` forecast (e.g.
    the base rate known when the model was fitted), per row on average: positive = better
    than the reference, with a cluster-robust standard error."""
    y, p, clusters = _check(y, p, clusters)
    return mean_difference(log_losses(y, reference) - log_losses(y, p), clusters)
