"""Model matrices: the response, X (R's treatment contrasts), and per-term Z with the theta layout.

This is lme4's ``lFormula`` stage.  It turns a parsed :class:`~jaxlmm.formula.Formula` and a
DataFrame into plain NumPy arrays and a static :class:`Structure` describing the random-effects
blocks, which is all the numeric kernels see.

Conventions (as lme4):
* rows with a missing value in any used column are dropped (``na.omit``); unused levels are dropped;
* factor levels keep a pandas Categorical's order, otherwise they are sorted (numbers numerically);
* random-effects terms are reordered by decreasing number of levels (``mkReTrms``'s ``rev(order(nl))``),
  and theta holds, term by term, the lower triangle of each relative covariance factor column-major;
* terms with the same grouping factor are amalgamated into one block (MixedModels.jl), whose
  Lambda has structural zeros between the terms.
"""

from __future__ import annotations

import functools
import itertools
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .errors import DataError
from .formula import Formula, ModelPart

# --------------------------------------------------------------------------- static structure


@dataclass(frozen=True)
class ReBlock:
    """The random effects of one grouping factor: ``n_levels`` blocks of ``q`` columns.

    ``theta_index[i][j]`` is the position in theta of Lambda's (i, j) entry, or -1 for a zero.
    """

    n_levels: int
    q: int
    theta_index: tuple[tuple[int, ...], ...]

    def lambda_of(self, theta: np.ndarray) -> np.ndarray:
        """Λ (…, q, q) from theta (…, n_theta) in NumPy, leading axes batched (replicates)."""
        index = np.array(self.theta_index)
        theta = np.asarray(theta, dtype=float)
        return np.where(index >= 0, theta[..., np.maximum(index, 0)], 0.0)


@dataclass(frozen=True)
class Structure:
    """Hashable description of the random effects; a static argument of the compiled kernels."""

    blocks: tuple[ReBlock, ...]
    n_theta: int

    @functools.cached_property
    def parmap(self) -> np.ndarray:
        """(n_theta, 3): the block, row and column of Λ that each theta entry fills (MixedModels.jl's
        ``parmap``): the one map from θ to its place, which every per-entry quantity reads."""
        out = np.zeros((self.n_theta, 3), dtype=np.int64)
        for k, b in enumerate(self.blocks):
            index = np.array(b.theta_index).reshape(b.q, b.q)
            rows, cols = np.nonzero(index >= 0)
            out[index[rows, cols]] = np.column_stack([np.full(rows.size, k), rows, cols])
        return out

    @property
    def lower(self) -> np.ndarray:
        """lme4's bounds: 0 for entries on Lambda's diagonal, -inf elsewhere."""
        _, rows, cols = self.parmap.T
        return np.where(rows == cols, 0.0, -np.inf)

    @property
    def column_diagonal(self) -> np.ndarray:
        """For each theta entry, the theta index of the diagonal entry of its Λ column."""
        blocks, _, cols = self.parmap.T
        return np.array([self.blocks[k].theta_index[c][c] for k, c in zip(blocks, cols)], dtype=np.int64)


@dataclass(frozen=True)
class ReTerm:
    """One lme4 random-effects term, in lme4's order."""

    group: str  # the grouping factor's name, e.g. "Subject" or "batch:cask"
    columns: tuple[str, ...]  # names of its Z columns, e.g. ("(Intercept)", "Days")
    block: int  # the block (grouping factor) it belongs to
    block_columns: tuple[int, ...]  # its columns within the block
    theta_offset: int
    bar: int  # its position among the formula's random-effects terms

    @property
    def n_theta(self) -> int:
        q = len(self.columns)
        return q * (q + 1) // 2


# --------------------------------------------------------------------------- variables


@dataclass(frozen=True)
class VariableSpec:
    """How a variable is coded: numeric, or a factor with its levels."""

    name: str
    levels: tuple[str, ...] | None = None  # None for numeric

    @property
    def is_factor(self) -> bool:
        return self.levels is not None


_FUNCTIONS = {
    "log": np.log,
    "log2": np.log2,
    "log10": np.log10,
    "log1p": np.log1p,
    "exp": np.exp,
    "sqrt": np.sqrt,
    "abs": np.abs,
    "sin": np.sin,
    "cos": np.cos,
    "tan": np.tan,
    "I": lambda v: v,
    "pi": np.pi,
    "as.numeric": lambda v: np.asarray(v, dtype=float),
    "factor": lambda v: pd.Categorical(v),
    "as.factor": lambda v: pd.Categorical(v),
    "scale": lambda v: (v - np.mean(v)) / np.std(v, ddof=1),
}


