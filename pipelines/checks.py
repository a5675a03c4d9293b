"""The verdict of a data check, shared by every layer; Dagster shows them as asset checks.

Each asset's checks are declared once, in a table of :class:`CheckDefinition` (name,
description, blocking). The Dagster check specs are built from the table and every verdict is
made by :meth:`CheckDefinition.outcome`, so a check's spec and its verdicts cannot disagree on
whether it blocks.
"""

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


@dataclass(frozen=True)
class CheckDefinition:
    """A data check: its name, a one-line description and whether it is blocking.

    A blocking check says "this data is wrong": its failure stops what depends on the data
    (Dagster does not run downstream assets in the same run, and the training set refuses the
    month). A non-blocking check warns.
    """

    name: str
    description: str
    blocking: bool

    def outcome(self, passed: bool, metadata: dict[str, Any]) -> CheckOutcome:
        """This check's verdict; its blocking flag is the definition's."""
        return CheckOutcome(self.name, passed, self.blocking, metadata)


def check_table(*definitions: CheckDefinition) -> dict[str, CheckDefinition]:
    """The definitions by name; a name given twice is an error."""
    table: dict[str, CheckDefinition] = {}
    for d in definitions:
        if d.name in table:
            raise ValueError(f"check {d.name!r} is defined twice; give each check its own name")
        table[d.name] = d
    return table
