"""The feature definitions' small expression language: one definition, two evaluators.

A feature is written once as a tree of :class:`Node` (``col("close") / lag(col("close")) - 1``,
``sma(x, 20)``, ``when(cond, a, b)``, ...). :func:`to_polars` turns the tree into the polars
expression the batch builder runs over all symbols at once (``over("symbol")`` on every window),
and :mod:`pipelines.features.stream` compiles the same tree into an incremental program that the
live path steps one bar at a time. The node set is deliberately small: elementwise arithmetic and
maths, comparisons and Kleene logic, ``when``, horizontal max/min/coalesce, per-symbol shifts,
rolling windows (sum, mean, weighted sum/mean, standard deviation, max, min), exponentially
weighted means, the per-symbol row index and the path-dependent kernels of
:mod:`pipelines.features.kernels`.

Nodes override the Python operators as polars expressions do, so ``a == b`` builds a comparison
node; structural identity is :attr:`Node.key`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import polars as pl

S = "symbol"

Scalar = int | float | None

BINARY = {
    "add": "__add__",
    "sub": "__sub__",
    "mul": "__mul__",
    "div": "__truediv__",
    "pow": "__pow__",
    "gt": "__gt__",
    "ge": "__ge__",
    "lt": "__lt__",
    "le": "__le__",
    "eq": "__eq__",
    "ne": "__ne__",
    "and": "__and__",
    "or": "__or__",
}
METHODS = ("abs", "log", "exp", "sqrt", "sin", "is_null")
WINDOWS = (
    "shift",
    "rolling_sum",
    "rolling_mean",
    "rolling_std",
    "rolling_max",
    "rolling_min",
    "ewm_mean",
)


class Node:
    """One operation of a feature definition: ``op`` over ``args`` with constant ``params``."""

    __slots__ = ("_key", "args", "op", "params")

    def __init__(self, op: str, args: tuple[Node, ...] = (), params: tuple[Any, ...] = ()):
        self.op = op
        self.args = args
        self.params = params
        self._key: tuple[Any, ...] | None = None

    @property
    def key(self) -> tuple[Any, ...]:
        """Structural identity: equal keys compute equal values."""
        if self._key is None:
            self._key = (self.op, self.params, tuple(a.key for a in self.args))
        return self._key

    def __repr__(self) -> str:
        inner = ", ".join([*(repr(a) for a in self.args), *(repr(p) for p in self.params)])
        return f"{self.op}({inner})"

    def walk(self) -> Iterator[Node]:
        """Every node of the tree, children before parents."""
        for a in self.args:
            yield from a.walk()
        yield self

    # Arithmetic, comparisons and logic, as on polars expressions.
    def _bin(self, op: str, other: object, reflected: bool = False) -> Node:
        o = wrap(other)
        return Node(op, (o, self) if reflected else (self, o))

    def __add__(self, o: object) -> Node:
        return self._bin("add", o)

    def __radd__(self, o: object) -> Node:
        return self._bin("add", o, True)

    def __sub__(self, o: object) -> Node:
        return self._bin("sub", o)

    def __rsub__(self, o: object) -> Node:
        return self._bin("sub", o, True)

    def __mul__(self, o: object) -> Node:
        return self._bin("mul", o)

    def __rmul__(self, o: object) -> Node:
        return self._bin("mul", o, True)

    def __truediv__(self, o: object) -> Node:
        return self._bin("div", o)

    def __rtruediv__(self, o: object) -> Node:
        return self._bin("div", o, True)

    def __pow__(self, o: object) -> Node:
        return self._bin("pow", o)

    def __gt__(self, o: object) -> Node:  # type: ignore[override]
        return self._bin("gt", o)

    def __ge__(self, o: object) -> Node:  # type: ignore[override]
        return self._bin("ge", o)

    def __lt__(self, o: object) -> Node:  # type: ignore[override]
        return self._bin("lt", o)

    def __le__(self, o: object) -> Node:  # type: ignore[override]
        return self._bin("le", o)

    def __eq__(self, o: object) -> Node:  # type: ignore[override]
        return self._bin("eq", o)

    def __ne__(self, o: object) -> Node:  # type: ignore[override]
        return self._bin("ne", o)

    def __and__(self, o: object) -> Node:
        return self._bin("and", o)

    def __or__(self, o: object) -> Node:
        return self._bin("or", o)

    def __neg__(self) -> Node:
        return Node("neg", (self,))

    __hash__ = None  # type: ignore[assignment]

    def abs(self) -> Node:
        return Node("abs", (self,))

    def log(self) -> Node:
        return Node("log", (self,))

    def exp(self) -> Node:
        return Node("exp", (self,))

    def sqrt(self) -> Node:
        return Node("sqrt", (self,))

    def sin(self) -> Node:
        return Node("sin", (self,))

    def is_null(self) -> Node:
        return Node("is_null", (self,))

    def clip(self, lower_bound: float | None = None, upper_bound: float | None = None) -> Node:
        return Node("clip", (self,), (lower_bound, upper_bound))

    def fill_null(self, value: float) -> Node:
        return Node("fill_null", (self,), (value,))


def wrap(x: object) -> Node:
    if isinstance(x, Node):
        return x
    if x is None or isinstance(x, int | float):
        return Node("lit", (), (x, None))
    raise TypeError(f"cannot use {x!r} in a feature expression")


def col(name: str) -> Node:
    """An input column: a bar field (``open`` ... ``volume``) or a session helper (``_...``)."""
    return Node("col", (), (name,))


def lit(value: Scalar, float64: bool = False) -> Node:
    """A constant; ``float64`` types it (``pl.lit(value, pl.Float64)``), as a null must be."""
    return Node("lit", (), (value, "f64" if float64 else None))


def when(cond: Node, then: object, otherwise: object = None) -> Node:
    """``then`` where ``cond`` is true, else ``otherwise`` (null where omitted); a null
    condition counts as false, as in polars."""
    args = (cond, wrap(then)) if otherwise is None else (cond, wrap(then), wrap(otherwise))
    return Node("when", args)


def max_horizontal(*args: object) -> Node:
    return Node("max_h", tuple(wrap(a) for a in args))


def min_horizontal(*args: object) -> Node:
    return Node("min_h", tuple(wrap(a) for a in args))


def coalesce(*args: object) -> Node:
    return Node("coalesce", tuple(wrap(a) for a in args))


def shift(e: Node, k: int = 1) -> Node:
    """The value ``k`` bars earlier of the same symbol (null for its first ``k`` bars)."""
    if k < 1:
        raise ValueError(f"shift by {k}: only earlier bars may be read (k >= 1)")
    return Node("shift", (e,), (k,))


def rolling_sum(e: Node, n: int, weights: tuple[float, ...] | None = None) -> Node:
    return Node("rolling_sum", (e,), (n, weights))


def rolling_mean(e: Node, n: int, weights: tuple[float, ...] | None = None) -> Node:
    return Node("rolling_mean", (e,), (n, weights))


def rolling_std(e: Node, n: int, ddof: int = 1) -> Node:
    return Node("rolling_std", (e,), (n, ddof))


def rolling_max(e: Node, n: int) -> Node:
    return Node("rolling_max", (e,), (n,))


def rolling_min(e: Node, n: int) -> Node:
    return Node("rolling_min", (e,), (n,))


def ewm_mean(e: Node, *, span: float | None = None, alpha: float | None = None) -> Node:
    """Exponentially weighted mean, ``adjust=False`` (a recursion seeded at the first value)."""
    if (span is None) == (alpha is None):
        raise ValueError("give exactly one of span and alpha")
    return Node("ewm_mean", (e,), ("span", span) if span is not None else ("alpha", alpha))


def ewm_alpha(node: Node) -> float:
    """The smoothing factor of an ``ewm_mean`` node, computed as polars computes it."""
    kind, value = node.params
    return float(2.0 / (value + 1.0)) if kind == "span" else float(value)


def row_index() -> Node:
    """The bar's position in its symbol's history (0 for the first bar)."""
    return Node("index")


def kernel(name: str, column: str, inputs: tuple[Node, ...], *params: Any, output: int = 0) -> Node:
    """Output ``output`` of the path-dependent kernel ``name`` (see
    :mod:`pipelines.features.kernels`); the batch builder computes it into helper ``column``."""
    return Node("kernel", inputs, (name, column, output, *params))


def to_polars(node: Node, memo: dict[tuple[Any, ...], Any] | None = None) -> pl.Expr:
    """The polars expression of ``node`` (every window partitioned by symbol); ``memo`` maps
    node keys to expressions already known (e.g. the columns of :func:`shared_windows`)."""
    out = _convert(node, {} if memo is None else memo)
    if not isinstance(out, pl.Expr):
        return pl.lit(out)
    return out


def shared_windows(
    nodes: list[Node], prefix: str = "__w"
) -> tuple[list[dict[str, pl.Expr]], dict[tuple[Any, ...], Any]]:
    """Stages of the window nodes that ``nodes`` evaluate more than once, to compute each once.

    polars does not eliminate common sub-expressions that contain windows (``over``), so a
    window shared by several features, or read twice by one (``when(b != 0).then(a / b)``),
    is otherwise computed again each time. Returns the stages (columns ``prefix{k}``, each stage
    reading only earlier ones) and a memo for :func:`to_polars` that reads those columns.
    Values are the same: each window runs on the same input values.
    """
    uses: dict[tuple[Any, ...], int] = {}

    def count(n: Node) -> None:
        if n.op in WINDOWS:
            uses[n.key] = uses.get(n.key, 0) + 1
        for a in n.args:
            count(a)

    for node in nodes:
        count(node)
    level: dict[tuple[Any, ...], int] = {}
    shared: dict[tuple[Any, ...], Node] = {}

    def depth(n: Node) -> int:
        if n.key not in level:
            inner = max((depth(a) for a in n.args), default=0)
            if n.op in WINDOWS and uses.get(n.key, 0) > 1:
                shared[n.key] = n
                inner += 1
            level[n.key] = inner
        return level[n.key]

    for node in nodes:
        depth(node)
    memo: dict[tuple[Any, ...], Any] = {}
    stages: list[dict[str, pl.Expr]] = []
    for stage in range(1, max((level[k] for k in shared), default=0) + 1):
        here = [(key, n) for key, n in shared.items() if level[key] == stage]
        names = [f"{prefix}{sum(map(len, stages)) + i}" for i in range(len(here))]
        # A shared window of this stage holds none of this stage's: its inputs are inlined or
        # read from the columns of earlier stages.
        stages.append({name: _convert(n, memo) for name, (_, n) in zip(names, here, strict=True)})
        for name, (key, _) in zip(names, here, strict=True):
            memo[key] = pl.col(name)
    return stages, memo


def _convert(node: Node, memo: dict[tuple[Any, ...], Any]) -> Any:
    key = node.key
    if key in memo:
        return memo[key]
    op, p = node.op, node.params
    args = [_convert(a, memo) for a in node.args]
    out: Any
    if op == "lit":
        out = pl.lit(p[0], pl.Float64) if p[1] == "f64" else p[0]
    elif op == "col":
        out = pl.col(p[0])
    elif op in BINARY:
        a, b = args
        if not isinstance(a, pl.Expr) and not isinstance(b, pl.Expr):
            a = pl.lit(a)
        out = getattr(a, BINARY[op])(b) if isinstance(a, pl.Expr) else _reflected(op, a, b)
    elif op == "neg":
        out = -args[0]
    elif op in METHODS:
        out = getattr(args[0], op)()
    elif op == "clip":
        out = args[0].clip(lower_bound=p[0], upper_bound=p[1])
    elif op == "fill_null":
        out = args[0].fill_null(p[0])
    elif op == "when":
        chain = pl.when(args[0]).then(args[1])
        out = chain.otherwise(args[2]) if len(args) == 3 else chain
    elif op == "max_h":
        out = pl.max_horizontal(*args)
    elif op == "min_h":
        out = pl.min_horizontal(*args)
    elif op == "coalesce":
        out = pl.coalesce(*args)
    elif op == "shift":
        out = args[0].shift(p[0]).over(S)
    elif op in ("rolling_sum", "rolling_mean"):
        weights = list(p[1]) if p[1] is not None else None
        out = getattr(args[0], op)(p[0], weights=weights).over(S)
    elif op == "rolling_std":
        out = args[0].rolling_std(p[0], ddof=p[1]).over(S)
    elif op in ("rolling_max", "rolling_min"):
        out = getattr(args[0], op)(p[0]).over(S)
    elif op == "ewm_mean":
        out = args[0].ewm_mean(**{p[0]: p[1]}, adjust=False).over(S)
    elif op == "index":
        out = pl.int_range(pl.len()).over(S)
    elif op == "kernel":
        out = pl.col(p[1])
    else:
        raise ValueError(f"unknown feature node {op!r}")
    memo[key] = out
    return out


def _reflected(op: str, a: object, b: pl.Expr) -> pl.Expr:
    """``a <op> b`` with a Python scalar on the left, as Python itself would evaluate it."""
    flipped = {"gt": "__lt__", "ge": "__le__", "lt": "__gt__", "le": "__ge__"}
    if op in flipped:
        return getattr(b, flipped[op])(a)  # type: ignore[no-any-return]
    if op in ("eq", "ne"):
        return getattr(b, BINARY[op])(a)  # type: ignore[no-any-return]
    return getattr(b, "__r" + BINARY[op][2:])(a)  # type: ignore[no-any-return]
