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

from .contrasts import Contrast, default_contrast, user_contrast
from .errors import DataError, JaxlmmError
from .expressions import evaluate_expression, parse_expression, uses_data_statistics
from .formula import Formula, ModelPart, RandomTerm, parse_formula

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
    """How a variable is coded: numeric (one column, or a matrix such as ``poly(x, 2)`` with ``columns``
    naming its columns), or a factor with its levels, coded in the fixed effects by ``contrast`` (the
    ``contrasts=`` argument's) or else R's default (``contr.poly`` for an ordered factor, else
    ``contr.treatment``).  Random-effects terms use R's default (lme4 builds them without ``contrasts=``)."""

    name: str
    levels: tuple[str, ...] | None = None  # None for numeric
    ordered: bool = False
    contrast: Contrast | None = None
    columns: tuple[str, ...] | None = None  # a matrix variable's column names

    @property
    def is_factor(self) -> bool:
        return self.levels is not None

    def coding(self, fixed: bool) -> Contrast:
        """The contrast of a factor in the fixed effects (``fixed``) or in a random-effects term."""
        if fixed and self.contrast is not None:
            return self.contrast
        return default_contrast(self.levels, self.ordered)


def evaluate(name: str, data: pd.DataFrame, fitted: tuple | None = None) -> tuple[pd.Series | pd.DataFrame, tuple]:
    """A variable's values and the states of its data-dependent calls (:mod:`jaxlmm.expressions`): a
    column, or an R expression such as ``log(x)``, ``I(x^2)``, ``factor(g %% 3)`` or ``poly(x, 2)``.  A
    matrix (``poly``, ``ns``, ``bs``) is a DataFrame with R's column names ``1``, ``2``, ...; ``fitted``
    (the states of the training data) evaluates on new data with the training statistics."""
    if name in data.columns:
        return data[name], ()
    if "__" in name:
        raise DataError(f"cannot evaluate {name!r}: names with '__' are not allowed in a formula")
    try:
        node = parse_expression(name)
    except JaxlmmError as exc:
        raise DataError(f"cannot evaluate {name!r}: {exc}") from None
    if node.kind == "name" and node.value not in data.columns:
        raise DataError(f"unknown column {node.value!r} (columns are: {', '.join(map(str, data.columns))})")
    try:
        value, states = evaluate_expression(node, data, fitted)
    except DataError as exc:
        raise DataError(f"cannot evaluate {name!r}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any failure of a user expression is a data error
        raise DataError(f"cannot evaluate {name!r}: {exc}") from None
    if np.ndim(value) == 0:
        value = np.full(len(data), value)
    if np.ndim(value) == 2 and np.shape(value)[1] == 1:  # R names a one-column matrix by the variable alone
        value = np.asarray(value)[:, 0]
    if np.ndim(value) not in (1, 2) or len(value) != len(data):
        raise DataError(f"{name!r} does not evaluate to one value per row (shape {np.shape(value)}, {len(data)} rows)")
    if np.ndim(value) == 2:
        out = pd.DataFrame(np.asarray(value), index=data.index, columns=[str(j + 1) for j in range(value.shape[1])])
        n_missing = int(out.isna().any(axis=1).sum())
    else:
        out = pd.Series(value, index=data.index, name=name)
        n_missing = int(pd.isna(out).sum())
    n_new = n_missing - max((int(pd.isna(data[c]).sum()) for c in data.columns if c in name), default=0)
    if n_new > 0:  # R: "NaNs produced", then na.omit drops the rows
        warnings.warn(
            f"{name!r} is NaN/missing in {n_new} rows (e.g. log of a negative number): those rows are dropped",
            UserWarning,
            stacklevel=4,
        )
    return out, states


def has_data_statistics(formula: Formula) -> bool:
    """Whether a variable of the formula depends on statistics of all rows (``scale``, ``poly``, ...)."""
    for v in formula.variables:
        try:
            node = parse_expression(v)
        except JaxlmmError:
            continue
        if uses_data_statistics(node):
            return True
    return False


def is_factor(values: pd.Series | pd.DataFrame) -> bool:
    if isinstance(values, pd.DataFrame):  # a numeric matrix (poly, ns, bs)
        return False
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
    part: ModelPart,
    frame: dict[str, pd.Series],
    specs: dict[str, VariableSpec],
    fixed: bool = True,
    n: int | None = None,
) -> tuple[np.ndarray, list[str]]:
    """R's ``model.matrix``: columns and R's names.  A factor is coded by its contrast (``fixed``: the
    fixed effects' contrasts, else R's defaults, as lme4 codes random-effects terms) or, where R's
    TermCode asks for it (a factor in an interaction without its main effect, or the first factor of a
    model without intercept), by an indicator column per level; a matrix variable gives one column per
    column (``poly(x, 2)1``, ``poly(x, 2)2``).  ``n``: the number of rows where ``frame`` may be empty (an
    intercept-only part)."""
    if n is None:
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
                if code[v] == 1:
                    contrast = spec.coding(fixed)
                    values = contrast.array[np.maximum(codes, 0)]
                    v_cols = [values[:, j] for j in range(values.shape[1])]
                    v_names = [f"{v}{suffix}" for suffix in contrast.suffixes]
                else:
                    v_cols = [(codes == k).astype(float) for k in range(len(spec.levels))]
                    v_names = [f"{v}{level}" for level in spec.levels]
            elif spec.columns is not None:
                values = frame[v].to_numpy(dtype=float)
                v_cols, v_names = [values[:, j] for j in range(values.shape[1])], [f"{v}{c}" for c in spec.columns]
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
    transforms: dict[str, tuple] = field(default_factory=dict)  # variable -> its data-dependent calls' states
    contrasts: dict | None = None  # the contrasts= argument
    weights: np.ndarray | None = None  # (n,) prior weights (lme4's weights=): Var(εᵢ) = σ²/wᵢ; None: all 1
    offset: np.ndarray | None = None  # (n,) the offset(...) terms plus offset=, added to Xβ; None: 0
    offset_argument: bool = False  # part of the offset came from offset= (lme4 does not apply it to newdata)
    data: pd.DataFrame | None = field(default=None, repr=False, compare=False)  # the frame given (simr's getData)

    @property
    def n(self) -> int:
        return self.y.shape[0]

    @property
    def sum_log_weights(self) -> float:
        """``Σ log wᵢ``: lme4's deviance and REML criterion carry ``−Σ log wᵢ`` (its ``ldW``), the log
        determinant of the residual precision ``W``; 0 without weights."""
        return 0.0 if self.weights is None else float(np.sum(np.log(self.weights)))

    def model_response(self, Y: np.ndarray) -> np.ndarray:
        """``√w ⊙ (Y − offset)`` for responses Y (n,) or (n, B): the response of the profiled criterion
        (lme4 works on the √w-scaled rows of ``[Z X y − offset]``); ``Y`` itself without weights or offset."""
        Y = np.asarray(Y, dtype=float)
        shape = (-1,) + (1,) * (Y.ndim - 1)
        if self.offset is not None:
            Y = Y - self.offset.reshape(shape)
        if self.weights is not None:
            Y = Y * np.sqrt(self.weights).reshape(shape)
        return Y

    @functools.cached_property
    def model_matrices(self) -> tuple[np.ndarray, list[np.ndarray]]:
        """X and the per-block Z with rows scaled by ``√wᵢ`` (the arrays themselves without weights)."""
        if self.weights is None:
            return self.X, self.Z
        root = np.sqrt(self.weights)[:, None]
        return root * self.X, [root * Z for Z in self.Z]

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


