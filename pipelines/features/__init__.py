"""Point-in-time features: the registry, the library, the batch builder and the stream."""

from pipelines.features.build import (
    FeatureConfig,
    FeatureInputError,
    build_features,
    feature_registry,
    latest_features,
)
from pipelines.features.registry import FEATURE_SET_VERSION, FeatureRegistry, FeatureSpec
from pipelines.features.stream import FeatureRows, FeatureStream

__all__ = [
    "FEATURE_SET_VERSION",
    "FeatureConfig",
    "FeatureInputError",
    "FeatureRegistry",
    "FeatureRows",
    "FeatureSpec",
    "FeatureStream",
    "build_features",
    "feature_registry",
    "latest_features",
]