class _Namespace(dict):
    def __init__(self, data: pd.DataFrame):
        super().__init__()
        self.data = data

    def __missing__(self, key):
        if key in self.data.columns:
            return self.data[key].to_numpy()
        if key in _FUNCTIONS:
            return _FUNCTIONS[key]
        raise DataError(f"unknown column {key!r} (columns are: {', '.join(map(str, self.data.columns))})")


def evaluate(name: str, data: pd.DataFrame) -> pd.Series:
    """A variable's values: a column, or an expression such as ``log(x)`` or ``I(x^2)``."""
    if name in data.columns:
        return data[name]
    if "(" not in name:
        raise DataError(f"unknown column {name!r} (columns are: {', '.join(map(str, data.columns))})")
    if "__" in name:
        raise DataError(f"cannot evaluate {name!r}: names with '__' are not allowed in a formula")
    code = name.replace("^", "**").replace("`", "")
    code = code.replace("as.numeric(", "as_numeric(").replace("as.factor(", "as_factor(")
    ns = _Namespace(data)
    ns.update(as_numeric=_FUNCTIONS["as.numeric"], as_factor=_FUNCTIONS["as.factor"])
    try:
        with np.errstate(all="ignore"):
            value = eval(compile(code, "<formula>", "eval"), {"__builtins__": {}}, ns)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of a user expression is a data error
        raise DataError(f"cannot evaluate {name!r}: {exc}") from None
    if np.ndim(value) == 0:
        value = np.full(len(data), value)
    if np.ndim(value) != 1 or len(value) != len(data):
        raise DataError(f"{name!r} does not evaluate to one value per row (shape {np.shape(value)}, {len(data)} rows)")
    out = pd.Series(value, index=data.index, name=name)
    n_new = int(pd.isna(out).sum()) - max((int(pd.isna(data[c]).sum()) for c in data.columns if c in name), default=0)
    if n_new > 0:  # R: "NaNs produced", then na.omit drops the rows
        warnings.warn(
            f"{name!r} is NaN/missing in {n_new} rows (e.g. log of a negative number): those rows are dropped",
            UserWarning,
            stacklevel=4,
        )
    return out


def is_factor(values: pd.Series) -> bool:
    return not (pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values))


