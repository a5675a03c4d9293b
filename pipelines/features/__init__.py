"""Point-in-time features: the registry, the library and the builder."""

from pipelines.features.build import (
    FeatureConfig,
    FeatureInputError,
    build_features,
    feature_registry,
    latest_features,
)
from pipelines.features.registry import FEATURE_SET_VERSION, FeatureRegistry, FeatureSpec

__all__ = [
    "FEATURE_SET_VERSION",
    "FeatureConfig",
    "FeatureInputError",
    "FeatureRegistry",
    "FeatureSpec",
    "build_features",
    "feature_registry",
    "latest_features",
]
