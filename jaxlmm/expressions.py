"""R expressions inside a formula's calls (``log(x + 1)``, ``factor(g %% 3)``, ``poly(Time, 2)``).

:func:`parse_expression` reads R's syntax with R's operator precedence (``?Syntax``: ``^`` > unary
``-``/``+`` > ``:`` > ``%any%`` > ``*``/``/`` > ``+``/``-`` > comparisons > ``!`` > ``&`` > ``|``);
:func:`deparse` writes a tree back as R's ``deparse`` does, which is how R names a model's columns
(``poly(Time, 2)``, ``I(x^2)``, ``factor(g%%3)``, ``log(x + 1)``); :func:`evaluate_expression` computes
its values on a DataFrame.

Data-dependent calls (``scale``, ``poly``, ``ns``, ``bs``, ``mean``, ``sd``, ...) are *stateful*: on the
training data each records what it learnt (means, scales, polynomial coefficients, knots) in order of
evaluation, and on new data the same expression reuses those states (R's ``makepredictcall``), so a
prediction never recomputes a basis or a centre from the new rows.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import bases
from .errors import DataError, FormulaError

# --------------------------------------------------------------------------- tokens
_TOKEN = re.compile(
    r"\s*(?:(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?L?)"
    r"|(?P<str>\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*')"
    r"|(?P<name>[A-Za-z.][A-Za-z0-9._]*|`[^`]+`)"
    r"|(?P<op>%[^%\s]*%|<=|>=|==|!=|&&|\|\||[-+*/^:<>&|!()\[\],=]))"
)
_RESERVED = {"if", "else", "repeat", "while", "function", "for", "next", "break", "in", "NULL", "NA", "Inf", "NaN"}
_SYNTACTIC = re.compile(r"^(?:[A-Za-z]|\.(?![0-9]))[A-Za-z0-9._]*$|^\.$")

# binding powers (left, right); prefix operators bind their operand at the given power
_BINARY = {
    "|": (10, 11),
    "||": (10, 11),
    "&": (20, 21),
    "&&": (20, 21),
    "<": (40, 41),
    ">": (40, 41),
    "<=": (40, 41),
    ">=": (40, 41),
    "==": (40, 41),
    "!=": (40, 41),
    "+": (50, 51),
    "-": (50, 51),
    "*": (60, 61),
    "/": (60, 61),
    "%": (70, 71),  # every %any% operator
    ":": (80, 81),
    "^": (101, 100),  # right-associative, above unary minus: -2^2 is -(2^2)
}
_PREFIX = {"!": 30, "-": 90, "+": 90}
_SPACED = {"+", "-", "*", "<", ">", "<=", ">=", "==", "!=", "&", "&&", "|", "||", "%in%"}  # deparse's spacing


@dataclass(frozen=True)
class Node:
    """A parsed R expression: ``kind`` is num, str, name, call, index, binary, unary or paren."""

    kind: str
    value: object = None  # number, string, name, operator or function name
    args: tuple = ()  # operands, or (argument name or None, Node) pairs of a call / index
    pos: int = 0


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out, i = [], 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        m = _TOKEN.match(text, i)
        if not m or not m.lastgroup:
            raise FormulaError(f"unexpected character {text[i]!r}", text, i)
        out.append((m.lastgroup, m.group(m.lastgroup), m.start(m.lastgroup)))
        i = m.end()
    out.append(("end", "", len(text)))
    return out


class _Parser:
    def __init__(self, text: str, offset: int):
        self.text, self.offset = text, offset
        self.toks = _tokens(text)
        self.k = 0

    def fail(self, msg: str, pos: int):
        raise FormulaError(msg, None, self.offset + pos)

    def peek(self):
        return self.toks[self.k]

    def take(self):
        self.k += 1
        return self.toks[self.k - 1]

    def expect(self, text: str):
        kind, tok, pos = self.take()
        if tok != text or kind != "op":
            self.fail(f"expected {text!r}", pos)

    def expr(self, min_bp: int = 0) -> Node:
        left = self.prefix()
        while True:
            kind, tok, pos = self.peek()
            if kind == "op" and tok in ("(", "["):
                if left.kind != "name" and tok == "(":
                    self.fail("only a name can be called", pos)
                self.take()
                args = self.arguments("]" if tok == "[" else ")")
                left = Node("call" if tok == "(" else "index", left.value if tok == "(" else left, args, pos)
                continue
            key = "%" if kind == "op" and tok.startswith("%") else tok
            if kind != "op" or key not in _BINARY:
                if kind in ("num", "str", "name"):
                    self.fail(f"missing operator before {tok!r}", pos)
                return left
            lbp, rbp = _BINARY[key]
            if lbp < min_bp:
                return left
            self.take()
            left = Node("binary", tok, (left, self.expr(rbp)), pos)

    def prefix(self) -> Node:
        kind, tok, pos = self.take()
        if kind == "num":
            return Node("num", tok, (), pos)
        if kind == "str":
            return Node("str", tok[1:-1], (), pos)
        if kind == "name":
            return Node("name", tok[1:-1] if tok.startswith("`") else tok, (), pos)
        if tok == "(":
            inner = self.expr()
            self.expect(")")
            return Node("paren", None, (inner,), pos)
        if kind == "op" and tok in _PREFIX:
            return Node("unary", tok, (self.expr(_PREFIX[tok]),), pos)
        self.fail("the expression ends too early" if kind == "end" else f"unexpected {tok!r}", pos)

    def arguments(self, close: str) -> tuple:
        args = []
        if self.peek()[1] == close:
            self.take()
            return ()
        while True:
            name = None
            kind, tok, _ = self.peek()
            if kind in ("name", "str") and self.toks[self.k + 1][1] == "=":
                name = tok.strip("`\"'")
                self.k += 2
            args.append((name, self.expr()))
            kind, tok, pos = self.take()
            if tok == close:
                return tuple(args)
            if tok != ",":
                self.fail(f"expected ',' or {close!r}", pos)


def parse_expression(text: str, offset: int = 0) -> Node:
    """Parse one R expression; a :class:`FormulaError` (positions shifted by ``offset``) if it is not one."""
    parser = _Parser(text, offset)
    node = parser.expr()
    kind, tok, pos = parser.peek()
    if kind != "end":
        parser.fail(f"unexpected {tok!r}", pos)
    return node


# --------------------------------------------------------------------------- deparse


def r_name(name: str) -> str:
    """A name as R prints it: backquoted unless syntactic (``x``, ``my.var``; `` `my var` ``)."""
    return name if _SYNTACTIC.match(name) and name not in _RESERVED else f"`{name}`"


def r_number(text: str) -> str:
    """A numeric literal as R's deparse writes it: 15 significant digits, fixed or scientific notation
    whichever is shorter (``1e5`` -> ``1e+05``, ``2.50`` -> ``2.5``), an integer ``1L`` kept."""
    if text.endswith("L"):
        return text
    value = float(text)
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else "Inf"
    digits = next((d for d in range(1, 16) if float(f"{value:.{d - 1}e}") == value), 15)
    mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
    sci = f"{mantissa}e{'-' if int(exponent) < 0 else '+'}{abs(int(exponent)):02d}"
    decimals = max(0, digits - 1 - int(exponent))
    fixed = f"{value:.{decimals}f}"
    return fixed if len(fixed) <= len(sci) else sci


def deparse(node: Node) -> str:
    """R's ``deparse`` of an expression: the text R uses for a model-matrix column's name."""
    kind = node.kind
    if kind == "num":
        return r_number(node.value)
    if kind == "str":
        return '"' + node.value + '"'
    if kind == "name":
        return r_name(node.value)
    if kind == "paren":
        return f"({deparse(node.args[0])})"
    if kind == "unary":
        return f"{node.value}{deparse(node.args[0])}"
    if kind == "binary":
        sep = f" {node.value} " if node.value in _SPACED else node.value
        return deparse(node.args[0]) + sep + deparse(node.args[1])
    args = ", ".join(deparse(a) if n is None else f"{r_name(n)} = {deparse(a)}" for n, a in node.args)
    if kind == "index":
        return f"{deparse(node.value)}[{args}]"
    return f"{r_name(node.value)}({args})"


# --------------------------------------------------------------------------- evaluation


@dataclass
class Evaluation:
    """One evaluation of an expression on a DataFrame.

    ``fitted`` is None on the training data: every stateful call then learns its state and appends it
    to ``states``; on new data ``fitted`` holds those states, reused in the same order.
    """

    data: pd.DataFrame
    fitted: tuple | None = None
    states: list = field(default_factory=list)

    def state(self, learn, *args, **kwargs):
        if self.fitted is None:
            self.states.append(learn(*args, **kwargs))
            return self.states[-1]
        k = len(self.states)
        self.states.append(self.fitted[k])
        return self.fitted[k]


_CONSTANTS = {"TRUE": True, "FALSE": False, "T": True, "F": False, "pi": math.pi, "Inf": math.inf, "NA": math.nan}


def _numeric(value, what: str) -> np.ndarray:
    if isinstance(value, (pd.Categorical, pd.Series)) and isinstance(value.dtype, pd.CategoricalDtype):
        raise DataError(f"{what} needs a numeric argument, not a factor")
    arr = np.asarray(value)
    if arr.dtype == object or arr.dtype.kind in "USO":
        try:
            return arr.astype(float)
        except (TypeError, ValueError):
            raise DataError(f"{what} needs a numeric argument, not text") from None
    return arr.astype(float) if arr.dtype.kind == "b" else arr


def _binary(op: str, a, b):
    if op in ("&", "&&"):
        return np.logical_and(a, b)
    if op in ("|", "||"):
        return np.logical_or(a, b)
    if op in ("==", "!="):
        a_arr, b_arr = np.asarray(a), np.asarray(b)
        equal = (
            a_arr == b_arr if a_arr.dtype.kind in "fiub" and b_arr.dtype.kind in "fiub" else a_arr.astype(str) == b_arr
        )
        return equal if op == "==" else ~equal
    if op == "%in%":
        return np.isin(np.asarray(a), np.atleast_1d(np.asarray(b)))
    if op == ":":
        start, stop = float(np.squeeze(a)), float(np.squeeze(b))
        step = 1.0 if stop >= start else -1.0
        return np.arange(start, stop + step / 2, step)
    a, b = _numeric(a, f"'{op}'"), _numeric(b, f"'{op}'")
    functions = {
        "+": np.add,
        "-": np.subtract,
        "*": np.multiply,
        "/": np.true_divide,
        "^": lambda u, v: np.power(np.asarray(u, dtype=float), v),
        "%%": np.mod,  # R's %% takes the divisor's sign, as np.mod does
        "%/%": np.floor_divide,
        "<": np.less,
        ">": np.greater,
        "<=": np.less_equal,
        ">=": np.greater_equal,
    }
    if op not in functions:
        raise DataError(f"unknown operator {op!r}")
    return functions[op](a, b)


def _scale(ev: Evaluation, x, center=True, scale=True):
    """R's ``scale(x, center, scale)``: centre by the mean (or a number), divide by the standard deviation
    (or the root mean square when not centred, or a number); on new data the training values are used."""
    x = _numeric(x, "scale()")

    def learn(x):
        c = np.nanmean(x) if center is True else (0.0 if center is False else float(center))
        xc = x - c
        ok = ~np.isnan(xc)
        s = (
            np.sqrt(np.sum(xc[ok] ** 2) / max(ok.sum() - 1, 1))
            if scale is True
            else (1.0 if scale is False else float(scale))
        )
        return c, s

    c, s = ev.state(learn, x)
    return (x - c) / s


def _summary(function):
    """A summary of the training values (missing values left out, as ``na.rm = TRUE``), kept for new data."""

    def call(ev: Evaluation, x, *rest, **kwargs):
        x = _numeric(x, "a summary")
        return ev.state(lambda v: float(function(v)), x)

    return call


def _plain(function):
    return lambda ev, *args, **kwargs: function(*args, **kwargs)


def _factor(x, levels=None, ordered=False):
    values = np.where(x, "TRUE", "FALSE") if isinstance(x, np.ndarray) and x.dtype.kind == "b" else x
    if levels is not None:
        return pd.Categorical(values, categories=list(np.atleast_1d(levels)), ordered=bool(ordered))
    if isinstance(values, pd.Categorical):
        return values.as_ordered() if ordered else values
    return pd.Categorical(values, ordered=bool(ordered))


def _log(x, base=math.e):
    x = _numeric(x, "log()")
    return np.log(x) / (1.0 if base == math.e else math.log(base))


def _round(x, digits=0):
    return np.round(_numeric(x, "round()"), int(digits))


_FUNCTIONS = {
    "log": _plain(_log),
    "log2": _plain(np.log2),
    "log10": _plain(np.log10),
    "log1p": _plain(np.log1p),
    "exp": _plain(np.exp),
    "expm1": _plain(np.expm1),
    "sqrt": _plain(np.sqrt),
    "abs": _plain(np.abs),
    "sin": _plain(np.sin),
    "cos": _plain(np.cos),
    "tan": _plain(np.tan),
    "floor": _plain(np.floor),
    "ceiling": _plain(np.ceil),
    "round": _plain(_round),
    "sign": _plain(np.sign),
    "I": _plain(lambda v: v),
    "c": _plain(lambda *v: np.concatenate([np.atleast_1d(np.asarray(a)) for a in v])),
    "as.numeric": _plain(lambda v: _numeric(v, "as.numeric()")),
    "as.integer": _plain(lambda v: np.trunc(_numeric(v, "as.integer()"))),
    "factor": _plain(_factor),
    "as.factor": _plain(_factor),
    "ordered": _plain(lambda v, levels=None: _factor(v, levels, ordered=True)),
    "as.ordered": _plain(lambda v: _factor(v, ordered=True)),
    "scale": _scale,
    "mean": _summary(np.nanmean),
    "sd": _summary(lambda v: np.nanstd(v, ddof=1)),
    "var": _summary(lambda v: np.nanvar(v, ddof=1)),
    "median": _summary(np.nanmedian),
    "min": _summary(np.nanmin),
    "max": _summary(np.nanmax),
    "poly": lambda ev, *args, **kwargs: bases.poly(ev.state, *args, **kwargs),
    "ns": lambda ev, *args, **kwargs: bases.ns(ev.state, *args, **kwargs),
    "bs": lambda ev, *args, **kwargs: bases.bs(ev.state, *args, **kwargs),
}
STATEFUL = frozenset({"scale", "mean", "sd", "var", "median", "min", "max", "poly", "ns", "bs"})


def _eval(node: Node, ev: Evaluation):
    kind = node.kind
    if kind == "num":
        return float(node.value.rstrip("L"))
    if kind == "str":
        return node.value
    if kind == "name":
        name = node.value
        if name in ev.data.columns:
            column = ev.data[name]
            return column.array if isinstance(column.dtype, pd.CategoricalDtype) else column.to_numpy()
        if name in _CONSTANTS:
            return _CONSTANTS[name]
        raise DataError(f"unknown column {name!r} (columns are: {', '.join(map(str, ev.data.columns))})")
    if kind == "paren":
        return _eval(node.args[0], ev)
    if kind == "unary":
        value = _eval(node.args[0], ev)
        return np.logical_not(value) if node.value == "!" else (-1 if node.value == "-" else 1) * _numeric(value, "-")
    if kind == "binary":
        return _binary(node.value, _eval(node.args[0], ev), _eval(node.args[1], ev))
    if kind == "index":
        base = np.asarray(_eval(node.value, ev))
        if len(node.args) != 1 or node.args[0][0] is not None:
            raise DataError("an index takes one argument")
        index = np.asarray(_eval(node.args[0][1], ev))
        return base[index] if index.dtype.kind == "b" else base[index.astype(np.int64) - 1]
    if node.value not in _FUNCTIONS:
        raise DataError(f"unknown function {node.value}() (known: {', '.join(sorted(_FUNCTIONS))})")
    positional = [_eval(a, ev) for n, a in node.args if n is None]
    keywords = {n.replace(".", "_"): _eval(a, ev) for n, a in node.args if n is not None}
    try:
        return _FUNCTIONS[node.value](ev, *positional, **keywords)
    except TypeError as exc:
        raise DataError(f"{node.value}(): {exc}") from None


def evaluate_expression(node: Node, data: pd.DataFrame, fitted: tuple | None = None) -> tuple[object, tuple]:
    """The value of an expression on ``data`` and the states of its data-dependent calls (reusing
    ``fitted`` states when given: R's ``makepredictcall``)."""
    ev = Evaluation(data, fitted)
    with np.errstate(all="ignore"):
        value = _eval(node, ev)
    return value, tuple(ev.states)


def uses_data_statistics(node: Node) -> bool:
    """Whether an expression has a data-dependent call (its values depend on the other rows)."""
    if node.kind == "call" and node.value in STATEFUL:
        return True
    children = [a for _, a in node.args] if node.kind in ("call", "index") else list(node.args)
    if node.kind == "index":
        children.append(node.value)
    return any(isinstance(c, Node) and uses_data_statistics(c) for c in children)
