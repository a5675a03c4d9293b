"""The feature registry: every feature's name, category, inputs, warm-up and description.

Names follow ``{category}_{indicator}_{window}[_{variant}]``. A feature is null for the first
``warmup`` bars of each symbol (its value is not yet meaningful there) and defined after that.
``stateful`` marks path-dependent indicators (PSAR, SuperTrend, KAMA) whose value depends on the
whole history of the symbol, not only on the last ``warmup`` bars; the streaming engine
(:mod:`pipelines.features.stream`) carries that history as state, so it gives them exactly too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import polars as pl

if TYPE_CHECKING:
    from pipelines.features.expr import Node

CATEGORIES = (
    "trend",
    "momentum",
    "volatility",
    "volume",
    "statistical",
    "micro",
    "intraday",
    "mtf",
    "xs",
)

FEATURE_SET_VERSION = "2"
"""Bumped whenever a definition changes, so models know which features they were trained on."""


@dataclass(frozen=True)
class FeatureSpec:
    """One feature. ``expr`` builds its polars expression over the prepared frame; ``node`` is
    the definition it was built from (:mod:`pipelines.features.expr`), which the streaming
    engine compiles. Features computed by a later stage (multi-timeframe, cross-sectional) have
    no ``node``: both engines compute them by their own stage."""

    name: str
    category: str
    inputs: tuple[str, ...]
    warmup: int
    description: str
    expr: Callable[[], pl.Expr] = field(repr=False, compare=False)
    stateful: bool = False
    node: Node | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"feature {self.name}: unknown category {self.category!r}")
        if not self.name.startswith(self.category + "_"):
            raise ValueError(f"feature {self.name} must start with its category {self.category}_")


class FeatureRegistry:
    """An ordered collection of :class:`FeatureSpec` with unique names."""

    def __init__(self) -> None:
        self._specs: dict[str, FeatureSpec] = {}

    def add(self, spec: FeatureSpec) -> None:
        if spec.name in self._specs:
            raise ValueError(f"feature {spec.name} is registered twice")
        self._specs[spec.name] = spec

    def __iter__(self) -> Iterator[FeatureSpec]:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)

    def __getitem__(self, name: str) -> FeatureSpec:
        return self._specs[name]

    @property
    def names(self) -> list[str]:
        return list(self._specs)

    def in_category(self, *categories: str) -> list[FeatureSpec]:
        return [s for s in self._specs.values() if s.category in categories]

    @property
    def max_warmup(self) -> int:
        return max(s.warmup for s in self._specs.values())

    @property
    def history_bars(self) -> int:
        """Bars per symbol the live path needs for every feature to be defined."""
        return self.max_warmup + 1

    def describe(self) -> pl.DataFrame:
        """One row per feature: name, category, inputs, warm-up, stateful, description."""
        return pl.DataFrame(
            {
                "name": [s.name for s in self],
                "category": [s.category for s in self],
                "inputs": [", ".join(s.inputs) for s in self],
                "warmup": [s.warmup for s in self],
                "stateful": [s.stateful for s in self],
                "description": [s.description for s in self],
            }
        )
