"""Time-series cross-validation that keeps every out-of-sample number out of sample.

Samples are labels with a start ``t0`` (when the features are observed) and an end ``t1`` (the
last bar the label reads). A training sample is **purged** when its span ``[t0, t1]`` overlaps
the span of any test (or validation) sample, and **embargoed** when it starts within
``embargo`` after a test block ends (serial correlation leaks forwards). Window sizes are either
a number of distinct bar times (``int``) or a calendar duration (``timedelta``).

Splitters: :func:`walk_forward` (rolling or anchored, with optional validation window),
:func:`purged_kfold` and :func:`combinatorial_purged` (CPCV, López de Prado AFML ch. 12).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import combinations

import numpy as np
import numpy.typing as npt
import polars as pl

Index = npt.NDArray[np.int64]
Size = int | timedelta


class SplitError(ValueError):
    """The requested split cannot be made on these samples; the message says why."""


@dataclass(frozen=True)
class Fold:
    """Row indices of one split (into the samples frame), and the test block's time range."""

    index: int
    train: Index
    validation: Index
    test: Index
    test_start: datetime
    test_end: datetime
    groups: tuple[int, ...] = ()


def _times(samples: pl.DataFrame) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    for col in ("ts", "t1"):
        if col not in samples.columns:
            raise SplitError(f"samples need a {col!r} column (label start and end)")
    t0 = samples["ts"].dt.epoch("us").to_numpy()
    t1 = samples["t1"].dt.epoch("us").to_numpy()
    if (t1 < t0).any():
        raise SplitError("a sample ends (t1) before it starts (ts)")
    return t0, t1


def purge(
    candidates: Index,
    held_out: Index,
    t0: npt.NDArray[np.int64],
    t1: npt.NDArray[np.int64],
    embargo_us: int = 0,
) -> Index:
    """``candidates`` without the samples whose span overlaps a held-out sample's span, nor
    those starting within ``embargo_us`` after the end of a contiguous held-out block."""
    if held_out.size == 0 or candidates.size == 0:
        return candidates
    # Held-out spans merged into disjoint blocks (sorted by start).
    order = np.argsort(t0[held_out], kind="stable")
    starts, ends = t0[held_out][order], t1[held_out][order]
    blocks: list[list[int]] = []
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        if blocks and s <= blocks[-1][1]:
            blocks[-1][1] = max(blocks[-1][1], e)
        else:
            blocks.append([s, e])
    keep = np.ones(candidates.size, dtype=bool)
    c0, c1 = t0[candidates], t1[candidates]
    for s, e in blocks:
        keep &= ~((c0 <= e) & (c1 >= s))  # overlaps the block
        keep &= ~((c0 > e) & (c0 <= e + embargo_us))  # starts inside the embargo
    kept: Index = candidates[keep]
    return kept


def _boundaries(unique_us: npt.NDArray[np.int64], start_pos: int, size: Size) -> int:
    """The position in ``unique_us`` just past a window of ``size`` starting at ``start_pos``."""
    if isinstance(size, int):
        return start_pos + size
    limit = unique_us[start_pos] + int(size.total_seconds() * 1_000_000)
    return int(np.searchsorted(unique_us, limit, side="left"))


def walk_forward(
    samples: pl.DataFrame,
    *,
    train: Size,
    test: Size,
    step: Size | None = None,
    validation: Size = 0,
    anchored: bool = False,
    embargo: timedelta = timedelta(0),
    purge_spans: bool = True,
) -> list[Fold]:
    """Consecutive test windows of ``test``; before each, a ``validation`` window (for early
    stopping and calibration; may be 0) and a training window of ``train`` (rolling) or
    everything since the start (``anchored``). Test windows start every ``step`` (default:
    ``test``, so they tile the time axis; a shorter step would predict a bar twice and is
    refused). Training and validation samples are purged against the windows they precede;
    ``purge_spans=False`` switches purging and the embargo off, which only a leakage canary
    should ever do (it shows what the purge prevents).

    Example: ``walk_forward(labels, train=timedelta(days=60), validation=timedelta(days=10),
    test=timedelta(days=10))``.
    """
    t0, t1 = _times(samples)
    unique = np.unique(t0)
    n = unique.size
    step = test if step is None else step
    if _shorter(step, test):
        raise SplitError(
            f"step {step} is shorter than the test window {test}: test windows "
            "would overlap and predict some bars twice"
        )
    emb = int(embargo.total_seconds() * 1e6)
    rows = np.arange(samples.height, dtype=np.int64)
    folds: list[Fold] = []
    start = _boundaries(unique, 0, train) if train else 0
    start = _boundaries(unique, start, validation) if validation and start < n else start
    while start < n:
        end = min(_boundaries(unique, start, test), n)
        val_start = _back(unique, start, validation)
        train_start = 0 if anchored else _back(unique, val_start, train)
        in_test = (t0 >= unique[start]) & (t0 < (unique[end] if end < n else np.inf))
        in_val = (t0 >= unique[val_start]) & (t0 < unique[start])
        in_train = (t0 >= unique[train_start]) & (t0 < unique[val_start])
        test_rows = rows[in_test]
        if purge_spans:
            val_rows = purge(rows[in_val], test_rows, t0, t1, emb)
            train_rows = purge(purge(rows[in_train], test_rows, t0, t1, emb), val_rows, t0, t1, emb)
        else:
            val_rows, train_rows = rows[in_val], rows[in_train]
        folds.append(_fold(len(folds), train_rows, val_rows, test_rows, t0))
        start = _boundaries(unique, start, step)
    if not folds:
        raise SplitError(
            f"the samples span {n} bar times: too few for train={train}, "
            f"validation={validation}, test={test}"
        )
    return folds


