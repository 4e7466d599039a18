"""The GLMM front end (lme4's ``glFormula``): the response forms of a binomial or Poisson glmer, its
offsets and prior weights, then X and the random-effects design of :mod:`jaxlmm.design` unchanged.

Response forms (as R's ``binomial()$initialize`` and lme4):

* binomial: 0/1 numbers, booleans, a two-level factor (first level = failure), ``cbind(successes,
  failures)`` in the formula (trials = their sum), or a proportion with ``weights=`` the number of trials;
  internally the response is the proportion ``y`` and the prior weights ``wt`` the trials;
* Poisson: non-negative integer counts (``weights=`` optional prior weights).

Offsets: ``offset(expr)`` terms of the fixed part (summed) and the ``offset=`` argument (added).  Every
problem is a :class:`~jaxlmm.errors.DataError` raised here, before any compiled work.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .design import (
    Design,
    assemble_blocks,
    bar_terms,
    evaluate,
    factor_codes,
    factor_levels,
    is_factor,
    model_frame,
    model_matrix,
    variable_specs,
    without_aliased_columns,
)
from .errors import DataError
from .family import Family
from .formula import Formula, ModelPart

RESPONSE = ".glmm_response"  # the working frame's column holding the evaluated response


@dataclass
class GlmmDesign:
    """A GLMM's design: the LMM :class:`~jaxlmm.design.Design` (its ``y`` the proportion or count, its
    formula without the offset terms) with the prior weights, the offset and the family."""

    design: Design
    wt: np.ndarray  # (n,) prior weights (binomial: trials)
    offset: np.ndarray  # (n,) total offset
    family: Family
    formula: Formula  # as given (with cbind and offset terms)
    offset_terms: tuple[str, ...]  # the expressions inside offset(...)

    @property
    def n(self) -> int:
        return self.design.n


def _split_cbind(response: str) -> tuple[str, str] | None:
    """``cbind(a, b)`` → ("a", "b"); None for any other response."""
    text = response.replace(" ", "")
    if not (text.startswith("cbind(") and text.endswith(")")):
        return None
    inner, depth = text[6:-1], 0
    for k, ch in enumerate(inner):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            return inner[:k], inner[k + 1 :]
    raise DataError(f"cbind in the response needs two columns (successes, failures): {response!r}")


def _offset_expression(term: tuple[str, ...]) -> str | None:
    name = term[0] if len(term) == 1 else ""
    return name[7:-1] if name.startswith("offset(") and name.endswith(")") else None


def _vector(name: str, value, data: pd.DataFrame) -> np.ndarray:
    """``offset=``/``weights=``: a column name or one number per row of data, as floats (NaN kept)."""
    if isinstance(value, str):
        value = evaluate(value, data)[0].to_numpy()
    arr = np.asarray(value)
    if arr.ndim == 0:
        arr = np.full(len(data), arr)
    if arr.shape != (len(data),):
        raise DataError(f"{name}= needs one value per row of data ({len(data)}), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise DataError(f"{name}= must be numeric, not {arr.dtype}")
    return arr.astype(float)


def build_glmm_design(formula: Formula, data: pd.DataFrame, family: Family, offset=None, weights=None) -> GlmmDesign:
    """lme4's ``glFormula`` for a binomial or Poisson response (see the module docstring)."""
    if not isinstance(data, pd.DataFrame):
        raise DataError(f"data must be a pandas DataFrame, not {type(data).__name__}")
    if formula.response is None:
        raise DataError("the formula has no response (left of '~')")
    for r in formula.random:
        if any(_offset_expression(t) for t in r.effects.terms):
            raise DataError("offset() belongs in the fixed part of the formula, not inside a random-effects term")
    offsets = formula.offsets + tuple(e for t in formula.fixed.terms if (e := _offset_expression(t)) is not None)
    fixed = ModelPart(tuple(t for t in formula.fixed.terms if _offset_expression(t) is None), formula.fixed.intercept)
    work = data.reset_index(drop=True)
    work = work.assign(**{RESPONSE: np.zeros(len(work))})  # a copy; the response column is filled below
    extra: dict[str, np.ndarray] = {}
    cbind = _split_cbind(formula.response)
    if cbind is not None:
        if family.name != "binomial":
            raise DataError("cbind(successes, failures) is a binomial response; the family is " + family.name)
        for label, expr in zip(("successes", "failures"), cbind):
            values = evaluate(expr if expr in work.columns else f"I({expr})", work)[0]
            if pd.api.types.is_bool_dtype(values.dtype) or is_factor(values):
                raise DataError(f"cbind's {label} {expr!r} must be numeric counts")
            extra[label] = values.to_numpy(dtype=float)
        work[RESPONSE] = extra["successes"]
    else:
        work[RESPONSE] = evaluate(formula.response, work)[0]
    extra["offset"] = sum((evaluate(e, work)[0].to_numpy(dtype=float) for e in offsets), np.zeros(len(work)))
    if offset is not None:
        extra["offset"] = extra["offset"] + _vector("offset", offset, work)
    if weights is not None:
        extra["weights"] = _vector("weights", weights, work)
    for name, values in extra.items():
        if np.any(np.isinf(values)):
            raise DataError(f"the {name} {'are' if name.endswith('s') else 'is'} not finite in some rows")
    missing = np.any(np.column_stack([np.isnan(v) for v in extra.values()]), axis=1)
    work = work.loc[~missing]
    working = dataclasses.replace(formula, response=RESPONSE, fixed=fixed)
    transforms: dict[str, tuple] = {}
    frame, rows, n_dropped = model_frame(working, work, transforms)
    rows_kept = rows.to_numpy()
    extra = {k: v[rows_kept] for k, v in extra.items()}
    y, wt = _response(formula, frame[RESPONSE], extra, family)
    specs = variable_specs(working, frame)
    X, names, dropped = _fixed_effects(working, frame, specs)
    terms, structure, group_names, group_levels, codes, Z = assemble_blocks(
        bar_terms(working, frame, specs, len(y), allow_n=True)
    )
    design = Design(
        formula=working,
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
        rows=data.index[rows_kept],
        n_dropped=n_dropped + int(missing.sum()),
        dropped_fixef=dropped,
        transforms=transforms,
        data=data,
    )
    return GlmmDesign(design, wt, extra["offset"], family, formula, offsets)