def build_design(
    formula: Formula, data: pd.DataFrame, contrasts: dict | None = None, weights=None, offset=None
) -> Design:
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

    ``contrasts`` maps factors of the fixed effects to a contrast (:mod:`jaxlmm.contrasts`), as lme4's
    ``lmer(..., contrasts = list(f = "contr.sum"))``.

    **Prior weights and offsets** (lme4's ``weights=``, ``offset(...)`` terms and ``offset=``): see
    :func:`weights_and_offset`; rows where either is missing are dropped with the others.
    """
    transforms: dict[str, tuple] = {}
    extra = weights_and_offset(formula, data, weights, offset)
    frame, rows, n_dropped = model_frame(formula, data, transforms, extra)
    w = _checked_weights(frame.pop(WEIGHTS, None))
    o = _checked_offset(frame.pop(OFFSET, None))
    y = response(formula, frame)
    specs = variable_specs(formula, frame, contrasts)
    X, names, dropped = fixed_effects(formula, frame, specs, y if o is None else y - o)
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
        transforms=transforms,
        contrasts=contrasts,
        weights=w,
        offset=o,
        offset_argument=offset is not None,
        data=data,
    )


WEIGHTS, OFFSET = "(weights)", "(offset)"  # their names in the model frame, as R's model.frame names them


def argument_values(what: str, value, data: pd.DataFrame) -> pd.Series:
    """A ``weights=``/``offset=`` argument as one float per row of ``data`` (NaN where missing): a column
    name (or an expression of columns such as ``1 / v``) or an array of ``len(data)`` values."""
    if isinstance(value, str):
        values = expression_values(value, data)
    else:
        if np.ndim(value) != 1:
            raise DataError(
                f"{what} must be a column name or a vector of one value per row, not shape {np.shape(value)}"
            )
        if len(value) != len(data):
            raise DataError(f"{what} has {len(value)} values for {len(data)} rows of data (variable lengths differ)")
        values = pd.Series(value.to_numpy() if isinstance(value, pd.Series) else value, index=data.index)
    return _as_float(what, values)


def _as_float(what: str, values: pd.Series) -> pd.Series:
    dtype = values.dtype
    if pd.api.types.is_bool_dtype(dtype) or isinstance(dtype, pd.CategoricalDtype):
        raise DataError(f"{what} must be numeric, not {'logical' if pd.api.types.is_bool_dtype(dtype) else 'a factor'}")
    if pd.api.types.is_complex_dtype(dtype) or not (pd.api.types.is_numeric_dtype(dtype) or dtype == object):
        raise DataError(f"{what} must be numeric, not {dtype}")
    try:
        return pd.to_numeric(values).astype(float)
    except (ValueError, TypeError):
        example = values.dropna().iloc[0] if values.notna().any() else None
        raise DataError(f"{what} must be numeric (e.g. {example!r} is not a number)") from None


def weights_and_offset(formula: Formula, data: pd.DataFrame, weights=None, offset=None) -> dict[str, pd.Series]:
    """The model frame's ``(weights)`` and ``(offset)`` columns (R's ``model.frame`` names), on all rows of
    ``data``: the prior weights, and the sum of the formula's ``offset(expr)`` terms and the ``offset=``
    argument.  Each is a column name or an array of one value per row; a missing value drops its row (as
    lme4's ``na.omit``); a type that is not numeric or a vector of the wrong length is a ``DataError``."""
    extra = {}
    if weights is not None:
        extra[WEIGHTS] = argument_values("weights", weights, data)
    parts = [_as_float(f"offset({expr})", expression_values(expr, data)) for expr in formula.offsets]
    if offset is not None:
        parts.append(argument_values("offset", offset, data))
    if parts:
        extra[OFFSET] = sum(parts[1:], parts[0])
    return extra


def expression_values(expr: str, data: pd.DataFrame) -> pd.Series:
    """The values of ``expr`` in an ``offset(expr)`` term or a weights/offset argument: a column, or any
    expression of columns (such as ``2 * x`` or ``1 / v``)."""
    return evaluate(expr if expr in data.columns else f"I({expr})", data)[0]


def _checked_weights(values: pd.Series | None) -> np.ndarray | None:
    """The prior weights of the complete rows: finite and positive.  lme4 refuses negative weights and, with a
    zero weight, returns an infinite criterion (``−Σ log wᵢ``; lme4 issue #880): refused here, with advice."""
    if values is None:
        return None
    w = values.to_numpy(dtype=float)
    bad = ~np.isfinite(w)
    if bad.any():
        raise DataError(f"weights must be finite: {int(bad.sum())} infinite values")
    if (w < 0).any():
        raise DataError(f"weights must be positive: {int((w < 0).sum())} negative values (min {w.min():g})")
    if (w == 0).any():
        raise DataError(
            f"weights must be positive: {int((w == 0).sum())} zero weights.  lme4's criterion carries "
            "-sum(log(weights)), infinite with a zero weight (lme4 returns an Inf criterion); drop those rows instead"
        )
    if w.max() > MAX_ABS or w.min() < 1.0 / MAX_ABS:
        raise DataError(f"weights span {w.min():.3g} to {w.max():.3g}: too wide for float64 arithmetic; rescale them")
    return w


def _checked_offset(values: pd.Series | None) -> np.ndarray | None:
    """The offset of the complete rows: finite."""
    if values is None:
        return None
    check_numeric("offset", values)
    return values.to_numpy(dtype=float)


def model_frame(
    formula: Formula,
    data: pd.DataFrame,
    transforms: dict[str, tuple] | None = None,
    extra: dict[str, pd.Series] | None = None,
) -> tuple[dict[str, pd.Series], pd.Index, int]:
    """The used variables, checked for their role, on the complete rows (R's ``na.omit``): the frame, the
    index labels of the rows kept, and the number dropped.  Data-dependent calls (``scale``, ``poly``, ...)
    are evaluated on all rows, as R's ``model.frame`` does, and their states are put in ``transforms``
    (variable -> states) for predictions.  ``extra`` columns (the ``(weights)`` and ``(offset)`` of
    :func:`weights_and_offset`) join the frame and its missing-value rule."""
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
        values, states = evaluate(v, data)
        if states and transforms is not None:
            transforms[v] = states
        raw[v] = values if isinstance(values, pd.DataFrame) else clean_column(v, values, role)
    raw.update(extra or {})
    missing = {v: _missing_rows(values) for v, values in raw.items()}
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


def _missing_rows(values: pd.Series | pd.DataFrame) -> np.ndarray:
    missing = pd.isna(values).to_numpy()
    return missing.any(axis=1) if missing.ndim == 2 else missing


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


def variable_specs(
    formula: Formula, frame: dict[str, pd.Series], contrasts: dict | None = None
) -> dict[str, VariableSpec]:
    """How each covariate is coded: a factor with its levels (and its ``contrasts=`` entry), a matrix
    (``poly``, ``ns``, ``bs``), or a (checked) number."""
    group_vars = {v for r in formula.random for v in r.group}
    contrasts = check_contrasts(formula, frame, contrasts)
    specs: dict[str, VariableSpec] = {}
    for v, values in frame.items():
        if v == formula.response or (v in group_vars and not used_as_covariate(v, formula)):
            continue
        if not is_factor(values):
            check_numeric(v, values)
        specs[v] = variable_spec(v, values, contrasts.get(v))
    return specs


def variable_spec(name: str, values: pd.Series | pd.DataFrame, contrast=None) -> VariableSpec:
    """One covariate's :class:`VariableSpec`; ``contrast`` is its ``contrasts=`` entry (a name or a matrix)."""
    if isinstance(values, pd.DataFrame):
        return VariableSpec(name, columns=tuple(values.columns))
    if not is_factor(values):
        return VariableSpec(name)
    levels = factor_levels(values)
    ordered = isinstance(values.dtype, pd.CategoricalDtype) and bool(values.cat.ordered)
    return VariableSpec(name, levels, ordered, None if contrast is None else user_contrast(name, contrast, levels))


def check_contrasts(formula: Formula, frame: dict[str, pd.Series], contrasts: dict | None) -> dict:
    """``contrasts=`` keyed by the formula's variables (a key may be written with or without R's
    backquotes); every key must be a factor of the fixed effects (R: "contrasts apply only to factors")."""
    if contrasts is None:
        return {}
    if not isinstance(contrasts, dict):
        raise DataError(f"contrasts must be a dict such as {{'f': 'contr.sum'}}, not {type(contrasts).__name__}")
    fixed_vars = {v for t in formula.fixed.terms for v in t}
    out = {}
    for key, value in contrasts.items():
        name = next((v for v in fixed_vars if v == key or v == f"`{key}`"), None)
        if name is None:
            raise DataError(
                f"contrasts names {key!r}, which is not a variable of the fixed effects "
                f"({', '.join(sorted(fixed_vars)) or 'none'})"
            )
        if not is_factor(frame[name]):
            raise DataError(f"contrasts apply only to factors; {key!r} is numeric")
        out[name] = value
    return out


def without_aliased_columns(X: np.ndarray, names: list[str]) -> tuple[np.ndarray, list[str], list[str]]:
    """X and its names without the columns aliased with earlier ones, and the dropped names, with lme4's
    warning ("fixed-effect model matrix is rank deficient so dropping k columns / coefficients")."""
    keep = independent_columns(X)
    dropped = [names[j] for j in range(len(names)) if j not in set(keep)]
    if dropped:
        warnings.warn(
            f"fixed-effect model matrix is rank deficient so dropping {len(dropped)} "
            f"column{'s' if len(dropped) > 1 else ''} / coefficient{'s' if len(dropped) > 1 else ''}: "
            + ", ".join(dropped),
            stacklevel=5,
        )
        X, names = X[:, keep], [names[j] for j in keep]
    return X, names, dropped


def fixed_effects(
    formula: Formula, frame: dict[str, pd.Series], specs: dict[str, VariableSpec], y: np.ndarray
) -> tuple[np.ndarray, list[str], list[str]]:
    """X with R's column names, aliased columns dropped with lme4's warning (and their names returned)."""
    X, names, dropped = without_aliased_columns(*model_matrix(formula.fixed, frame, specs))
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


def bar_terms(
    formula: Formula, frame: dict[str, pd.Series], specs: dict[str, VariableSpec], n: int, allow_n: bool = False
) -> list[BarTerm]:
    """Each random-effects term's Z and grouping factor with lme4's ``checkNlevels``/``checkZdims``, in
    lme4's order (``mkReTrms``: decreasing number of levels, ``rev(order(nl))``, when not already so).
    ``allow_n`` (lme4's ``allow.n``, which ``glFormula`` passes) accepts as many levels or random effects
    as observations (an observation-level random effect of a GLMM)."""
    limit = n + 1 if allow_n else n
    bars = []
    for k, bar in enumerate(formula.random):
        Zt, cols = model_matrix(bar.effects, frame, specs, fixed=False)
        codes, levels = group_values(bar.group, frame)
        nlev = len(levels)
        if nlev < 2:
            raise DataError(f"grouping factor {bar.group_name!r} has only one level; a random effect needs at least 2")
        if nlev >= limit:
            raise DataError(
                f"grouping factor {bar.group_name!r} has {nlev} levels for {n} observations: the number of "
                "levels of each grouping factor must be < number of observations"
            )
        if len(cols) * nlev >= limit:
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


def new_design_matrices(
    design: Design, data: pd.DataFrame, bars: set[int] | None = None, allow_new_levels: bool = False
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """X, per-block Z and per-block level codes for new data, coded as the fit was (lme4's ``predict``).

    Every data-dependent call (``scale``, ``poly``, ``ns``, ``bs``, ``mean``, ...) is evaluated with the
    training data's states (R's ``makepredictcall``), so any number of rows, one included, is coded as the
    fitted rows were.  ``bars`` are the formula's random-effects terms to include (None: all); the Z
    columns of the others are 0 and their variables need not be in ``data``.  A factor level not in the
    fit is an error naming it; so is a grouping level, unless ``allow_new_levels`` (code -1: its random
    effects are 0, lme4's ``allow.new.levels = TRUE``).
    """
    if not isinstance(data, pd.DataFrame):
        raise DataError(f"newdata must be a pandas DataFrame, not {type(data).__name__}")
    formula = design.formula
    used = [k for k in range(len(formula.random)) if bars is None or k in bars]
    parts = [formula.fixed] + [formula.random[k].effects for k in used]
    needed = [v for part in parts for t in part.terms for v in t] + [v for k in used for v in formula.random[k].group]
    frame = {}
    for v in dict.fromkeys(needed):
        values = evaluate(v, data, design.transforms.get(v))[0].reset_index(drop=True)
        if _missing_rows(values).any():
            raise DataError(f"column {v!r} of newdata has missing values")
        spec = design.specs.get(v)
        if spec is not None and spec.is_factor:
            unseen = values[factor_codes(values, spec.levels) < 0]
            if len(unseen):
                raise DataError(
                    f"factor {v!r} of newdata has levels not in the fitted data: "
                    + ", ".join(map(repr, sorted(set(map(_level_label, unseen)))[:5]))
                )
        frame[v] = values
    n = len(data)
    X_all, names = model_matrix(formula.fixed, frame, design.specs, n=n)
    X = X_all[:, [names.index(nm) for nm in design.fixef_names]]
    Z = [np.zeros((n, b.q)) for b in design.structure.blocks]
    codes = [np.full(n, -1, dtype=np.int64) for _ in design.structure.blocks]
    for term in design.terms:
        if term.bar not in used:
            continue
        bar = formula.random[term.bar]
        Zt, _ = model_matrix(bar.effects, frame, design.specs, fixed=False)
        k = term.block
        Z[k][:, list(term.block_columns)] = Zt
        group_codes, levels = group_values(bar.group, frame)
        labels = np.asarray(levels, dtype=object)[group_codes]
        codes[k] = factor_codes(pd.Series(labels), design.group_levels[k])
        if not allow_new_levels and (codes[k] < 0).any():
            new = list(dict.fromkeys(labels[codes[k] < 0]))
            raise DataError(
                f"new levels detected in newdata for grouping factor {bar.group_name!r}: "
                + ", ".join(map(str, new[:5]))
                + (", ..." if len(new) > 5 else "")
                + " (allow_new_levels=True predicts them with random effects 0)"
            )
    return X, Z, codes


def random_terms_of(design: Design, re_form: str | None) -> set[int] | None:
    """The formula's random-effects terms (bar indices) a ``re_form`` keeps (lme4's ``re.form``): None
    for all of them (``re_form=None``); none for ``"NA"`` or ``"~0"``; the terms of a formula such as
    ``"~(1 | Subject)"``, each of which must be a term of the model."""
    if re_form is None:
        return None
    if not isinstance(re_form, str):
        raise DataError(f"re_form must be None, 'NA', '~0' or a formula of random-effects terms, not {re_form!r}")
    if re_form.strip() == "NA":
        return set()
    parsed = parse_formula(re_form)
    if parsed.response is not None:
        raise DataError(f"re_form {re_form!r} must be one-sided, such as '~(1 | g)'")
    keep = set()
    for term in parsed.random:
        match = [k for k, r in enumerate(design.formula.random) if r == term]
        if not match:
            raise DataError(
                f"re_form {re_form!r} has a random-effects term not in the model ({_bar_text(term)}); the "
                f"model's are: {', '.join(_bar_text(r) for r in design.formula.random)}"
            )
        keep.update(match)
    return keep


def _bar_text(term: RandomTerm) -> str:
    effects = (["1"] if term.effects.intercept else ["0"]) + [":".join(t) for t in term.effects.terms]
    return f"({' + '.join(effects)} | {term.group_name})"


def new_offset(design: Design, data: pd.DataFrame) -> np.ndarray:
    """The offset on new data: the formula's ``offset(expr)`` terms evaluated on ``data`` (lme4's
    ``predict``); an ``offset=`` argument is not applied to new data (lme4 drops it too)."""
    out = np.zeros(len(data))
    for expr in design.formula.offsets:
        values = _as_float(f"offset({expr})", expression_values(expr, data)).to_numpy()
        if not np.all(np.isfinite(values)):
            raise DataError(f"offset({expr}) of newdata has missing or infinite values")
        out += values
    return out


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
