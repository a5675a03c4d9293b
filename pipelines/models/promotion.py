"""The champion gate: a model must show skill out of sample, and beat the champion on the same
rows, before it may trade.

Three tests, each stated in the decision's reason with its numbers:

1. **Better than knowing the base rate.** The out-of-sample log loss must be lower than that of
   the constant forecast each fold knew when it was fitted (its ``base_rate``), by at least
   ``min_log_loss_z`` cluster-robust standard errors. Clusters, for this and every other error
   here, are at most 40 contiguous blocks of New York sessions: rows of one regime are not
   independent evidence. With few blocks the bar is Student's t at the same tail
   (:func:`critical_z`).
2. **Ranks better than chance.** The AUC must exceed 0.5 by ``min_auc_z`` standard errors. The
   AUC is taken within each fold and averaged by the fold's number of label pairs, so that a
   fold's level (its base rate) cannot pass for ranking skill or hide it; see
   ``docs/research/anti_skill.md``.
3. **Better than the champion, on the same rows.** The champion is re-scored on the
   challenger's out-of-sample rows that the champion never learnt from (after the last label it
   was trained or calibrated on, plus an embargo) and the challenger must beat it there by more
   than the margin of the :class:`PromotionRule`, and by ``min_z`` standard errors. A champion
   that can no longer be loaded or fed is replaced by a challenger that passed the gate.

Example: ``skill_gate(result.predictions, GateConfig(min_log_loss_z=2.0, min_auc_z=2.0))``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import polars as pl

from pipelines.models.evaluation import (
    EvaluationError,
    Score,
    auc_difference,
    auc_score,
    log_loss_skill,
    log_losses,
    mean_difference,
    session_blocks,
    stratified_auc,
)


@dataclass(frozen=True)
class GateConfig:
    """``min_log_loss_z`` 2.0: the log loss must beat the base-rate forecast by two standard
    errors; ``min_auc_z`` 2.0: the AUC must exceed 0.5 by two standard errors; ``min_rows``:
    fewer out-of-sample rows than this cannot pass."""

    min_log_loss_z: float = 2.0
    min_auc_z: float = 2.0
    min_rows: int = 500


@dataclass(frozen=True)
class PromotionRule:
    """Against a champion: promote when the challenger's ``metric`` (``log_loss`` or ``auc``)
    beats the champion's on the same rows by more than ``margin`` and by at least ``min_z``
    standard errors (a tie, or a gain within noise, keeps the champion).
    Example: ``PromotionRule("log_loss", margin=0.001, min_z=2.0)``: 0.001 nats a row lower,
    two standard errors clear."""

    metric: str = "log_loss"
    margin: float = 0.0
    min_z: float = 2.0

    def __post_init__(self) -> None:
        if self.metric not in ("log_loss", "auc"):
            raise ValueError(f'metric must be "log_loss" or "auc", got {self.metric!r}')
        if not self.min_z >= 0:
            raise ValueError(f"min_z must be 0 or more, got {self.min_z}")


@dataclass(frozen=True)
class GateVerdict:
    """Whether the model may trade, why, and the figures behind it."""

    passed: bool
    reasons: tuple[str, ...]
    figures: dict[str, float] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def skill_scores(predictions: pl.DataFrame) -> tuple[Score, Score]:
    """Log-loss skill over the base rate and the within-fold AUC of out-of-sample
    ``predictions`` (``ts``, ``fold``, ``y``, ``prob``, ``base_rate``)."""
    clusters = session_blocks(predictions["ts"])
    y, p = predictions["y"].to_numpy(), predictions["prob"].to_numpy()
    skill = log_loss_skill(y, p, predictions["base_rate"].to_numpy(), clusters)
    auc = stratified_auc(y, p, predictions["fold"].to_numpy(), clusters)
    return skill, auc


def skill_gate(predictions: pl.DataFrame, config: GateConfig) -> GateVerdict:
    """Tests 1 and 2 of the module docstring on out-of-sample ``predictions``."""
    n = predictions.height
    if n < config.min_rows:
        return GateVerdict(
            False, (f"only {n} out-of-sample rows (the gate needs {config.min_rows})",)
        )
    try:
        skill, auc = skill_scores(predictions)
    except EvaluationError as exc:
        return GateVerdict(False, (f"out-of-sample scores cannot be computed: {exc}",))
    figures = {**skill.as_dict("log_loss_skill"), **auc.as_dict("auc_within_fold")}
    reasons = []
    # With few blocks a z of 2 is weak evidence: the bar is Student's t at the same tail.
    loss_needed = critical_z(config.min_log_loss_z, skill.clusters)
    loss_ok = skill.z >= loss_needed
    reasons.append(
        f"log loss {'beats' if loss_ok else 'does not beat'} the base-rate forecast by "
        f"{config.min_log_loss_z:g} SE (gain {skill.value:+.5f} nats a row, "
        f"z {skill.z:+.2f}, needed {loss_needed:.2f} at {skill.clusters} blocks of sessions)"
    )
    auc_needed = critical_z(config.min_auc_z, auc.clusters)
    auc_ok = auc.z >= auc_needed
    reasons.append(
        f"AUC {auc.value:.4f} (SE {auc.se:.4f}, z {auc.z:+.2f}, needed {auc_needed:.2f}) "
        f"{'is' if auc_ok else 'is not'} above 0.5 by {config.min_auc_z:g} SE"
    )
    return GateVerdict(loss_ok and auc_ok, tuple(reasons), figures)


@dataclass(frozen=True)
class Comparison:
    """Challenger against champion on the same rows: ``improvement`` > 0 means the challenger
    is better (lower log loss, or higher AUC), with its standard error."""

    metric: str
    improvement: Score
    challenger: float
    champion: float
    rows: int


def compare_on_rows(
    y: npt.NDArray[np.int64],
    challenger: npt.NDArray[np.float64],
    champion: npt.NDArray[np.float64],
    ts: pl.Series,
    metric: str,
) -> Comparison:
    """The paired comparison of two forecasts of the same rows (``ts`` gives the sessions,
    grouped in contiguous blocks for the standard error)."""
    clusters = session_blocks(ts)
    if metric == "log_loss":
        a, b = log_losses(y, challenger), log_losses(y, champion)
        diff = mean_difference(b - a, clusters)
        return Comparison(metric, diff, float(a.mean()), float(b.mean()), int(y.size))
    diff = auc_difference(y, challenger, champion, clusters)
    champ = auc_score(y, champion, clusters).value
    return Comparison(metric, diff, champ + diff.value, champ, int(y.size))


@dataclass(frozen=True)
class Decision:
    """The promotion decision: ``promoted`` and the reason, in one sentence or a few."""

    promoted: bool
    reason: str
    comparison: Comparison | None = None


@dataclass(frozen=True)
class Unusable:
    """The champion can no longer be loaded or fed (a refused file, features that no longer
    exist): it cannot trade either, so a challenger that passed the gate replaces it."""

    reason: str


ChampionRescore = Callable[[], Comparison | Unusable | str]
"""Re-scores the champion on the challenger's rows: a :class:`Comparison`, an
:class:`Unusable` champion, or the reason the two cannot be compared (the champion stays)."""


def critical_z(min_z: float, clusters: int) -> float:
    """The z a comparison clustered in ``clusters`` blocks must reach to be as significant as
    ``min_z`` is with many: Student's t with ``clusters - 1`` degrees of freedom at the normal
    tail of ``min_z`` (2.0 -> 4.5 with 3 blocks, 2.1 with 40). One block cannot be compared."""
    from scipy.stats import norm, t

    if clusters < 2:
        return math.inf
    return float(t.ppf(norm.cdf(min_z), clusters - 1))


def decide(
    verdict: GateVerdict,
    rule: PromotionRule,
    champion: str | None,
    rescore: ChampionRescore,
) -> Decision:
    """Promote only a model that passed the gate, and, when there is a champion (``champion``
    names its version), only if it beats it on the same rows by more than ``rule.margin``."""
    if not verdict.passed:
        return Decision(False, f"not deployable: the skill gate refused it ({verdict.reason})")
    if champion is None:
        return Decision(True, f"passed the skill gate ({verdict.reason}); no champion yet")
    outcome = rescore()
    if isinstance(outcome, Unusable):
        return Decision(
            True,
            f"passed the skill gate ({verdict.reason}); champion v{champion} is unusable "
            f"({outcome.reason}) and is replaced",
        )
    if isinstance(outcome, str):
        return Decision(
            False,
            f"passed the skill gate, but champion v{champion} cannot be compared on the same "
            f"rows ({outcome}); kept as challenger",
        )
    gain = outcome.improvement
    clears = gain.value > rule.margin
    needed = critical_z(rule.min_z, gain.clusters)
    significant = gain.z >= needed
    verdict_text = (
        f"{'>' if clears else '<='} margin {rule.margin:g}, z {gain.z:+.2f} "
        f"{'>=' if significant else '<'} {needed:.2f} ({rule.min_z:g} SE at "
        f"{gain.clusters} blocks of sessions)"
    )
    return Decision(
        clears and significant,
        f"passed the skill gate ({verdict.reason}); on {outcome.rows} out-of-sample rows both "
        f"models never learnt from, {rule.metric} {outcome.challenger:.5f} vs champion "
        f"v{champion} {outcome.champion:.5f}: improvement {gain.value:+.5f} (SE {gain.se:.5f}) "
        f"{verdict_text}",
        outcome,
    )
