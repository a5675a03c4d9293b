"""Sample weights for overlapping labels (López de Prado, AFML ch. 4).

A label's span is the bars after its entry up to and including its exit, ``(t0, t1]``. The
concurrency of a bar is the number of spans (of the same symbol) that include it. A label's
average uniqueness is the mean of 1/concurrency over its span; its return attribution is
``|sum over its span of log return / concurrency|``, scaled so that the weights sum to the
number of labels. An optional time decay multiplies by a factor falling linearly in
cumulative uniqueness, from 1 for the newest label to ``decay`` for the oldest
(``decay=1``: none; ``decay=0``: the oldest gets 0).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import polars as pl

from pipelines.features.library import S

WEIGHT_COLUMNS = ("uniqueness", "weight_return", "weight_decay", "weight")


def _rows(bars: pl.DataFrame, labels: pl.DataFrame) -> tuple[pl.DataFrame, npt.NDArray[np.float64]]:
    df = bars.select(S, "ts", "close").sort(S, "ts").with_columns(_row=pl.int_range(pl.len()))
    log_ret = (
        df.select((pl.col("close") / pl.col("close").shift(1).over(S)).log().fill_null(0.0))
        .to_series()
        .to_numpy()
    )
    index = df.select(S, "ts", "_row")
    spans = (
        labels.select(S, "ts", "t1")
        .with_row_index("_k")
        .join(index, on=[S, "ts"], how="left")
        .rename({"_row": "_r0"})
        .join(index.rename({"ts": "t1", "_row": "_r1"}), on=[S, "t1"], how="left")
        .sort("_k")
    )
    if spans["_r0"].null_count() or spans["_r1"].null_count():
        raise ValueError("every label's ts and t1 must be bars of `bars`")
    return spans, log_ret


def sample_weights(labels: pl.DataFrame, bars: pl.DataFrame, *, decay: float = 1.0) -> pl.DataFrame:
    """``labels`` with :data:`WEIGHT_COLUMNS` added. ``decay`` in [0, 1] (see module doc)."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError("decay must lie in [0, 1]: 1 is no decay, 0 gives the oldest weight 0")
    if labels.height == 0:
        return labels.with_columns(pl.lit(None, pl.Float64).alias(c) for c in WEIGHT_COLUMNS)
    spans, log_ret = _rows(bars, labels)
    r0 = spans["_r0"].to_numpy().astype(np.int64)
    r1 = spans["_r1"].to_numpy().astype(np.int64)
    n = log_ret.shape[0]
    delta = np.zeros(n + 1)
    np.add.at(delta, r0 + 1, 1.0)
    np.add.at(delta, r1 + 1, -1.0)
    concurrency = np.cumsum(delta)[:n]
    inv = np.divide(1.0, concurrency, out=np.zeros(n), where=concurrency > 0)
    p_inv = np.concatenate([[0.0], np.cumsum(inv)])
    p_ret = np.concatenate([[0.0], np.cumsum(log_ret * inv)])
    length = (r1 - r0).astype(np.float64)
    uniqueness = (p_inv[r1 + 1] - p_inv[r0 + 1]) / length
    attribution = np.abs(p_ret[r1 + 1] - p_ret[r0 + 1])
    total = attribution.sum()
    w_ret = attribution * len(attribution) / total if total > 0 else np.ones_like(attribution)
    order = np.argsort(spans["t1"].to_numpy(), kind="stable")
    cum = np.empty_like(uniqueness)
    cum[order] = np.cumsum(uniqueness[order])
    last = cum[order[-1]]
    slope = (1.0 - decay) / last if last > 0 else 0.0
    w_decay = np.clip(1.0 - slope * (last - cum), 0.0, None)
    return labels.with_columns(
        uniqueness=pl.Series(uniqueness),
        weight_return=pl.Series(w_ret),
        weight_decay=pl.Series(w_decay),
        weight=pl.Series(w_ret * w_decay),
    )
