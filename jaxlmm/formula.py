"""lme4's formula language -> a fixed part and random-effects terms.

``parse_formula("y ~ x * f + (1 + x | g) + (1 | a/b)")`` returns a :class:`Formula` whose
fixed part is a list of R terms (``x``, ``f``, ``x:f``) and whose random part is a tuple of
:class:`RandomTerm` (bars), with ``||`` split into uncorrelated terms and ``a/b`` expanded to
``a`` and ``b:a`` (lme4's ``findbars``/``expandDoubleVerts``/``expandSlash``).

Operators follow R's ``terms.formula``: ``+``, ``-``, ``*``, ``:``, ``/``, ``^``, ``0``/``1``/``-1``.
A variable is a column name, a backquoted name (kept quoted when not syntactic, as R's term labels) or a
call such as ``log(x)`` or ``poly(x, 2)``, parsed as an R expression (:mod:`jaxlmm.expressions`) and
named by R's deparse of it; the design stage evaluates it.  Terms are sorted by order (main effects first) and
keep their order of appearance within an order, as R does.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field

from .errors import FormulaError
from .expressions import deparse, parse_expression, r_name

Term = tuple[str, ...]  # the variables of one term, in order of first appearance in the formula


@dataclass(frozen=True)
class ModelPart:
    """A right-hand side: R terms (each a tuple of variable names) and the intercept flag."""

    terms: tuple[Term, ...]
    intercept: bool


@dataclass(frozen=True)
class RandomTerm:
    """One bar ``(effects | group)``; ``group`` holds the variables whose interaction is the factor.

    ``label`` is lme4's name of the grouping factor where it is not the variables joined by ``:``: a
    nested factor of ``a/b/c`` is ``c:(b:a)``; names are unquoted (lme4's ``ngrps`` gives ``my g``).
    """

    effects: ModelPart
    group: Term
    label: str = field(default="", compare=False)

    @property
    def group_name(self) -> str:
        return self.label or ":".join(_unquote(v) for v in self.group)


def _unquote(name: str) -> str:
    return name[1:-1] if name.startswith("`") and name.endswith("`") else name


@dataclass(frozen=True)
class Formula:
    text: str
    response: str | None
    fixed: ModelPart
    random: tuple[RandomTerm, ...]
    offsets: tuple[str, ...] = ()  # the expressions of the fixed part's offset(...) terms, summed (R's offset)

    @property
    def variables(self) -> tuple[str, ...]:
        """Every variable the formula uses, response first."""
        names = [] if self.response is None else [self.response]
        parts = [self.fixed] + [r.effects for r in self.random]
        for part in parts:
            names += [v for t in part.terms for v in t]
        names += [v for r in self.random for v in r.group]
        return tuple(dict.fromkeys(names))


# --------------------------------------------------------------------------- tokens
_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+\.?\d*(?:[eE][-+]?\d+)?)|(?P<name>[A-Za-z.][A-Za-z0-9._]*|`[^`]+`)"
    r"|(?P<op>\|\||[~+\-*/:^|()]))"
)


@dataclass
class _Tok:
    kind: str  # num, name, call, op, end
    text: str
    pos: int


def _tokenize(text: str) -> list[_Tok]:
    toks, i = [], 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        m = _TOKEN.match(text, i)
        if not m or m.end() == i:
            raise FormulaError(f"unexpected character {text[i]!r}", text, i)
        start = m.start(m.lastgroup)
        kind, tok = m.lastgroup, m.group(m.lastgroup)
        i = m.end()
        if kind == "name":
            j = i
            while j < len(text) and text[j].isspace():
                j += 1
            if j < len(text) and text[j] == "(" and not tok.startswith("`"):
                end = _matching_paren(text, j)
                if not text[j + 1 : end].strip():
                    raise FormulaError(f"empty call {tok}()", text, j)
                try:  # R's name of a call is its deparsed text: poly(x,2) -> poly(x, 2)
                    call = deparse(parse_expression(text[start : end + 1], offset=start))
                except FormulaError as err:
                    raise FormulaError(str(err), text, err.position) from None
                toks.append(_Tok("call", call, start))
                i = end + 1
                continue
            if tok.startswith("`"):  # R's term label keeps the quotes of a name that is not syntactic
                tok = r_name(tok[1:-1])
        toks.append(_Tok(kind, tok, start))
    toks.append(_Tok("end", "", len(text)))
    return toks


def _matching_paren(text: str, open_pos: int) -> int:
    depth = 0
    for k in range(open_pos, len(text)):
        depth += {"(": 1, ")": -1}.get(text[k], 0)
        if depth == 0:
            return k
    raise FormulaError("unbalanced parenthesis", text, open_pos)


# --------------------------------------------------------------------------- parser (Pratt)
MAX_TERMS = 10_000  # more terms than any model matrix could hold: '(a+...+t)^20' is refused, not expanded
_BINARY = {"~": 5, "|": 10, "||": 10, "+": 20, "-": 20, "*": 30, "/": 30, ":": 40, "^": 50}


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = _tokenize(text)
        self.k = 0

    def peek(self) -> _Tok:
        return self.toks[self.k]

    def take(self) -> _Tok:
        tok = self.toks[self.k]
        self.k += 1
        return tok

    def error(self, msg: str, tok: _Tok):
        raise FormulaError(msg, self.text, tok.pos)

    def parse(self):
        node = self.expr(0)
        tok = self.peek()
        if tok.kind != "end":
            self.error(f"unexpected {tok.text!r}", tok)
        return node

    def expr(self, min_bp: int):
        left = self.prefix()
        while True:
            tok = self.peek()
            if tok.kind != "op" or tok.text not in _BINARY:
                if tok.kind in ("name", "num", "call") or tok.text == "(":
                    self.error("missing operator before " + repr(tok.text), tok)
                return left
            bp = _BINARY[tok.text]
            if bp < min_bp or (bp == min_bp and tok.text != "^"):
                return left
            self.take()
            right = self.expr(bp if tok.text == "^" else bp + 1)
            left = ("bin", tok.text, left, right, tok.pos)

    def prefix(self):
        tok = self.take()
        if tok.kind == "name" or tok.kind == "call":
            return ("var", tok.text, tok.pos)
        if tok.kind == "num":
            return ("num", float(tok.text), tok.pos)
        if tok.text == "(":
            if self.peek().text == ")":
                self.error("empty parentheses", self.peek())
            inner = self.expr(0)
            close = self.take()
            if close.text != ")":
                self.error("expected ')'", close)
            return ("paren", inner, tok.pos)
        if tok.text in ("-", "+"):
            return ("neg" if tok.text == "-" else "pos", self.expr(45), tok.pos)
        if tok.text == "~":  # one-sided formula
            return ("bin", "~", None, self.expr(6), tok.pos)
        if tok.kind == "end":
            self.error("formula ends too early", tok)
        self.error(f"unexpected {tok.text!r}", tok)


# --------------------------------------------------------------------------- terms
@dataclass
class _Terms:
    terms: list[frozenset]
    intercept: bool | None = None


class _Expander:
    def __init__(self, text: str):
        self.text = text
        self.order: dict[str, int] = {}

    def error(self, msg: str, pos: int):
        raise FormulaError(msg, self.text, pos)

    def var(self, name: str) -> str:
        self.order.setdefault(name, len(self.order))
        return name

    def expand(self, node) -> _Terms:
        out = self._expand(node)
        if len(out.terms) > MAX_TERMS:
            pos = node[-1] if isinstance(node[-1], int) else 0
            self.error(f"the formula expands to more than {MAX_TERMS} terms", pos)
        return out

    def _expand(self, node) -> _Terms:
        kind = node[0]
        if kind == "var":
            return _Terms([frozenset([self.var(node[1])])])
        if kind == "num":
            if node[1] not in (0.0, 1.0):
                self.error(f"a number other than 0 or 1 ({node[1]:g}) is not a term", node[2])
            return _Terms([], node[1] == 1.0)
        if kind == "paren":
            if node[1][0] == "bin" and node[1][1] in ("|", "||"):
                self.error("a random-effects term cannot be combined this way", node[2])
            return self.expand(node[1])
        if kind == "pos":
            return self.expand(node[1])
        if kind == "neg":
            inner = self.expand(node[1])
            return _Terms([], None if inner.intercept is None else not inner.intercept)
        op, a, b, pos = node[1], node[2], node[3], node[4]
        if op in ("|", "||"):
            self.error("a random-effects term must be in parentheses", pos)
        if op == "~":
            self.error("'~' may appear only once", pos)
        if op == "+":  # a chain of summands, expanded left to right without recursing down the chain
            terms: dict[frozenset, None] = {}
            icpt = None
            for summand in _split_plus(node):
                part = self.expand(summand)
                terms.update(dict.fromkeys(part.terms))
                icpt = part.intercept if part.intercept is not None else icpt
            return _Terms(list(terms), icpt)
        left = self.expand(a)
        if op == "-":
            right = self.expand(b)
            terms = [t for t in left.terms if t not in right.terms]
            icpt = left.intercept if right.intercept is None else not right.intercept
            return _Terms(terms, icpt)
        if op == "^":
            if b[0] != "num" or not 1 <= b[1] < 2**31 or b[1] != int(b[1]):
                self.error("'^' needs a positive whole number", pos)
            n_combos = sum(math.comb(len(left.terms), k) for k in range(1, min(int(b[1]), len(left.terms)) + 1))
            if n_combos > MAX_TERMS:
                self.error(f"the formula expands to more than {MAX_TERMS} terms", pos)
            terms = list(left.terms)
            for k in range(2, min(int(b[1]), len(left.terms)) + 1):  # higher powers add nothing
                terms = _union(terms, [frozenset().union(*combo) for combo in itertools.combinations(left.terms, k)])
            return _Terms(terms, left.intercept)
        right = self.expand(b)
        if not left.terms or not right.terms:
            self.error(f"'{op}' needs variables on both sides", pos)
        if len(left.terms) * len(right.terms) > MAX_TERMS:
            self.error(f"the formula expands to more than {MAX_TERMS} terms", pos)
        if op == ":":
            return _Terms(_interact(left.terms, right.terms))
        if op == "*":
            return _Terms(_union(_union(left.terms, right.terms), _interact(left.terms, right.terms)))
        if op == "/":
            outer = frozenset().union(*left.terms)
            return _Terms(_union(left.terms, _interact([outer], right.terms)), left.intercept)
        self.error(f"unknown operator {op!r}", pos)

    def part(self, node, default_intercept: bool = True) -> ModelPart:
        t = self.expand(node)
        terms = sorted(t.terms, key=len)  # stable: R sorts terms by order only
        ordered = tuple(tuple(sorted(term, key=self.order.__getitem__)) for term in terms)
        icpt = default_intercept if t.intercept is None else t.intercept
        return ModelPart(ordered, icpt)


def _union(a: list[frozenset], b: list[frozenset]) -> list[frozenset]:
    return list(dict.fromkeys(list(a) + list(b)))


def _interact(a: list[frozenset], b: list[frozenset]) -> list[frozenset]:
    return list(dict.fromkeys(x | y for x in a for y in b))


def _split_plus(node) -> list:
    """The summands of a top-level ``+`` chain (a ``-`` keeps its right side attached).

    Iterative: a formula with hundreds of terms is a left-deep chain as deep as it is long.
    """
    out, stack = [], [node]
    while stack:
        node = stack.pop()
        if node[0] == "bin" and node[1] == "+":
            stack += [node[3], node[2]]
        else:
            out.append(node)
    return out


def _is_bar(node) -> bool:
    return node[0] == "paren" and node[1][0] == "bin" and node[1][1] in ("|", "||")


def _grouping_terms(node, ex: _Expander) -> list[tuple[Term, str]]:
    """``g`` -> [g]; ``a:b`` -> [a:b]; ``a/b`` -> [a, b:a] (lme4's expandSlash puts the inner factor first),
    each with lme4's name: ``a/b/c`` gives ``a``, ``b:a`` and ``c:(b:a)``."""
    kind = node[0]
    if kind == "var":
        return [((ex.var(node[1]),), _unquote(node[1]))]
    if kind == "paren":
        return _grouping_terms(node[1], ex)
    if kind == "bin" and node[1] == ":":
        left, right = _grouping_terms(node[2], ex), _grouping_terms(node[3], ex)
        if len(left) != 1 or len(right) != 1:
            ex.error("cannot interact nested grouping factors", node[4])
        return [(left[0][0] + right[0][0], f"{left[0][1]}:{right[0][1]}")]
    if kind == "bin" and node[1] == "/":
        left, right = _grouping_terms(node[2], ex), _grouping_terms(node[3], ex)
        outer, outer_label = left[-1]
        if len(outer) > 1:
            outer_label = f"({outer_label})"
        return left + [(r + outer, f"{r_label}:{outer_label}") for r, r_label in right]
    pos = node[-1] if isinstance(node[-1], int) else 0
    ex.error("a grouping factor must be a variable, a:b or a/b", pos)


def parse_formula(text: str) -> Formula:
    """Parse an lme4 model formula ``response ~ fixed + (effects | group) + ...``.

    Every problem is a :class:`~jaxlmm.errors.FormulaError` whose ``position`` points at it; parsing is
    pure Python (no evaluation of the formula's expressions, which happens in the design stage).
    """
    if not isinstance(text, str):
        raise FormulaError(f"the formula must be a string such as 'y ~ x + (1 | g)', not {type(text).__name__}")
    if not text.strip():
        raise FormulaError("the formula is empty", text, 0)
    try:
        return _parse(text)
    except RecursionError:
        raise FormulaError("the formula is nested too deeply", text, 0) from None


def _parse(text: str) -> Formula:
    tree = _Parser(text).parse()
    if tree[0] != "bin" or tree[1] != "~":
        raise FormulaError("a model formula needs '~'", text, 0)
    ex = _Expander(text)
    lhs, rhs = tree[2], tree[3]
    response = None
    if lhs is not None:
        if lhs[0] != "var":
            ex.error("the response must be a single variable or call", lhs[-1] if isinstance(lhs[-1], int) else 0)
        response = lhs[1]
    fixed_nodes, bars = [], []
    for node in _split_plus(rhs):
        (bars if _is_bar(node) else fixed_nodes).append(node)
    # R orders a term's variables by their first appearance in the formula the term belongs to: the
    # fixed part (lme4's nobars formula) and each bar's left side are separate formulas
    if fixed_nodes:
        fixed_tree = fixed_nodes[0]
        for node in fixed_nodes[1:]:
            fixed_tree = ("bin", "+", fixed_tree, node, 0)
        fixed = ex.part(fixed_tree)
    else:
        fixed = ModelPart((), True)
    random: list[RandomTerm] = []
    for bar in bars:
        op, eff_node, grp_node, pos = bar[1][1], bar[1][2], bar[1][3], bar[1][4]
        effects = _Expander(text).part(eff_node)
        groups = _grouping_terms(grp_node, ex)
        pieces = [effects]
        if op == "||":  # expandDoubleVerts: one uncorrelated term per column term
            pieces = ([ModelPart((), True)] if effects.intercept else []) + [
                ModelPart((t,), False) for t in effects.terms
            ]
        for group, label in groups:
            for eff in pieces:
                if not eff.terms and not eff.intercept:
                    ex.error("a random-effects term has no effects", pos)
                term = RandomTerm(eff, group, label)
                if term in random:
                    ex.error(f"duplicated random-effects term ({_show(eff)} | {term.group_name})", pos)
                random.append(term)
    fixed, offsets = _split_offsets(fixed, random, ex)
    return Formula(text, response, fixed, tuple(random), offsets)


def _is_offset(variable: str) -> bool:
    return variable.startswith("offset(") and variable.endswith(")")


def _split_offsets(fixed: ModelPart, random: list[RandomTerm], ex: _Expander) -> tuple[ModelPart, tuple[str, ...]]:
    """The fixed part without its ``offset(expr)`` terms, and those expressions (R's ``terms`` keeps them
    in its ``offset`` attribute, not among the terms).  An offset inside an interaction or a random-effects
    term has no meaning: refused."""
    for part in [fixed] + [r.effects for r in random]:
        for term in part.terms:
            if any(_is_offset(v) for v in term) and (len(term) > 1 or part is not fixed):
                v = next(v for v in term if _is_offset(v))
                where = "a random-effects term" if part is not fixed else "an interaction"
                ex.error(
                    f"{v} cannot be part of {where}: an offset is added to the linear predictor on its own",
                    max(0, ex.text.find(v)),
                )
    offsets = tuple(t[0][len("offset(") : -1] for t in fixed.terms if _is_offset(t[0]))
    return ModelPart(tuple(t for t in fixed.terms if not _is_offset(t[0])), fixed.intercept), offsets


def _show(part: ModelPart) -> str:
    names = (["1"] if part.intercept else ["0"]) + [":".join(t) for t in part.terms]
    return " + ".join(names)