def _level_label(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "TRUE" if v else "FALSE"
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


def factor_levels(values: pd.Series) -> tuple[str, ...]:
    """Levels in R's order: a Categorical's own order (unused dropped), else sorted."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        used = set(values.dropna().unique())
        return tuple(_level_label(c) for c in values.cat.categories if c in used)
    uniq = pd.unique(values.dropna())
    try:
        uniq = sorted(uniq)
    except TypeError:
        uniq = sorted(uniq, key=str)
    return tuple(dict.fromkeys(_level_label(v) for v in uniq))


def factor_codes(values: pd.Series, levels: tuple[str, ...]) -> np.ndarray:
    """Integer codes of ``values`` in ``levels``; -1 for a value not among them."""
    lookup = {lev: k for k, lev in enumerate(levels)}
    codes, uniques = pd.factorize(values)  # missing values get -1
    table = np.array([lookup.get(_level_label(u), -1) for u in uniques] + [-1], dtype=np.int64)
    return table[codes]


# --------------------------------------------------------------------------- model matrices


def _coding(part: ModelPart, specs: dict[str, VariableSpec]) -> list[dict[str, int]]:
    """R's TermCode: per term and factor, 1 = contrasts, 2 = indicator columns for all levels."""
    codes = []
    for k, term in enumerate(part.terms):
        code = {}
        for v in term:
            rest = frozenset(term) - {v}
            code[v] = 1 if not rest or any(rest <= frozenset(t) for t in part.terms[:k]) else 2
        codes.append(code)
    if not part.intercept:  # the first factor of the first term with a factor is coded fully
        for term, code in zip(part.terms, codes):
            factors = [v for v in term if specs[v].is_factor]
            if factors:
                code[factors[0]] = 2
                break
    return codes


def model_matrix(
    part: ModelPart, frame: dict[str, pd.Series], specs: dict[str, VariableSpec]
) -> tuple[np.ndarray, list[str]]:
    """R's ``model.matrix`` with treatment contrasts: columns and R-style names."""
    n = len(next(iter(frame.values()))) if frame else 0
    cols: list[np.ndarray] = []
    names: list[str] = []
    if part.intercept:
        cols.append(np.ones(n))
        names.append("(Intercept)")
    for term, code in zip(part.terms, _coding(part, specs)):
        term_cols, term_names = [None], [""]  # None: the empty product (no copy of a column of ones)
        for v in term:  # the first variable varies fastest, as in R
            spec = specs[v]
            if spec.is_factor:
                codes = factor_codes(frame[v], spec.levels)
                levels = range(1 if code[v] == 1 else 0, len(spec.levels))
                v_cols = [(codes == k).astype(float) for k in levels]
                v_names = [f"{v}{spec.levels[k]}" for k in levels]
            else:
                v_cols, v_names = [frame[v].to_numpy(dtype=float)], [v]
            term_cols = [b if a is None else a * b for b in v_cols for a in term_cols]
            term_names = [f"{a}:{b}" if a else b for b in v_names for a in term_names]
        cols += term_cols
        names += term_names
    X = np.empty((n, len(cols)))
    for j, c in enumerate(cols):
        X[:, j] = c
    return X, names


def independent_columns(X: np.ndarray, tol: float = 1e-7) -> np.ndarray:
    """Indices of a maximal set of linearly independent columns, earliest kept (R's ``qr`` pivoting).

    A column is aliased when its residual on the kept columns has norm below ``tol`` times its own.
    """
    keep: list[int] = []
    Q = np.zeros((X.shape[0], 0))
    for j in range(X.shape[1]):
        big = np.max(np.abs(X[:, j]), initial=0.0)
        col = X[:, j] / big if big > 0 else X[:, j]
        norm = np.linalg.norm(col)
        resid = col - Q @ (Q.T @ col)
        resid = resid - Q @ (Q.T @ resid)
        rnorm = np.linalg.norm(resid)
        if norm > 0 and rnorm > tol * norm:
            keep.append(j)
            Q = np.column_stack([Q, resid / rnorm])
    return np.array(keep, dtype=int)


# --------------------------------------------------------------------------- the design


@dataclass
class Design:
    """Everything the numeric stages need, as NumPy arrays, plus what the front end needs back."""

    formula: Formula
    y: np.ndarray  # (n,)
    X: np.ndarray  # (n, p)
    fixef_names: list[str]
    terms: list[ReTerm]  # lme4's order
    group_names: list[str]  # per block
    group_levels: list[tuple[str, ...]]  # per block
    codes: list[np.ndarray]  # per block, (n,) level index of each row
    Z: list[np.ndarray]  # per block, (n, q) values of the block's columns
    structure: Structure
    specs: dict[str, VariableSpec]
    rows: pd.Index  # index labels of the rows used
    n_dropped: int = 0  # rows dropped for missing values
    dropped_fixef: list[str] = field(default_factory=list)  # aliased X columns dropped
    data: pd.DataFrame | None = field(default=None, repr=False, compare=False)  # the frame given (simr's getData)

    @property
    def n(self) -> int:
        return self.y.shape[0]

    @property
    def p(self) -> int:
        return self.X.shape[1]

    def block_columns(self, k: int) -> list[str]:
        """The names of block k's random-effects columns, term by term (its Z columns and Λ's rows)."""
        return [c for t in self.terms if t.block == k for c in t.columns]


def group_values(group: tuple[str, ...], frame: dict[str, pd.Series]) -> tuple[np.ndarray, tuple[str, ...]]:
    """The grouping factor of a bar, as (codes, levels): one variable, or the interaction ``a:b`` (levels
    "a1:b1"; unused combinations dropped)."""
    parts = []
    for v in group:
        levels = factor_levels(frame[v])
        parts.append((levels, factor_codes(frame[v], levels)))
    if len(parts) == 1:
        levels, codes = parts[0]
        return codes, levels
    # R's a:b on factors: first factor slowest; unused combinations dropped
    combined = np.zeros(len(parts[0][1]), dtype=np.int64)
    for levels, codes in parts:
        combined = combined * len(levels) + codes
    used = np.unique(combined)
    labels = []
    for c in used:
        idx = []
        for levels, _ in reversed(parts):
            idx.append(levels[c % len(levels)])
            c //= len(levels)
        labels.append(":".join(reversed(idx)))
    return np.searchsorted(used, combined).astype(np.int64), tuple(labels)


MAX_ABS = 1e150  # squares of larger values overflow float64 in the cross-products


def check_numeric(name: str, values: pd.Series) -> None:
    arr = values.to_numpy(dtype=float)
    if not np.all(np.isfinite(arr)):
        raise DataError(f"column {name!r} has infinite values ({int(np.sum(~np.isfinite(arr)))} rows)")
    if arr.size and np.max(np.abs(arr)) > MAX_ABS:
        raise DataError(
            f"column {name!r} has values too large for float64 arithmetic "
            f"(max |value| {np.max(np.abs(arr)):.3g}); rescale it"
        )


def _looks_numeric(values: pd.Series) -> bool:
    """Text whose every value parses as a number (what R's read.csv would have read as numbers)."""
    text = values.dropna().astype(str)
    return bool(text.size) and bool(pd.to_numeric(text, errors="coerce").notna().all())


def clean_column(name: str, values: pd.Series, role: str) -> pd.Series:
    """Check a used variable's type for its role ("response", "covariate" or "grouping").

    Numbers held in an object column are converted to floats; dates, durations and complex numbers are
    refused.  Text that parses as numbers is refused as a response, and as a covariate with many distinct
    values (lme4 would have read such a CSV column as numbers); a covariate with few distinct values is a
    factor coded by numbers (levels "175", "185", ...) and is used as one, with a warning, as R does.
    """
    kind = f"the response {name!r}" if role == "response" else f"column {name!r}"
    dtype = values.dtype
    if (
        pd.api.types.is_datetime64_any_dtype(dtype)
        or pd.api.types.is_timedelta64_dtype(dtype)
        or isinstance(dtype, (pd.PeriodDtype, pd.IntervalDtype))
        or pd.api.types.is_complex_dtype(dtype)
    ):
        raise DataError(
            f"{kind} has dtype {dtype}; jaxlmm uses real numbers and factors: convert it "
            "(dates, for example, to days since a start)"
        )
    if dtype == object:
        inferred = pd.api.types.infer_dtype(values, skipna=True)
        if inferred in ("integer", "floating", "mixed-integer-float", "decimal"):
            return pd.to_numeric(values).astype(float)
        if inferred in ("complex", "datetime", "datetime64", "date", "timedelta", "time", "period", "interval"):
            raise DataError(f"{kind} holds {inferred} values; jaxlmm uses numbers and factors: convert it")
        if inferred in ("mixed", "mixed-integer") and role != "grouping":
            raise DataError(f"{kind} mixes numbers and text; convert it to numbers or to a pd.Categorical")
    if isinstance(dtype, pd.CategoricalDtype) or role == "grouping":
        return values
    if (dtype == object or pd.api.types.is_string_dtype(dtype)) and _looks_numeric(values):
        n_levels = values.nunique()
        if role != "response" and n_levels <= min(50, len(values) // 2):  # a factor coded by numbers
            warnings.warn(
                f"{kind} holds numbers stored as text; it is used as a factor with {n_levels} levels, "
                "as R does with character columns (use pd.to_numeric to use it as a number)",
                stacklevel=4,
            )
            return values
        example = values.dropna().iloc[0]
        advice = (
            ""
            if role == "response"
            else (f", or make it a pd.Categorical (or write factor({name})) to use it as a factor")
        )
        raise DataError(
            f"{kind} holds numbers stored as text (e.g. {example!r}): convert it with "
            f"pd.to_numeric to use it as a number{advice}"
        )
    return values


def check_response(name: str, values: pd.Series) -> None:
    if pd.api.types.is_bool_dtype(values.dtype):
        raise DataError(
            f"the response {name!r} is logical (True/False), not numeric: lmer needs a numeric "
            "response (convert it with .astype(float) if you mean 0/1)"
        )
    if isinstance(values.dtype, pd.CategoricalDtype):
        raise DataError(
            f"the response {name!r} is a factor (pandas Categorical), not numeric: lmer needs a numeric response"
        )
    if is_factor(values):
        raise DataError(f"the response {name!r} is not numeric (dtype {values.dtype}): lmer needs a numeric response")


@dataclass(frozen=True)
class BarTerm:
    """One random-effects term (bar) of the formula, evaluated on the data: its Z columns and grouping
    factor, before terms are ordered and amalgamated into blocks."""

    bar: int  # its position among the formula's random-effects terms
    group: str  # the grouping factor's name
    columns: tuple[str, ...]
    Z: np.ndarray  # (n, q)
    codes: np.ndarray  # (n,) level of each row
    levels: tuple[str, ...]

    @property
    def n_levels(self) -> int:
        return len(self.levels)


def build_design(formula: Formula, data: pd.DataFrame) -> Design:
    """lme4's ``lFormula``: the response, X, the random-effects terms and theta's layout, in stages:
    :func:`model_frame` (used columns, complete rows) → :func:`response` → :func:`variable_specs` →
    :func:`fixed_effects` (X, aliased columns dropped) → :func:`bar_terms` (Z and grouping factor per bar,
    in lme4's order) → :func:`assemble_blocks` (terms of one factor amalgamated; theta's layout).

    Every problem with the input is a :class:`~jaxlmm.errors.DataError` naming the column or term, raised
    here, before any JAX work: unknown or duplicated columns; unusable types (dates, complex numbers,
    numbers stored as text used as numbers, a logical, text or factor response); a constant response;
    infinite or overflowing values; no complete rows; no residual degrees of freedom or an exactly
    fitted response; and lme4's ``checkNlevels``/``checkZdims`` checks (a grouping factor needs at least
    2 levels and fewer levels than observations; a term needs fewer random effects than observations).

    **Rank deficiency** is handled as lme4 does (``lmerControl(check.rankX = "message+drop.cols")``): the
    columns of X that are linear combinations of earlier ones are dropped, with a warning naming them
    ("fixed-effect model matrix is rank deficient so dropping k columns / coefficients"), and the model is
    fitted without them; ``Design.dropped_fixef`` lists them.
    """
    frame, rows, n_dropped = model_frame(formula, data)
    y = response(formula, frame)
    specs = variable_specs(formula, frame)
    X, names, dropped = fixed_effects(formula, frame, specs, y)
    terms, structure, group_names, group_levels, codes, Z = assemble_blocks(bar_terms(formula, frame, specs, len(y)))
    return Design(
        formula=formula,
        y=y,
        X=X,
        fixef_names=names,
        terms=terms,
        group_names=group_names,
        group_levels=group_levels,
        codes=codes,
        Z=Z,
        structure=structure,
        specs=specs,
        rows=rows,
        n_dropped=n_dropped,
        dropped_fixef=dropped,
        data=data,
    )


def model_frame(formula: Formula, data: pd.DataFrame) -> tuple[dict[str, pd.Series], pd.Index, int]:
    """The used variables, checked for their role, on the complete rows (R's ``na.omit``): the frame, the
    index labels of the rows kept, and the number dropped."""
    if not isinstance(data, pd.DataFrame):
        raise DataError(f"data must be a pandas DataFrame, not {type(data).__name__}")
    if formula.response is None:
        raise DataError("the formula has no response (left of '~')")
    if not formula.random:
        raise DataError("the formula has no random-effects term such as (1 | group); use a linear model")
    if data.shape[0] == 0:
        raise DataError("the data have no rows")
    duplicated = sorted({str(c) for c in data.columns[data.columns.duplicated()]})
    if duplicated:
        raise DataError(f"the data have more than one column named {', '.join(map(repr, duplicated))}")
    raw = {}
    for v in formula.variables:
        role = "response" if v == formula.response else "covariate" if used_as_covariate(v, formula) else "grouping"
        raw[v] = clean_column(v, evaluate(v, data), role)
    missing = {v: pd.isna(values).to_numpy() for v, values in raw.items()}
    empty = [v for v, m in missing.items() if m.all()]
    if empty:
        raise DataError(
            f"no complete rows: {', '.join(map(repr, empty))} "
            f"{'is' if len(empty) == 1 else 'are'} missing (NaN/None) in every row"
        )
    complete = ~np.any(np.column_stack(list(missing.values())), axis=1)
    if not complete.any():
        worst = sorted(missing, key=lambda v: -missing[v].sum())[:3]
        raise DataError(
            "no complete rows: every row has a missing value in a used column (most missing: "
            + ", ".join(f"{v!r} {int(missing[v].sum())} of {len(data)}" for v in worst)
            + ")"
        )
    frame = {v: values[complete].reset_index(drop=True) for v, values in raw.items()}
    return frame, data.index[complete], int((~complete).sum())


def response(formula: Formula, frame: dict[str, pd.Series]) -> np.ndarray:
    """The response as floats: numeric, finite and not constant."""
    values = frame[formula.response]
    check_response(formula.response, values)
    check_numeric(formula.response, values)
    y = values.to_numpy(dtype=float)
    if np.ptp(y) == 0:
        raise DataError(
            f"the response {formula.response!r} is constant (= {y[0]:g} in all {len(y)} "
            "complete rows): there is nothing to model"
        )
    return y


def variable_specs(formula: Formula, frame: dict[str, pd.Series]) -> dict[str, VariableSpec]:
    """How each covariate is coded: a factor with its levels, or a (checked) number."""
    group_vars = {v for r in formula.random for v in r.group}
    specs: dict[str, VariableSpec] = {}
    for v, values in frame.items():
        if v == formula.response or (v in group_vars and not used_as_covariate(v, formula)):
            continue
        if is_factor(values):
            specs[v] = VariableSpec(v, factor_levels(values))
        else:
            check_numeric(v, values)
            specs[v] = VariableSpec(v)
    return specs


def fixed_effects(
    formula: Formula, frame: dict[str, pd.Series], specs: dict[str, VariableSpec], y: np.ndarray
) -> tuple[np.ndarray, list[str], list[str]]:
    """X with R's column names, aliased columns dropped with lme4's warning (and their names returned)."""
    X, names = model_matrix(formula.fixed, frame, specs)
    keep = independent_columns(X)
    dropped = [names[j] for j in range(len(names)) if j not in set(keep)]
    if dropped:
        warnings.warn(
            f"fixed-effect model matrix is rank deficient so dropping {len(dropped)} "
            f"column{'s' if len(dropped) > 1 else ''} / coefficient{'s' if len(dropped) > 1 else ''}: "
            + ", ".join(dropped),
            stacklevel=4,
        )
        X, names = X[:, keep], [names[j] for j in keep]
    n = len(y)
    if X.shape[1] >= n:
        raise DataError(
            f"{X.shape[1]} fixed-effect coefficients ({', '.join(names[:5])}"
            f"{', ...' if len(names) > 5 else ''}) for {n} observations: no residual is left"
        )
    if X.shape[1]:
        resid = y - X @ np.linalg.lstsq(X, y, rcond=None)[0]
        if np.linalg.norm(resid) <= 1e-10 * np.linalg.norm(y):
            raise DataError(
                f"the response {formula.response!r} is an exact linear function of the fixed "
                f"effects ({', '.join(names)}): the residual variance is 0"
            )
    return X, names, dropped


def bar_terms(formula: Formula, frame: dict[str, pd.Series], specs: dict[str, VariableSpec], n: int) -> list[BarTerm]:
    """Each random-effects term's Z and grouping factor with lme4's ``checkNlevels``/``checkZdims``, in
    lme4's order (``mkReTrms``: decreasing number of levels, ``rev(order(nl))``, when not already so)."""
    bars = []
    for k, bar in enumerate(formula.random):
        Zt, cols = model_matrix(bar.effects, frame, specs)
        codes, levels = group_values(bar.group, frame)
        nlev = len(levels)
        if nlev < 2:
            raise DataError(f"grouping factor {bar.group_name!r} has only one level; a random effect needs at least 2")
        if nlev >= n:
            raise DataError(
                f"grouping factor {bar.group_name!r} has {nlev} levels for {n} observations: the number of "
                "levels of each grouping factor must be < number of observations"
            )
        if len(cols) * nlev >= n:
            raise DataError(
                f"number of observations (={n}) <= number of random effects (={len(cols) * nlev}) for term "
                f"({' + '.join(cols)} | {bar.group_name}); the random-effects parameters and the residual "
                "variance are probably unidentifiable"
            )
        bars.append(BarTerm(k, bar.group_name, tuple(cols), Zt, codes, levels))
    nl = [b.n_levels for b in bars]
    if any(b > a for a, b in itertools.pairwise(nl)):
        order = list(reversed(sorted(range(len(bars)), key=lambda k: nl[k])))  # noqa: C413 - ties reversed, as R
        bars = [bars[k] for k in order]
    return bars


def assemble_blocks(bars: list[BarTerm]):
    """Terms of one grouping factor amalgamated into one block (blocks by decreasing number of levels),
    and theta's layout: term by term, each term's lower triangle column-major.  Returns the
    :class:`ReTerm` list, the :class:`Structure`, and per block its name, levels, codes and Z."""
    names = list(dict.fromkeys(b.group for b in bars))
    names.sort(key=lambda name: -next(b.n_levels for b in bars if b.group == name))
    block_of = {name: k for k, name in enumerate(names)}
    block_bars: list[list[BarTerm]] = [[b for b in bars if b.group == name] for name in names]
    block_q = [sum(len(b.columns) for b in members) for members in block_bars]
    index = [np.full((q, q), -1) for q in block_q]
    start = [0] * len(names)
    terms: list[ReTerm] = []
    offset = 0
    for b in bars:
        k, q = block_of[b.group], len(b.columns)
        rows, cols = np.tril_indices(q)
        order = np.lexsort((rows, cols))  # column-major
        index[k][start[k] + rows[order], start[k] + cols[order]] = offset + np.arange(rows.size)
        terms.append(ReTerm(b.group, b.columns, k, tuple(range(start[k], start[k] + q)), offset, b.bar))
        start[k] += q
        offset += rows.size
    blocks = tuple(
        ReBlock(members[0].n_levels, q, tuple(map(tuple, idx.tolist())))
        for members, q, idx in zip(block_bars, block_q, index)
    )
    return (
        terms,
        Structure(blocks, offset),
        names,
        [m[0].levels for m in block_bars],
        [m[0].codes for m in block_bars],
        [np.column_stack([b.Z for b in m]) for m in block_bars],
    )


def used_as_covariate(v: str, formula: Formula) -> bool:
    parts = [formula.fixed] + [r.effects for r in formula.random]
    return any(v in t for part in parts for t in part.terms)


def new_design_matrices(design: Design, data: pd.DataFrame) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """X, per-block Z and per-block level codes (-1 = unseen level) for new data, coded as the fit was."""
    formula = design.formula
    needed = [v for v in formula.variables if v != formula.response]
    frame = {v: evaluate(v, data).reset_index(drop=True) for v in needed}
    for v, values in frame.items():
        if pd.isna(values).any():
            raise DataError(f"column {v!r} of newdata has missing values")
        spec = design.specs.get(v)
        if spec is not None and spec.is_factor:
            unseen = set(factor_codes(values, spec.levels).tolist()) & {-1}
            if unseen:
                raise DataError(f"column {v!r} of newdata has levels not in the fitted data")
    X_all, names = model_matrix(formula.fixed, frame, design.specs)
    X = X_all[:, [names.index(nm) for nm in design.fixef_names]]
    Z = [np.zeros((len(data), b.q)) for b in design.structure.blocks]
    codes = [np.full(len(data), -1, dtype=np.int64) for _ in design.structure.blocks]
    for term in design.terms:
        bar = formula.random[term.bar]
        Zt, _ = model_matrix(bar.effects, frame, design.specs)
        k = term.block
        Z[k][:, list(term.block_columns)] = Zt
        group_codes, levels = group_values(bar.group, frame)
        codes[k] = factor_codes(pd.Series(np.asarray(levels, dtype=object)[group_codes]), design.group_levels[k])
    return X, Z, codes


def theta_scale(design: Design) -> np.ndarray:
    """Per theta entry, 1 / root mean square of the Z column of its Lambda row (1 for a zero column): the
    optimiser works in θ / scale, since slopes of covariates in large units have tiny θ."""
    blocks, rows, _ = design.structure.parmap.T
    rms = np.array([np.sqrt(np.mean(design.Z[k][:, r] ** 2)) for k, r in zip(blocks, rows)])
    return np.where(rms > 0, 1.0 / np.where(rms > 0, rms, 1.0), 1.0)


def theta_precondition(design: Design, scale: np.ndarray) -> np.ndarray:
    """A guess of the inverse Hessian's diagonal, up to a factor: ``scale² / levels`` of each theta's
    grouping factor (the criterion's curvature in a variance parameter grows with its number of levels;
    on InstEval a factor with 14 levels sits beside ones with 1,128 and 2,972)."""
    levels = np.array([design.structure.blocks[k].n_levels for k in design.structure.parmap[:, 0]])
    return scale**2 / levels


def theta_start(structure: Structure) -> np.ndarray:
    """lme4's start: 1 on Lambda's diagonal, 0 off it."""
    return np.where(np.isfinite(structure.lower), 1.0, 0.0)
