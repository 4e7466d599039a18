"""lmerTest's type III hypothesis matrices: one contrast matrix L per fixed term (``get_contrasts_type3``).

For treatment-coded X (jaxlmm's coding), lmerTest (Kuznetsova et al. 2017, §5) starts from the
over-parametrised design ``rdX = [1, each term coded with indicators for every level]`` and

    L = zapsmall((X⁺ rdX)ᵀ)             (rows: rdX's columns, columns: X's),

then, terms taken by decreasing order, replaces the columns of a term contained in others (:func:`containment`)
by their residuals on the containing terms'
columns; the rows named as X's columns, transposed per term, are the hypotheses (rows with no
non-zero entry dropped).  ``X⁺ rdX`` depends only on the coding when every cell is present (X C = rdX
exactly), so it is computed on a small grid of the factors' levels (numeric variables drawn at random)
instead of the data.  A model with a single term (or a single column) uses type I contrasts, as
lmerTest does: the rows of the unit upper-triangular Doolittle factor of XᵀX.

**Rank-deficient X** (lme4 dropped aliased columns: a missing cell of an interaction, an aliased covariate,
a factor nested in another): ``X C = rdX`` no longer holds on a grid of every cell, so ``L`` comes, as in
lmerTest, from the fitted rows themselves: ``X⁺ rdX`` with the reduced X and each term's remaining columns;
a term left with no column gets no hypothesis (an all-NA row at the end of lmerTest's table), and empty
cells are reported as lmerTest's message does ("Missing cells for: ...").
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pandas as pd

from .design import Design, _coding, model_frame, model_matrix
from .errors import DataError, JaxlmmError
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


def containment(design: Design) -> dict[int, list[int]]:
    """lmerTest's ``containment``/``term_contain``: for each fixed term k, the terms containing it.  A term's
    variables are those R's ``terms`` codes by contrasts (1 in its ``factors`` attribute, not 2: a variable
    whose margin is absent from the earlier terms); term k is contained in term j when its variables are a
    strict subset of j's and both have the same plain numeric ones."""
    part = design.formula.fixed
    codes = _coding(ModelPart(part.terms, True), design.specs)  # R's terms() ignores the intercept here
    variables = [{v for v, c in code.items() if c == 1} for code in codes]

    def numerics(vs):
        return {v for v in vs if not design.specs[v].is_factor and design.specs[v].columns is None}

    return {
        k: [
            j
            for j in range(len(part.terms))
            if variables[k] < variables[j] and numerics(variables[k]) == numerics(variables[j])
        ]
        for k in range(len(part.terms))
    }


def type1_contrasts(design: Design, X: np.ndarray, columns: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """lmerTest's ``get_contrasts_type1``: rows of ``t(doolittle(XᵀX)$L)`` per term."""
    R = np.linalg.cholesky(X.T @ X).T  # XᵀX = RᵀR, so Doolittle's unit lower factor is (R / diag R)ᵀ
    U = R / np.diag(R)[:, None]
    U[np.abs(U) < 1e-6] = 0.0
    return {term_label(t): U[columns[term_label(t)]] for t in design.formula.fixed.terms}


def fitted_frame(design: Design) -> dict[str, pd.Series]:
    """The model frame of the fitted rows (R's ``model.frame(m)``), rebuilt from the data the design kept."""
    if design.data is None:
        raise JaxlmmError("type III contrasts of a rank-deficient design need the data it was built from")
    frame, rows, _ = model_frame(design.formula, design.data)
    if len(rows) != design.n:  # rows dropped for a missing weight or offset too
        if not (rows.is_unique and design.rows.is_unique):
            raise DataError("type III contrasts: the fitted rows cannot be told apart (duplicated index labels)")
        keep = rows.isin(design.rows)
        frame = {v: values[keep].reset_index(drop=True) for v, values in frame.items()}
    return frame


def _reduced_columns(full: dict[str, list[int]], full_names: list[str], names: list[str]) -> dict[str, list[int]]:
    """Each term's columns of the reduced X (lmerTest's ``term2colX`` of the matrix lme4 kept)."""
    position = {nm: j for j, nm in enumerate(names)}
    return {t: [position[full_names[j]] for j in cols if full_names[j] in position] for t, cols in full.items()}


def type3_contrasts(design: Design) -> dict[str, np.ndarray]:
    """The hypothesis matrix (rows × p) of each fixed term, lmerTest's ``get_contrasts_type3``; a term whose
    columns were all dropped as aliased gets an empty (0 × p) matrix."""
    part = design.formula.fixed
    rank_deficient = bool(design.dropped_fixef)
    frame = fitted_frame(design) if rank_deficient else _grid(design)
    X_full, full_names = model_matrix(part, frame, design.specs)
    names = list(design.fixef_names)
    if rank_deficient:
        X = design.X
        if not set(names) <= set(full_names):
            raise JaxlmmError("type III contrasts: the design's columns could not be rebuilt from its data")
    else:
        X = X_full
        if full_names != names:
            raise JaxlmmError("type III contrasts: the design's columns could not be rebuilt on the factors' grid")
    columns = _reduced_columns(term_columns(part, frame, design.specs), full_names, names)
    if X.shape[1] <= 1 or len(part.terms) <= 1:
        return type1_contrasts(design, X, columns)
    pieces = [np.ones((X.shape[0], 1))] if part.intercept else []
    rd_names = ["(Intercept)"] if part.intercept else []
    for term in part.terms:
        cols, nm = model_matrix(ModelPart((term,), False), frame, design.specs)
        pieces.append(cols)
        rd_names += nm
    rdX = np.column_stack(pieces)
    C = np.linalg.lstsq(X, rdX, rcond=None)[0]  # X⁺ rdX (X has full column rank)
    if rank_deficient:
        empty = [nm for j, nm in enumerate(rd_names) if not np.any(rdX[:, j])]
        if empty:
            warnings.warn(
                f"Missing cells for: {', '.join(empty)}. Interpret type III hypotheses with care.", stacklevel=4
            )
    elif np.max(np.abs(X @ C - rdX)) > 1e-8 * max(1.0, np.max(np.abs(rdX))):
        raise JaxlmmError("type III contrasts: the model's terms do not span their indicator codings")
    L = zapsmall(C.T)
    order = sorted(range(len(part.terms)), key=lambda k: -len(part.terms[k]))  # stable: decreasing order
    contained_in = containment(design)
    for k in order:
        other = [j for t in contained_in[k] for j in columns[term_label(part.terms[t])]]
        own = columns[term_label(part.terms[k])]
        if other and own:
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
