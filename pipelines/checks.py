"""The verdict of a data check, shared by every layer; Dagster shows them as asset checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CheckOutcome:
    """One check's verdict. ``blocking`` checks are errors; the others are warnings."""

    name: str
    passed: bool
    blocking: bool
    metadata: dict[str, Any]