def _shorter(a: Size, b: Size) -> bool:
    if isinstance(a, int) and isinstance(b, int):
        return a < b
    if isinstance(a, timedelta) and isinstance(b, timedelta):
        return a < b
    raise SplitError("give step and test in the same unit (both bars or both durations)")


def _back(unique_us: npt.NDArray[np.int64], pos: int, size: Size) -> int:
    """The position where a window of ``size`` ending just before ``pos`` starts."""
    if isinstance(size, int):
        return max(pos - size, 0)
    limit = unique_us[pos] - int(size.total_seconds() * 1_000_000)
    return int(np.searchsorted(unique_us, limit, side="left"))


def _fold(
    i: int,
    train: Index,
    val: Index,
    test: Index,
    t0: npt.NDArray[np.int64],
    groups: tuple[int, ...] = (),
) -> Fold:
    lo, hi = int(t0[test].min()), int(t0[test].max())
    return Fold(i, train, val, test, _dt(lo), _dt(hi), groups)


def _dt(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


def _groups(
    samples: pl.DataFrame, n_groups: int
) -> tuple[list[Index], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    t0, t1 = _times(samples)
    unique = np.unique(t0)
    if unique.size < n_groups:
        raise SplitError(f"{unique.size} bar times cannot make {n_groups} groups")
    edges = np.array_split(unique, n_groups)
    rows = np.arange(samples.height, dtype=np.int64)
    groups = [rows[(t0 >= e[0]) & (t0 <= e[-1])] for e in edges]
    return groups, t0, t1


def purged_kfold(
    samples: pl.DataFrame, *, n_splits: int = 5, embargo: timedelta = timedelta(0)
) -> list[Fold]:
    """K contiguous blocks of bar times; each is the test set once, trained on the others,
    purged and embargoed."""
    groups, t0, t1 = _groups(samples, n_splits)
    emb = int(embargo.total_seconds() * 1e6)
    folds = []
    for k, test in enumerate(groups):
        others = np.concatenate([g for j, g in enumerate(groups) if j != k])
        train = purge(others, test, t0, t1, emb)
        folds.append(_fold(k, train, np.empty(0, np.int64), test, t0, (k,)))
    return folds


def combinatorial_purged(
    samples: pl.DataFrame,
    *,
    n_groups: int = 6,
    n_test_groups: int = 2,
    embargo: timedelta = timedelta(0),
) -> list[Fold]:
    """Combinatorial purged cross-validation: every choice of ``n_test_groups`` of the
    ``n_groups`` blocks is a test set once; ``C(n_groups, n_test_groups)`` splits."""
    if not 0 < n_test_groups < n_groups:
        raise SplitError("need 0 < n_test_groups < n_groups")
    groups, t0, t1 = _groups(samples, n_groups)
    emb = int(embargo.total_seconds() * 1e6)
    folds = []
    for i, chosen in enumerate(combinations(range(n_groups), n_test_groups)):
        test = np.concatenate([groups[j] for j in chosen])
        others = np.concatenate([g for j, g in enumerate(groups) if j not in chosen])
        # Purge against each test block separately so the embargo follows every block.
        train = others
        for j in chosen:
            train = purge(train, groups[j], t0, t1, emb)
        folds.append(_fold(i, train, np.empty(0, np.int64), test, t0, chosen))
    return folds
