"""Splitter properties: no training span overlaps a test span, the embargo holds, folds cover
what they claim."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from math import comb

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.models.splits import (
    Fold,
    SplitError,
    combinatorial_purged,
    purged_kfold,
    walk_forward,
)

pytestmark = pytest.mark.unit
T0 = datetime(2021, 1, 4, 14, 30, tzinfo=UTC)


@st.composite
def label_sets(draw: st.DrawFn) -> pl.DataFrame:
    """Labels of up to 3 symbols on a 15-minute grid, each spanning 0..20 bars."""
    n_times = draw(st.integers(30, 120))
    rows = []
    for sym in ("A", "B", "C")[: draw(st.integers(1, 3))]:
        present = draw(st.lists(st.booleans(), min_size=n_times, max_size=n_times))
        for i, here in enumerate(present):
            if here or i < 10:
                length = draw(st.integers(0, 20))
                rows.append(
                    {
                        "symbol": sym,
                        "ts": T0 + timedelta(minutes=15 * i),
                        "t1": T0 + timedelta(minutes=15 * (i + length)),
                    }
                )
    return pl.DataFrame(rows).sort("ts", "symbol")


def _spans(samples: pl.DataFrame, idx: np.ndarray) -> list[tuple[datetime, datetime]]:
    return list(
        zip(samples["ts"].gather(idx).to_list(), samples["t1"].gather(idx).to_list(), strict=True)
    )


def assert_no_overlap(samples: pl.DataFrame, a: np.ndarray, b: np.ndarray) -> None:
    for s0, s1 in _spans(samples, a):
        for u0, u1 in _spans(samples, b):
            assert s1 < u0 or u1 < s0, f"span {s0}..{s1} overlaps {u0}..{u1}"


def assert_embargo(samples: pl.DataFrame, fold: Fold, embargo: timedelta) -> None:
    test_end = samples["t1"].gather(fold.test).max()
    starts = samples["ts"].gather(fold.train)
    inside = (starts > test_end) & (starts <= test_end + embargo)  # type: ignore[operator]
    if not fold.groups or len(fold.groups) == 1:
        assert not inside.any()


@settings(max_examples=40, deadline=None)
@given(samples=label_sets(), k=st.integers(2, 6), embargo_bars=st.integers(0, 8))
def test_purged_kfold_properties(samples: pl.DataFrame, k: int, embargo_bars: int) -> None:
    embargo = timedelta(minutes=15 * embargo_bars)
    folds = purged_kfold(samples, n_splits=k, embargo=embargo)
    tests = np.concatenate([f.test for f in folds])
    assert sorted(tests.tolist()) == list(range(samples.height))  # every sample tested once
    for f in folds:
        assert_no_overlap(samples, f.train, f.test)
        assert_embargo(samples, f, embargo)
        assert not set(f.train) & set(f.test)


@settings(max_examples=40, deadline=None)
@given(
    samples=label_sets(),
    train=st.integers(5, 30),
    val=st.integers(0, 10),
    test=st.integers(3, 15),
    anchored=st.booleans(),
    embargo_bars=st.integers(0, 5),
)
def test_walk_forward_properties(
    samples: pl.DataFrame, train: int, val: int, test: int, anchored: bool, embargo_bars: int
) -> None:
    embargo = timedelta(minutes=15 * embargo_bars)
    try:
        folds = walk_forward(
            samples, train=train, validation=val, test=test, anchored=anchored, embargo=embargo
        )
    except SplitError:
        return
    previous_end = None
    for f in folds:
        assert_no_overlap(samples, f.train, f.test)
        assert_no_overlap(samples, f.validation, f.test)
        assert_no_overlap(samples, f.train, f.validation)
        starts = samples["ts"]
        if f.train.size and f.test.size:
            assert starts.gather(f.train).max() < starts.gather(f.test).min()
        if previous_end is not None:
            assert f.test_start > previous_end  # consecutive, non-overlapping test windows
        previous_end = f.test_end
        if anchored and f.index > 0:
            # Anchored: what was trained on before is trained on again, unless its span now
            # reaches into the new validation or test window (purged) or its embargo.
            dropped = np.setdiff1d(folds[f.index - 1].train, f.train)
            held = np.concatenate([f.validation, f.test])
            first_held = samples["ts"].gather(held).min()
            for s0, s1 in _spans(samples, dropped):
                assert s1 >= first_held or s0 + embargo >= first_held


@settings(max_examples=20, deadline=None)
@given(samples=label_sets(), n=st.integers(3, 6), k=st.integers(1, 2))
def test_cpcv_properties(samples: pl.DataFrame, n: int, k: int) -> None:
    if k >= n:
        return
    folds = combinatorial_purged(samples, n_groups=n, n_test_groups=k)
    assert len(folds) == comb(n, k)
    counts = np.zeros(samples.height, dtype=int)
    for f in folds:
        counts[f.test] += 1
        assert_no_overlap(samples, f.train, f.test)
    assert (counts == comb(n - 1, k - 1)).all()  # each sample is tested in C(n-1, k-1) splits


def test_calendar_windows_and_clear_errors() -> None:
    times = [T0 + timedelta(days=d) for d in range(60)]
    samples = pl.DataFrame({"ts": times, "t1": [t + timedelta(hours=2) for t in times]})
    folds = walk_forward(
        samples, train=timedelta(days=20), validation=timedelta(days=5), test=timedelta(days=5)
    )
    assert len(folds) == 7
    assert all(f.test.size == 5 and f.validation.size == 5 for f in folds[:-1])
    with pytest.raises(SplitError, match="too few"):
        walk_forward(samples.head(10), train=20, test=5)
    with pytest.raises(SplitError, match=r"ends \(t1\) before it starts"):
        purged_kfold(samples.with_columns(t1=pl.col("ts") - timedelta(hours=1)))
