"""Labels for supervised learning: triple barrier, meta-labels, sample weights."""

from pipelines.labels.triple_barrier import (
    LABEL_SCHEMA,
    BarrierConfig,
    LabelResult,
    label_triple_barrier,
    meta_labels,
)
from pipelines.labels.weights import WEIGHT_COLUMNS, sample_weights

__all__ = [
    "LABEL_SCHEMA",
    "WEIGHT_COLUMNS",
    "BarrierConfig",
    "LabelResult",
    "label_triple_barrier",
    "meta_labels",
    "sample_weights",
]
