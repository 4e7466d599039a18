"""lmerTest's type III hypothesis matrices: one contrast matrix L per fixed term (``get_contrasts_type3``).

For treatment-coded X (jaxlmm's coding), lmerTest (Kuznetsova et al. 2017, §5) starts from the
over-parametrised design ``rdX = [1, each term coded with indicators for every level]`` and

    L = zapsmall((X⁺ rdX)ᵀ)             (rows: rdX's columns, columns: X's),

then, terms taken by decreasing order, replaces the columns of a term contained in others (its
variables a strict subset, the same numeric variables) by their residuals on the containing terms'
columns; the rows named as X's columns, transposed per term, are the hypotheses (rows with no
non-zero entry dropped).  ``X⁺ rdX`` depends only on the coding when every cell is present (X C = rdX
exactly), so it is computed on a small grid of the factors' levels (numeric variables drawn at random)
instead of the data.  A model with a single term (or a single column) uses type I contrasts, as
lmerTest does: the rows of the unit upper-triangular Doolittle factor of XᵀX.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd

from .design import Design, model_matrix
from .errors import JaxlmmError
from .formula import ModelPart

GRID_REPEATS = 3  # rows per cell of the factors' grid
MAX_GRID_ROWS = 1_000_000


def zapsmall(x: np.ndarray, digits: int = 7) -> np.ndarray:
    """R's ``zapsmall``: round to ``digits`` significant digits of the largest absolute value."""
    x = np.asarray(x, dtype=float)
    big = np.max(np.abs(x), initial=0.0)
    if not big > 0:
        return x
    return np.round(x, max(0, digits - math.ceil(math.log10(big))))


def term_label(term: tuple[str, ...]) -> str:
    return ":".join(term)


def _grid(design: Design) -> dict[str, pd.Series]:
    """One row per combination of the fixed part's factor levels (``GRID_REPEATS`` times), random
    values for its numeric variables."""
    variables = list(dict.fromkeys(v for t in design.formula.fixed.terms for v in t))
    factors = [v for v in variables if design.specs[v].is_factor]
    sizes = [len(design.specs[v].levels) for v in factors]
    rows = math.prod(sizes) * GRID_REPEATS
    if rows > MAX_GRID_ROWS:
        raise JaxlmmError(f"type III contrasts: the factors' {rows // GRID_REPEATS} cells are too many to enumerate")
    cells = list(itertools.product(*[design.specs[v].levels for v in factors])) * GRID_REPEATS
    rng = np.random.default_rng(20261126)
    frame = {v: pd.Series([c[k] for c in cells], dtype=object) for k, v in enumerate(factors)}
    for v in variables:
        if v not in frame:
            frame[v] = pd.Series(rng.standard_normal(len(cells)))
    return frame


def term_columns(part: ModelPart, frame: dict[str, pd.Series], specs) -> dict[str, list[int]]:
    """lmerTest's ``term2colX``: the columns of X each term fills (R codes a term given the ones before)."""
    out, start = {}, 1 if part.intercept else 0
    if part.intercept:
        out["(Intercept)"] = [0]
    for k, term in enumerate(part.terms):
        stop = model_matrix(ModelPart(part.terms[: k + 1], part.intercept), frame, specs)[0].shape[1]
        out[term_label(term)] = list(range(start, stop))
        start = stop
    return out


def _contains(design: Design, inner: tuple[str, ...], outer: tuple[str, ...]) -> bool:
    """lmerTest's ``term_contain``: ``inner``'s variables a strict subset of ``outer``'s, same numerics."""

    def numerics(t):
        return {v for v in t if not design.specs[v].is_factor}

    return set(inner) < set(outer) and numerics(inner) == numerics(outer)


def type1_contrasts(design: Design, X: np.ndarray, columns: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """lmerTest's ``get_contrasts_type1``: rows of ``t(doolittle(XᵀX)$L)`` per term."""
    R = np.linalg.cholesky(X.T @ X).T  # XᵀX = RᵀR, so Doolittle's unit lower factor is (R / diag R)ᵀ
    U = R / np.diag(R)[:, None]
    U[np.abs(U) < 1e-6] = 0.0
    return {term_label(t): U[columns[term_label(t)]] for t in design.formula.fixed.terms}


def type3_contrasts(design: Design) -> dict[str, np.ndarray]:
    """The hypothesis matrix (rows × p) of each fixed term, lmerTest's ``get_contrasts_type3``."""
    if design.dropped_fixef:
        raise JaxlmmError(
            "type III contrasts need a full-rank fixed-effects design; columns were dropped: "
            + ", ".join(design.dropped_fixef)
        )
    part = design.formula.fixed
    frame = _grid(design)
    X, names = model_matrix(part, frame, design.specs)
    if names != list(design.fixef_names):
        raise JaxlmmError("type III contrasts: the design's columns could not be rebuilt on the factors' grid")
    columns = term_columns(part, frame, design.specs)
    if X.shape[1] <= 1 or len(part.terms) <= 1:
        return type1_contrasts(design, X, columns)
    pieces = [np.ones((X.shape[0], 1))] if part.intercept else []
    rd_names = ["(Intercept)"] if part.intercept else []
    for term in part.terms:
        cols, nm = model_matrix(ModelPart((term,), False), frame, design.specs)
        pieces.append(cols)
        rd_names += nm
    rdX = np.column_stack(pieces)
    C = np.linalg.lstsq(X, rdX, rcond=None)[0]
    if np.max(np.abs(X @ C - rdX)) > 1e-8 * max(1.0, np.max(np.abs(rdX))):
        raise JaxlmmError("type III contrasts: the model's terms do not span their indicator codings")
    L = zapsmall(C.T)
    order = sorted(range(len(part.terms)), key=lambda k: -len(part.terms[k]))  # stable: decreasing order
    for k in order:
        term = part.terms[k]
        containing = [t for t in part.terms if _contains(design, term, t)]
        if containing:
            own = columns[term_label(term)]
            other = [j for t in containing for j in columns[term_label(t)]]
            coef = np.linalg.lstsq(L[:, other], L[:, own], rcond=None)[0]
            L[:, own] = zapsmall(L[:, own] - L[:, other] @ coef)
    try:
        rows = [rd_names.index(nm) for nm in names]
    except ValueError:
        raise JaxlmmError("type III contrasts: a coefficient has no indicator column of its term") from None
    L = L[rows]
    out = {}
    for term in part.terms:
        Lt = L[:, columns[term_label(term)]].T
        out[term_label(term)] = Lt[np.sum(np.abs(Lt), axis=1) > 1e-8]
    return out
