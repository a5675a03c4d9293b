"""REST faults the local Alpaca servers inject, one request each, in queue order."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FaultKind = Literal["status", "drop", "body", "truncate", "hang", "apply_then_fail"]


@dataclass
class Fault:
    """What to do instead of answering one request.

    ``status``: answer HTTP ``status`` with ``headers`` (and ``body`` if given, else a JSON
    error; e.g. ``Fault("status", 429, headers={"Retry-After": "1"})``);
    ``drop``: send part of the answer, then close the connection;
    ``body``: answer 200 with ``body`` as ``content_type`` (an HTML page, say);
    ``truncate``: answer 200 with the first half of the answer's JSON (a complete response);
    ``hang``: take the request and answer nothing for ``seconds`` (or until the server stops),
    then answer normally (a client with a shorter timeout gives up first);
    ``apply_then_fail``: do what the request asks (``POST /v2/orders``: accept the order), then
    answer ``status`` (504 by default) instead of the result, or drop the connection when
    ``status`` is 0: the client cannot tell whether its request took effect.

    ``method`` and ``path`` (a prefix, e.g. ``"/v2/orders"``) choose which requests the fault
    applies to (:class:`~quantdag.testing.alpaca.server.LocalAlpaca` only; the data-only
    ``AlpacaFakeServer`` applies faults to its requests in order); None / "" match any.
    """

    kind: FaultKind
    status: int = 0
    body: str | None = None
    content_type: str = "text/html"
    seconds: float = 60.0
    headers: dict[str, str] = field(default_factory=dict)
    method: str | None = None
    path: str = ""

    def matches(self, method: str, path: str) -> bool:
        """Whether this fault applies to a ``method`` request for ``path``."""
        return (self.method is None or self.method.upper() == method.upper()) and path.startswith(
            self.path
        )