def _fixed_effects(formula: Formula, frame, specs) -> tuple[np.ndarray, list[str], list[str]]:
    """X with aliased columns dropped, with lme4's warning (as :func:`jaxlmm.design.fixed_effects`, whose
    checks of a Gaussian response do not apply)."""
    X, names, dropped = without_aliased_columns(*model_matrix(formula.fixed, frame, specs))
    if X.shape[1] >= X.shape[0]:
        raise DataError(f"{X.shape[1]} fixed-effect coefficients for {X.shape[0]} observations")
    return X, names, dropped


def _integral(values: np.ndarray) -> bool:
    return bool(np.all(np.abs(values - np.round(values)) <= 1e-8 * np.maximum(1.0, np.abs(values))))


def _response(formula: Formula, values: pd.Series, extra: dict, family: Family) -> tuple[np.ndarray, np.ndarray]:
    """(y, wt): the proportion and trials (binomial) or the counts and prior weights (Poisson)."""
    name = formula.response
    weights = extra.get("weights")
    if weights is not None and np.any(weights < 0):
        raise DataError("weights= has negative values")
    if family.name == "binomial":
        if "successes" in extra:
            if weights is not None:
                raise DataError("weights= with a cbind(successes, failures) response is not supported")
            s, f = extra["successes"], extra["failures"]
            if np.any(s < 0) or np.any(f < 0):
                raise DataError(f"{name}: successes and failures must be non-negative counts")
            if not (_integral(s) and _integral(f)):
                raise DataError(f"{name}: non-integer numbers of successes or failures in a binomial model")
            trials = s + f
            return np.where(trials > 0, s / np.where(trials > 0, trials, 1.0), 0.0), trials
        if pd.api.types.is_bool_dtype(values.dtype):
            y = values.to_numpy(dtype=float)
        elif is_factor(values):
            levels = factor_levels(values)
            if len(levels) != 2:
                raise DataError(
                    f"the response {name!r} is a factor with {len(levels)} levels; a binomial response "
                    "needs two (the first is failure)"
                )
            y = (factor_codes(values, levels) == 1).astype(float)
        else:
            y = values.to_numpy(dtype=float)
            if np.any(~np.isfinite(y)):
                raise DataError(f"the response {name!r} has infinite values")
        if np.any(y < 0) or np.any(y > 1):
            raise DataError(f"the binomial response {name!r} must lie in [0, 1] (0/1, or a proportion with weights=)")
        wt = np.ones_like(y) if weights is None else weights
        if not _integral(y * wt):
            raise DataError(
                f"non-integer numbers of successes in {name!r}: a proportion needs weights= giving the "
                "number of trials (or use cbind(successes, failures))"
            )
        return y, wt
    if pd.api.types.is_bool_dtype(values.dtype) or is_factor(values):
        raise DataError(f"the Poisson response {name!r} must be numeric counts")
    y = values.to_numpy(dtype=float)
    if np.any(~np.isfinite(y)) or np.any(y < 0):
        raise DataError(f"the Poisson response {name!r} must be non-negative counts (negative or infinite values)")
    if not _integral(y):
        raise DataError(f"the Poisson response {name!r} has non-integer values")
    return y, np.ones_like(y) if weights is None else weights


def new_offset(gdesign: GlmmDesign, newdata: pd.DataFrame) -> np.ndarray:
    """The formula's offset terms evaluated on new data (lme4's ``predict`` does the same; an ``offset=``
    argument of the fit is not carried to new data)."""
    return sum((evaluate(e, newdata)[0].to_numpy(dtype=float) for e in gdesign.offset_terms), np.zeros(len(newdata)))
