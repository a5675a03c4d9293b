"""Feature definitions compiled into an incremental program, stepped one bar at a time.

:func:`compile_program` turns named :class:`~pipelines.features.expr.Node` trees into a flat
list of instructions over numbered slots (common sub-trees once), with a per-symbol state for
every window, recursion and kernel. :func:`run_program` (numba) executes the list for the symbols
that have a new bar; each instruction reproduces the float operations polars performs for the
same node on the whole history, in the same order, so a program stepped through a symbol's bars
gives exactly the values of the batch matrix:

- rolling sums and means: polars' sliding sum with separate Kahan compensations for the values
  entering and leaving the window, non-finite values counted apart;
- rolling standard deviations: polars' two-stack sliding window of Welford states (the values
  since the last flip, and the suffix states of the values before it, merged on output);
- exponentially weighted means: polars' ``adjust=False`` recursion with its weight bookkeeping;
- division by a constant: multiplication by its reciprocal, as polars does;
- comparisons: polars' total order on floats (NaN equal to NaN and above every number);
- the path-dependent kernels: the very step functions of :mod:`pipelines.features.kernels`.

Values are float64 with a separate validity flag (null is not NaN). The equality with the batch
matrix is what ``tests/features/test_stream.py`` checks, bar by bar, on real data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit

from pipelines.features import kernels as K
from pipelines.features.expr import Node, ewm_alpha

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]

# Opcodes, in groups the interpreter tests by range (the frequent ones first): binary
# operations that are null when either side is, then the rest.
DIV, MUL, SUB, NE, ADD, POW, EQ, GT, LT, GE, LE = range(1, 12)
WHEN, RMEAN, EWM, RSUM, SQRT, SHIFT, LOG, MASK = range(12, 20)
CLIP, RSTD, RMAX, RMIN, FILLNULL, ABS, NEG, MAXH, MINH = range(20, 29)
AND, OR, EXP, SIN, COALESCE, ISNULL, RWSUM, RWMEAN, INDEX = range(29, 38)
K_WILDER, K_STOCH, K_KAMA, K_PSAR, K_SUPERTREND, K_AROON, K_MAD, K_HURST = range(40, 48)

# Instruction columns.
OP, OUT, A, B, C, D, N, M, SOFF, OUT2, OUT3, FIDX = range(12)
NCOLS = 12

ERR_WEIGHTED_NULL = 1

_BINARY = {
    "add": ADD,
    "sub": SUB,
    "mul": MUL,
    "div": DIV,
    "pow": POW,
    "gt": GT,
    "ge": GE,
    "lt": LT,
    "le": LE,
    "eq": EQ,
    "ne": NE,
    "and": AND,
    "or": OR,
}
_UNARY = {"neg": NEG, "abs": ABS, "log": LOG, "exp": EXP, "sqrt": SQRT, "sin": SIN}
_UNARY |= {"is_null": ISNULL}
_KERNELS = {
    "wilder": K_WILDER,
    "stochastic_k": K_STOCH,
    "kama": K_KAMA,
    "psar": K_PSAR,
    "supertrend": K_SUPERTREND,
    "bars_since_extreme": K_AROON,
    "mean_abs_deviation": K_MAD,
    "hurst_rs": K_HURST,
}


class ProgramError(ValueError):
    """A definition cannot be compiled for the streaming engine; the message says which."""


@dataclass(frozen=True)
class Program:
    """A compiled set of definitions: run it with :func:`run_program` on a :class:`ProgramState`.

    ``inputs`` maps each input column to its slot, ``outputs`` each named result to its slot.
    """

    code: I64
    fparams: F64
    n_slots: int
    state_len: int
    scratch_len: int
    const_slots: I64
    const_values: F64
    const_valid: U8
    inputs: dict[str, int]
    outputs: dict[str, int]

    def new_state(self, n_symbols: int) -> ProgramState:
        vals = np.zeros((n_symbols, self.n_slots))
        ok = np.zeros((n_symbols, self.n_slots), dtype=np.uint8)
        vals[:, self.const_slots] = self.const_values
        ok[:, self.const_slots] = self.const_valid
        return ProgramState(
            vals=vals,
            ok=ok,
            state=np.zeros((n_symbols, self.state_len)),
            steps=np.zeros(n_symbols, dtype=np.int64),
            scratch=np.zeros(max(self.scratch_len, 1)),
            status=np.zeros(2, dtype=np.int64),
        )


@dataclass
class ProgramState:
    """Slots (values and validity) and per-symbol state of one program over a universe."""

    vals: F64
    ok: U8
    state: F64
    steps: I64
    scratch: F64
    status: I64 = field(repr=False)


class _Compiler:
    def __init__(self) -> None:
        self.code: list[list[int]] = []
        self.fparams: list[float] = []
        self.slots = 0
        self.state_len = 0
        self.scratch_len = 0
        self.memo: dict[tuple[Any, ...], int] = {}
        self.kernels: dict[tuple[Any, ...], list[int]] = {}
        self.consts: dict[tuple[float | None], int] = {}
        self.inputs: dict[str, int] = {}

    def slot(self) -> int:
        self.slots += 1
        return self.slots - 1

    def const(self, value: float | None) -> int:
        key = (None if value is None else float(value),)
        if key not in self.consts:
            self.consts[key] = self.slot()
        return self.consts[key]

    def floats(self, *values: float) -> int:
        start = len(self.fparams)
        self.fparams.extend(float(v) for v in values)
        return start

    def state(self, size: int) -> int:
        self.state_len += size
        return self.state_len - size

    def emit(self, op: int, a: int = -1, b: int = -1, c: int = -1, **kw: int) -> int:
        """Append one instruction; keywords: ``out`` (a new slot by default), ``d``, ``n``,
        ``m``, ``soff``, ``out2``, ``out3``, ``fidx``."""
        row = [0] * NCOLS
        row[OP], row[A], row[B], row[C] = op, a, b, c
        row[D] = row[OUT2] = row[OUT3] = -1
        columns = {"d": D, "n": N, "m": M, "soff": SOFF, "out2": OUT2, "out3": OUT3, "fidx": FIDX}
        out = kw.pop("out", -1)
        row[OUT] = self.slot() if out < 0 else out
        for name, value in kw.items():
            row[columns[name]] = value
        self.code.append(row)
        return row[OUT]

    def node(self, node: Node) -> int:
        key = node.key
        if key in self.memo:
            return self.memo[key]
        slot = self._compile(node)
        self.memo[key] = slot
        return slot

    def _compile(self, node: Node) -> int:
        op, p = node.op, node.params
        if op == "lit":
            return self.const(p[0])
        if op == "col":
            if p[0] not in self.inputs:
                self.inputs[p[0]] = self.slot()
            return self.inputs[p[0]]
        if op == "div" and node.args[1].op == "lit" and node.args[1].params[0] is not None:
            # polars divides by a constant as a multiplication by its reciprocal.
            return self.emit(MUL, self.node(node.args[0]), self.const(1.0 / node.args[1].params[0]))
        if op == "pow" and node.args[1].op == "lit" and node.args[1].params[0] is not None:
            # polars raises to a constant power 2..9 by repeated multiplication, to 0.5 by a
            # square root, and to other powers by pow().
            e = float(node.args[1].params[0])
            x = self.node(node.args[0])
            if e.is_integer() and 2 <= e <= 9:
                acc = x
                for _ in range(int(e) - 1):
                    acc = self.emit(MUL, acc, x)
                return acc
            if e == 0.5:
                return self.emit(SQRT, x)
            return self.emit(POW, x, self.const(e))
        if op in _BINARY:
            return self.emit(_BINARY[op], self.node(node.args[0]), self.node(node.args[1]))
        if op in _UNARY:
            return self.emit(_UNARY[op], self.node(node.args[0]))
        if op == "clip":
            lo, hi = p
            flags = (1 if lo is not None else 0) | (2 if hi is not None else 0)
            fidx = self.floats(lo or 0.0, hi or 0.0)
            return self.emit(CLIP, self.node(node.args[0]), m=flags, fidx=fidx)
        if op == "fill_null":
            return self.emit(FILLNULL, self.node(node.args[0]), self.const(p[0]))
        if op == "when":
            cond, then = self.node(node.args[0]), self.node(node.args[1])
            other = self.node(node.args[2]) if len(node.args) == 3 else self.const(None)
            return self.emit(WHEN, cond, then, other)
        if op in ("max_h", "min_h", "coalesce"):
            code = {"max_h": MAXH, "min_h": MINH, "coalesce": COALESCE}[op]
            acc = self.node(node.args[0])
            for arg in node.args[1:]:
                acc = self.emit(code, acc, self.node(arg))
            return acc
        if op == "index":
            return self.emit(INDEX)
        if op == "kernel":
            return self._kernel(node)
        x = self.node(node.args[0])
        n = int(p[0]) if op != "ewm_mean" else 0
        if op == "shift":
            return self.emit(SHIFT, x, n=n, soff=self.state(2 * n))
        if op in ("rolling_sum", "rolling_mean"):
            if p[1] is not None:
                code = RWSUM if op == "rolling_sum" else RWMEAN
                if len(p[1]) != n:
                    raise ProgramError(f"{node}: {len(p[1])} weights for a window of {n}")
                return self.emit(code, x, n=n, soff=self.state(2 * n), fidx=self.floats(*p[1]))
            code = RSUM if op == "rolling_sum" else RMEAN
            return self.emit(code, x, n=n, soff=self.state(7 + 2 * n))
        if op == "rolling_std":
            return self.emit(RSTD, x, n=n, m=int(p[1]), soff=self.state(8 + 6 * n))
        if op in ("rolling_max", "rolling_min"):
            code = RMAX if op == "rolling_max" else RMIN
            return self.emit(code, x, n=n, soff=self.state(2 * n))
        if op == "ewm_mean":
            return self.emit(EWM, x, soff=self.state(3), fidx=self.floats(ewm_alpha(node)))
        raise ProgramError(f"the streaming engine cannot compile {op!r} nodes ({node})")

    def _kernel(self, node: Node) -> int:
        name, _column, output, *params = node.params
        if name not in _KERNELS:
            raise ProgramError(f"unknown kernel {name!r}")
        key = (name, tuple(params), tuple(a.key for a in node.args))
        if key not in self.kernels:
            self.kernels[key] = self._emit_kernel(name, [self.node(a) for a in node.args], params)
        return self.kernels[key][int(output)]

    def _emit_kernel(self, name: str, ins: list[int], params: list[Any]) -> list[int]:
        code = _KERNELS[name]
        if name == "wilder":
            n = int(params[0])
            outs = [self.slot(), self.slot(), self.slot()]
            self.emit(code, *ins, out=outs[0], out2=outs[1], out3=outs[2], n=n, soff=self.state(6))
            return outs
        if name == "supertrend":
            atr = self._kernel_slots("wilder", ins, [params[0]])[0]
            outs = [self.slot(), self.slot()]
            fidx = self.floats(params[1])
            self.emit(code, *ins, d=atr, out=outs[0], out2=outs[1], soff=self.state(3), fidx=fidx)
            return outs
        if name == "psar":
            outs = [self.slot(), self.slot()]
            fidx = self.floats(params[0], params[1])
            self.emit(code, *ins, out=outs[0], out2=outs[1], soff=self.state(7), fidx=fidx)
            return outs
        n = int(params[0])
        if name == "stochastic_k":
            return [self.emit(code, *ins, n=n, soff=self.state(2 * n))]
        if name == "kama":
            fast_sc, slow_sc = 2.0 / (params[1] + 1.0), 2.0 / (params[2] + 1.0)
            fidx = self.floats(fast_sc, slow_sc)
            return [self.emit(code, *ins, n=n, soff=self.state(n + 2), fidx=fidx)]
        if name == "bars_since_extreme":
            soff = self.state(n + 2)
            return [self.emit(code, *ins, n=n, m=1 if params[1] else 0, soff=soff)]
        self.scratch_len = max(self.scratch_len, n)
        return [self.emit(code, *ins, n=n, soff=self.state(n))]

    def _kernel_slots(self, name: str, ins: list[int], params: list[Any]) -> list[int]:
        key = (name, tuple(params), ("slots", *ins))
        if key not in self.kernels:
            self.kernels[key] = self._emit_kernel(name, ins, params)
        return self.kernels[key]


def compile_program(outputs: dict[str, Node], warmups: dict[str, int] | None = None) -> Program:
    """Compile named definitions; a name in ``warmups`` is null for its symbol's first
    ``warmups[name]`` bars (the feature's warm-up mask)."""
    comp = _Compiler()
    out_slots: dict[str, int] = {}
    for name, node in outputs.items():
        slot = comp.node(node)
        if warmups and name in warmups:
            slot = comp.emit(MASK, slot, n=int(warmups[name]))
        out_slots[name] = slot
    consts = sorted(comp.consts.items(), key=lambda kv: kv[1])
    return Program(
        code=np.array(comp.code, dtype=np.int64).reshape(-1, NCOLS),
        fparams=np.array(comp.fparams or [0.0]),
        n_slots=comp.slots,
        state_len=comp.state_len,
        scratch_len=comp.scratch_len,
        const_slots=np.array([s for _, s in consts], dtype=np.int64),
        const_values=np.array([0.0 if k[0] is None else k[0] for k, _ in consts]),
        const_valid=np.array([k[0] is not None for k, _ in consts], dtype=np.uint8),
        inputs=comp.inputs,
        outputs=out_slots,
    )


def run_program(program: Program, state: ProgramState, rows: I64) -> None:
    """Advance the symbols ``rows`` (indices into the state) by one bar each: their input slots
    must hold the new bar; afterwards their output slots hold its values."""
    _run(
        program.code,
        program.fparams,
        state.vals,
        state.ok,
        state.state,
        state.steps,
        rows,
        state.scratch,
        state.status,
    )
    if state.status[0]:
        code, instr = int(state.status[0]), int(state.status[1])
        state.status[:] = 0
        if code == ERR_WEIGHTED_NULL:
            raise ProgramError(
                f"instruction {instr}: a weighted rolling window met a null value; polars "
                "refuses such windows too: fill the input's nulls first (see library.wma)"
            )
        raise ProgramError(f"instruction {instr} failed with code {code}")


# The interpreter. Helpers are inlined; every float operation mirrors polars (see the module
# docstring), so none may be rewritten into an "equivalent" form.


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def total_gt(a: float, b: float) -> bool:
    """``a > b`` in polars' total order on floats: NaN above every number, equal to itself."""
    if math.isnan(a):
        return not math.isnan(b)
    if math.isnan(b):
        return False
    return a > b


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def total_ge(a: float, b: float) -> bool:
    if math.isnan(a):
        return True
    if math.isnan(b):
        return False
    return a >= b


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def total_eq(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _kahan_add(st: F64, o: int, x: float) -> None:
    # st[o]: sum, st[o+1]: add compensation, st[o+3..o+5]: non-finite, +inf, -inf counts
    if math.isfinite(x):
        y = x - st[o + 1]
        new = st[o] + y
        st[o + 1] = (new - st[o]) - y
        st[o] = new
    else:
        st[o + 3] += 1.0
        if x > 0:
            st[o + 4] += 1.0
        elif x < 0:
            st[o + 5] += 1.0


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _kahan_sub(st: F64, o: int, x: float) -> None:
    if math.isfinite(x):
        y = (0.0 - x) - st[o + 2]
        new = st[o] + y
        st[o + 2] = (new - st[o]) - y
        st[o] = new
    else:
        st[o + 3] -= 1.0
        if x > 0:
            st[o + 4] -= 1.0
        elif x < 0:
            st[o + 5] -= 1.0


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _kahan_sum(st: F64, o: int) -> float:
    if st[o + 3] == 0.0:
        return float(st[o])
    if st[o + 3] == st[o + 4]:
        return math.inf
    if st[o + 3] == st[o + 5]:
        return -math.inf
    return math.nan


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _welford_insert(st: F64, o: int, x: float) -> None:
    # st[o], st[o+1], st[o+2]: weight, mean, sum of squared deviations
    new_weight = st[o] + 1.0
    delta = x - st[o + 1]
    new_mean = st[o + 1] + delta / new_weight
    st[o + 2] += (x - new_mean) * delta
    st[o] = new_weight
    st[o + 1] = new_mean
    if st[o] == 0.0:
        st[o + 1] = 0.0
        st[o + 2] = 0.0


@njit(cache=True, nogil=True, error_model="numpy")
def _rolling_std(st: F64, o: int, n: int, ddof: int, t: int, x: float, xok: bool) -> float:
    # Layout: 0 nulls, 1 non-finite, 2..4 back state, 5 back length, 6 front length,
    # 7 front position, then ring values (n), ring validity (n), back values (n),
    # front suffix states (3n). Returns the variance, or -1 where it is null (a variance is
    # never negative: polars clamps rounding below zero to 0).
    ring, rok, backv, front = o + 8, o + 8 + n, o + 8 + 2 * n, o + 8 + 3 * n
    pos = t % n
    if t >= n:
        if st[rok + pos] != 0.0:
            if st[o + 7] == st[o + 6]:
                length = int(st[o + 5])
                s = np.zeros(3)
                for j in range(length - 1, -1, -1):
                    _welford_insert(s, 0, st[backv + j])
                    st[front + 3 * j] = s[0]
                    st[front + 3 * j + 1] = s[1]
                    st[front + 3 * j + 2] = s[2]
                st[o + 6] = length
                st[o + 7] = 0.0
                st[o + 2] = 0.0
                st[o + 3] = 0.0
                st[o + 4] = 0.0
                st[o + 5] = 0.0
            st[o + 7] += 1.0
            if not math.isfinite(st[ring + pos]):
                st[o + 1] -= 1.0
        else:
            st[o] -= 1.0
    if xok:
        xv = x
        if not math.isfinite(x):
            xv = 0.0
            st[o + 1] += 1.0
        _welford_insert(st, o + 2, xv)
        st[backv + int(st[o + 5])] = xv
        st[o + 5] += 1.0
    else:
        st[o] += 1.0
    st[ring + pos] = x
    st[rok + pos] = 1.0 if xok else 0.0
    length = min(t + 1, n)
    if length - st[o] < n:
        return -1.0
    w, m, dp = st[o + 2], st[o + 3], st[o + 4]
    fp = int(st[o + 7])
    if fp < int(st[o + 6]):
        ow, om, odp = st[front + 3 * fp], st[front + 3 * fp + 1], st[front + 3 * fp + 2]
        if ow != 0.0:
            new_weight = w + ow
            frac = ow / new_weight
            delta = om - m
            new_mean = m + delta * frac
            dp += odp + ow * (om - new_mean) * delta
            w = new_weight
            m = new_mean
            if w == 0.0:
                m = 0.0
                dp = 0.0
    if w <= ddof:
        return -1.0
    var = dp / (w - ddof)
    if var < 0.0:
        var = 0.0
    if st[o + 1] > 0.0:
        var = math.nan
    return float(var)


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _binary(op: int, x: float, y: float) -> float:
    if op == DIV:
        return x / y
    if op == MUL:
        return x * y
    if op == SUB:
        return x - y
    if op == ADD:
        return x + y
    if op == POW:
        return float(x**y)
    if op in (EQ, NE):
        return 1.0 if total_eq(x, y) == (op == EQ) else 0.0
    if op in (GT, LT):
        return 1.0 if (total_gt(x, y) if op == GT else total_gt(y, x)) else 0.0
    return 1.0 if (total_ge(x, y) if op == GE else total_ge(y, x)) else 0.0


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _push(st: F64, o: int, n: int, t: int, x: float, ok: int) -> None:
    # A window's ring: values at st[o : o + n], validity at st[o + n : o + 2n].
    st[o + t % n] = x
    st[o + n + t % n] = 1.0 if ok else 0.0


@njit(cache=True, nogil=True, error_model="numpy")
def _run(
    code: I64,
    fp: F64,
    vals: F64,
    ok: U8,
    state: F64,
    steps: I64,
    rows: I64,
    scratch: F64,
    status: I64,
) -> None:
    for r in range(rows.shape[0]):
        s = rows[r]
        t = steps[s]
        v = vals[s]
        k = ok[s]
        st = state[s]
        for i in range(code.shape[0]):
            op = code[i, 0]
            out = code[i, 1]
            a = code[i, 2]
            if op <= LE:
                b = code[i, 3]
                if k[a] and k[b]:
                    v[out] = _binary(op, v[a], v[b])
                    k[out] = 1
                else:
                    k[out] = 0
            elif op <= MASK:
                if op == WHEN:
                    src = code[i, 3] if (k[a] and v[a] != 0.0) else code[i, 4]
                    v[out] = v[src]
                    k[out] = k[src]
                elif op in (RMEAN, RSUM):
                    n = code[i, 6]
                    o = code[i, 8]
                    ring = o + 7
                    pos = t % n
                    if n == 1:
                        for j in range(7):
                            st[o + j] = 0.0
                    elif t >= n:
                        if st[ring + n + pos] != 0.0:
                            _kahan_sub(st, o, st[ring + pos])
                        else:
                            st[o + 6] -= 1.0
                    if k[a]:
                        _kahan_add(st, o, v[a])
                    else:
                        st[o + 6] += 1.0
                    _push(st, ring, n, t, v[a], k[a])
                    valid = min(t + 1, n) - st[o + 6]
                    if valid >= n:
                        total = _kahan_sum(st, o)
                        v[out] = total / valid if op == RMEAN else total
                        k[out] = 1
                    else:
                        k[out] = 0
                elif op == EWM:
                    o = code[i, 8]
                    alpha = fp[code[i, 11]]
                    if st[o + 2] == 0.0 and k[a]:
                        st[o + 2] = 1.0
                        st[o] = v[a]
                        st[o + 1] = 1.0
                    else:
                        st[o + 1] *= 1.0 - alpha
                        if k[a]:
                            new_weight = st[o + 1] + alpha
                            st[o] = st[o] + (v[a] - st[o]) * (alpha / new_weight)
                            st[o + 1] = 1.0
                            st[o + 2] += 1.0
                    if k[a] and st[o + 2] >= 1.0:
                        v[out] = st[o]
                        k[out] = 1
                    else:
                        k[out] = 0
                elif op == SQRT:
                    v[out] = math.sqrt(v[a])
                    k[out] = k[a]
                elif op == SHIFT:
                    n = code[i, 6]
                    o = code[i, 8]
                    pos = t % n
                    if t >= n:
                        v[out] = st[o + pos]
                        k[out] = 1 if st[o + n + pos] != 0.0 else 0
                    else:
                        k[out] = 0
                    _push(st, o, n, t, v[a], k[a])
                elif op == LOG:
                    v[out] = math.log(v[a])
                    k[out] = k[a]
                else:  # MASK
                    v[out] = v[a]
                    k[out] = k[a] if t >= code[i, 6] else 0
            elif op <= MINH:
                if op == CLIP:
                    x = v[a]
                    flags = code[i, 7]
                    f = code[i, 11]
                    if (flags & 1) and x < fp[f]:
                        x = fp[f]
                    elif (flags & 2) and x > fp[f + 1]:
                        x = fp[f + 1]
                    v[out] = x
                    k[out] = k[a]
                elif op == RSTD:
                    var = _rolling_std(st, code[i, 8], code[i, 6], code[i, 7], t, v[a], k[a] != 0)
                    if var == -1.0:
                        k[out] = 0
                    else:
                        v[out] = math.sqrt(var)
                        k[out] = 1
                elif op in (RMAX, RMIN):
                    n = code[i, 6]
                    o = code[i, 8]
                    _push(st, o, n, t, v[a], k[a])
                    if t + 1 < n:
                        k[out] = 0
                    else:
                        full = True
                        best = st[o + (t + 1) % n]
                        nan = False
                        for j in range(t - n + 1, t + 1):
                            q = j % n
                            if st[o + n + q] == 0.0:
                                full = False
                                break
                            x = st[o + q]
                            if math.isnan(x):
                                nan = True
                            elif (x > best) if op == RMAX else (x < best):
                                best = x
                        if full:
                            v[out] = math.nan if nan else best
                            k[out] = 1
                        else:
                            k[out] = 0
                elif op == FILLNULL:
                    b = code[i, 3]
                    v[out] = v[a] if k[a] else v[b]
                    k[out] = 1
                elif op == ABS:
                    v[out] = abs(v[a])
                    k[out] = k[a]
                elif op == NEG:
                    v[out] = -v[a]
                    k[out] = k[a]
                else:  # MAXH, MINH: nulls and NaN are skipped; ties keep the right operand
                    b = code[i, 3]
                    if not k[a] or (k[b] and math.isnan(v[a])):
                        v[out] = v[b]
                        k[out] = k[b]
                    elif not k[b] or math.isnan(v[b]):
                        v[out] = v[a]
                        k[out] = 1
                    else:
                        x, y = v[a], v[b]
                        v[out] = x if ((x > y) if op == MAXH else (x < y)) else y
                        k[out] = 1
            elif op <= INDEX:
                if op in (AND, OR):
                    b = code[i, 3]
                    target = 0.0 if op == AND else 1.0
                    if (k[a] and v[a] == target) or (k[b] and v[b] == target):
                        v[out] = target
                        k[out] = 1
                    elif k[a] and k[b]:
                        v[out] = 1.0 - target
                        k[out] = 1
                    else:
                        k[out] = 0
                elif op == EXP:
                    v[out] = math.exp(v[a])
                    k[out] = k[a]
                elif op == SIN:
                    v[out] = math.sin(v[a])
                    k[out] = k[a]
                elif op == COALESCE:
                    b = code[i, 3]
                    src = a if k[a] else b
                    v[out] = v[src]
                    k[out] = k[src]
                elif op == ISNULL:
                    v[out] = 0.0 if k[a] else 1.0
                    k[out] = 1
                elif op in (RWSUM, RWMEAN):
                    n = code[i, 6]
                    o = code[i, 8]
                    f = code[i, 11]
                    _push(st, o, n, t, v[a], k[a])
                    if t + 1 < n:
                        k[out] = 0
                    else:
                        wsum = -0.0 if op == RWSUM else 0.0
                        wtot = 0.0
                        for j in range(n):
                            q = (t - n + 1 + j) % n
                            if st[o + n + q] == 0.0:
                                status[0] = ERR_WEIGHTED_NULL
                                status[1] = i
                            wsum = wsum + st[o + q] * fp[f + j]
                            wtot = wtot + fp[f + j]
                        if op == RWSUM:
                            v[out] = wsum
                        else:
                            v[out] = wsum / wtot if wtot != 0.0 else 0.0
                        k[out] = 1
                else:  # INDEX
                    v[out] = float(t)
                    k[out] = 1
            else:
                _kernel_step(op, code[i], fp, v, k, st, t, scratch)
        steps[s] = t + 1


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _value(v: F64, k: U8, slot: int) -> float:
    # The batch kernels read columns as numpy arrays, where a null is NaN.
    return float(v[slot]) if k[slot] else math.nan


@njit(cache=True, nogil=True, error_model="numpy")
def _kernel_step(op: int, row: I64, fp: F64, v: F64, k: U8, st: F64, t: int, scratch: F64) -> None:
    out = row[1]
    o = row[8]
    n = row[6]
    if op == K_WILDER:
        h, lo, c = _value(v, k, row[2]), _value(v, k, row[3]), _value(v, k, row[4])
        if t == 0:
            st[o] = h - lo
            st[o + 1] = 0.0
            st[o + 2] = 0.0
        else:
            st[o], st[o + 1], st[o + 2] = K.wilder_step(
                st[o], st[o + 1], st[o + 2], h, lo, st[o + 3], st[o + 4], st[o + 5], 1.0 / n
            )
        st[o + 3], st[o + 4], st[o + 5] = h, lo, c
        v[out] = st[o]
        v[row[9]] = K.directional_index(st[o + 1], st[o])
        v[row[10]] = K.directional_index(st[o + 2], st[o])
        k[out] = k[row[9]] = k[row[10]] = 1
    elif op == K_STOCH:
        h, lo, c = _value(v, k, row[2]), _value(v, k, row[3]), _value(v, k, row[4])
        pos = t % n
        st[o + pos] = h
        st[o + n + pos] = lo
        k[out] = 0
        if t >= n - 1:
            hh, ll = h, lo
            for j in range(t - n + 1, t):
                hh = max(hh, st[o + j % n])
                ll = min(ll, st[o + n + j % n])
            x = K.stochastic_value(c, hh, ll)
            if not math.isnan(x):  # the batch turns the kernel's NaN into a null
                v[out] = x
                k[out] = 1
    elif op == K_KAMA:
        c = _value(v, k, row[2])
        ring = st[o + 1 : o + 2 + n]
        ring[t % (n + 1)] = c
        k[out] = 1
        if t < n - 1:
            v[out] = math.nan
        elif t == n - 1:
            st[o] = K.window_mean(ring, 0, n)
            v[out] = st[o]
        else:
            st[o] = K.kama_step(st[o], ring, t, n, fp[row[11]], fp[row[11] + 1], n + 1)
            v[out] = st[o]
    elif op == K_PSAR:
        h, lo, c = _value(v, k, row[2]), _value(v, k, row[3]), _value(v, k, row[4])
        # 0 sar, 1 af, 2 ep, 3 falling, 4 previous high, 5 previous low, 6 first close
        k[out] = k[row[9]] = 1
        if t == 0:
            st[o + 6] = c
            v[out] = v[row[9]] = math.nan
        else:
            if t == 1:
                s0, af, ep, falling = K.psar_start(
                    st[o + 4], st[o + 5], h, lo, st[o + 6], fp[row[11]]
                )
            else:
                s0, af, ep, falling = st[o], st[o + 1], st[o + 2], st[o + 3] != 0.0
            s0, af, ep, falling = K.psar_step(
                s0, af, ep, falling, h, lo, st[o + 4], st[o + 5], fp[row[11]], fp[row[11] + 1]
            )
            st[o], st[o + 1], st[o + 2] = s0, af, ep
            st[o + 3] = 1.0 if falling else 0.0
            v[out] = s0
            v[row[9]] = -1.0 if falling else 1.0
        st[o + 4], st[o + 5] = h, lo
    elif op == K_SUPERTREND:
        h, lo, c = _value(v, k, row[2]), _value(v, k, row[3]), _value(v, k, row[4])
        lb, ub = K.supertrend_bands(h, lo, _value(v, k, row[5]), fp[row[11]])
        k[out] = k[row[9]] = 1
        if t == 0:
            st[o] = 1.0
            v[out] = v[row[9]] = math.nan
        else:
            d, lb, ub = K.supertrend_step(st[o], c, lb, ub, st[o + 1], st[o + 2])
            st[o] = d
            v[out] = lb if d > 0 else ub
            v[row[9]] = d
        st[o + 1], st[o + 2] = lb, ub
    elif op == K_AROON:
        x = _value(v, k, row[2])
        highest = row[7] != 0
        ring = st[o + 1 : o + 2 + n]
        ring[t % (n + 1)] = x
        k[out] = 1
        if t < n:
            st[o] = -1.0
            v[out] = math.nan
        else:
            best = int(st[o])
            if best >= t - n:
                if K.extreme_is_newer(x, ring[best % (n + 1)], highest):
                    best = t
            else:
                best = t
                for j in range(t, t - n - 1, -1):
                    if K.extreme_is_better(ring[j % (n + 1)], ring[best % (n + 1)], highest):
                        best = j
            st[o] = best
            v[out] = t - best
    else:  # K_MAD, K_HURST: the window in time order, then the batch kernel's window function
        ring = st[o : o + n]
        ring[t % n] = _value(v, k, row[2])
        k[out] = 1
        if t < n - 1:
            v[out] = math.nan
        else:
            for j in range(n):
                scratch[j] = ring[(t - n + 1 + j) % n]
            if op == K_MAD:
                v[out] = K.mean_abs_deviation_window(scratch, 0, n)
            else:
                v[out] = K.hurst_window(scratch, 0, n)
