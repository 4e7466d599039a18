"""Power by simulation (simr's ``powerSim``/``powerCurve``), every refit batched in compiled lanes.

The model to simulate from is a fitted pilot (:class:`~jaxlmm.model.LinearMixedModel`: its estimates are
the truth unless ``fixef=``, ``covariance=`` or ``sigma=`` override them), an extended pilot
(:func:`jaxlmm.extend`), or a specification (formula, design, fixed effects, covariances, sigma).  ``nsim``
responses are simulated once, and every requested fixed-effect term is tested on each of them:

* ``"lrt"`` — the likelihood ratio of the model against the model without the term's columns, both refitted
  by ML, against χ² with as many df as the term has columns;
* ``"satterthwaite"`` — lmerTest's F test of the term's coefficients (``contestMD``: the t test for one
  column), from one REML refit per replicate with its Satterthwaite denominator df
  (:func:`~jaxlmm.inference.satterthwaite_f`);
* ``"kr"`` — pbkrtest's Kenward–Roger F test of the term's coefficients from the same REML refits
  (:func:`~jaxlmm.kenward_roger.kr_f_lanes`: the adjusted covariance, scaled F and its denominator df);
* ``"pb"`` — the LRT against a parametric-bootstrap reference distribution, ``nboot`` draws simulated once
  per term from the model with the term's coefficients set to 0, p-values by
  :func:`~jaxlmm.compare.bootstrap_p_value` (every valid draw; LRTs within the tolerance of 0 are exactly 0
  and clearly negative ones are failed replicates, as :func:`~jaxlmm.compare.pbtest`'s).

A glmer pilot (:func:`jaxlmm.glmer`, or its :func:`jaxlmm.extend`) takes the tests ``"lrt"`` and ``"z"``
(Wald) of :mod:`jaxlmm.glmm_power` instead.

A term is the formula's term (a factor or an interaction is tested as a whole: all its columns are 0), or
one coefficient by its column name.  For a term contained in a higher-order term (``a`` beside ``a:b``) the
hypothesis is "its columns are 0" under the model's (treatment) coding, not lmerTest's type III
hypothesis.  Power is the share of replicates whose test converged with p < ``alpha``, with its exact
(Clopper–Pearson) interval; failed refits and singular fits (lme4's ``isSingular``) are counted per test.

:func:`power_curve` runs this over designs of increasing size (the first k levels of ``along`` of one
simulation of the whole design, as simr's ``powerCurve`` subsets its simulations) or over values of one
coefficient.  All designs of a curve are padded to one shape, and the reduced models to the full model's
number of columns, so the whole curve runs on one compiled executable per kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.special
import scipy.stats

from .batch import CP_AXES, Y_FIELDS, BatchFit, _progress, default_chunk_size, fit_products
from .bootstrap import simulate_blocks
from .compare import bootstrap_p_value, lrt_statistic
from .crossprod import CrossProducts, crossproducts, response_products
from .design import Design, build_design, model_matrix, theta_scale
from .errors import DataError
from .extend import first_levels, pilot_data, pilot_parts
from .glmm_power import (
    check_glmm_tests,
    glmm_pilot,
    glmm_point,
    glmm_truth,
    is_glmm,
    rebuilt,
    test_glmm_point,
)
from .inference import difference_points, satterthwaite_f, varpar_derivatives, varpar_jets_lanes
from .kenward_roger import kr_f_lanes
from .model import SINGULAR_TOL
from .params import Params, theta_from_covariance
from .shapes import BATCH_FINE_FROM, Problem, pad_crossproducts, pad_response_products, padded_sizes, padded_structure

TESTS = ("lrt", "satterthwaite", "kr", "pb", "z")
TABLE_COLUMNS = ["term", "test", "df", "power", "lower", "upper", "successes", "n_valid", "n_failed", "n_singular"]


# ---------------------------------------------------------------- terms and parameters
def fixed_terms(design: Design) -> dict[str, list[int]]:
    """Each term of the fixed part (intercept excluded), named as R names it (``a:b``), with the positions of
    its columns in X (aliased columns dropped).  Term k's columns are those ``model_matrix`` adds for it,
    found on a frame of no rows (a term's coding depends on the terms before it only)."""
    empty = {v: pd.Series([], dtype=object if spec.is_factor else float) for v, spec in design.specs.items()}
    part = design.formula.fixed
    out, before = {}, int(part.intercept)
    for k, term in enumerate(part.terms):
        names = model_matrix(replace(part, terms=part.terms[: k + 1]), empty, design.specs)[1]
        columns = [design.fixef_names.index(c) for c in names[before:] if c in design.fixef_names]
        before = len(names)
        if columns:
            out[":".join(term)] = columns
    return out


def resolve_terms(design: Design, term) -> dict[str, list[int]]:
    """The terms to test: all fixed terms (``None``), or the named ones (terms such as ``"cond"`` or
    ``"a:b"`` in any order of their variables, or single coefficients such as ``"condb"``)."""
    terms = fixed_terms(design)
    if term is None:
        if not terms:
            raise DataError(f"{design.formula.text!r} has no fixed-effect term to test")
        return terms
    wanted = [term] if isinstance(term, str) else list(term)
    by_variables = {frozenset(name.split(":")): name for name in terms}
    out = {}
    for name in wanted:
        if not isinstance(name, str):
            raise DataError(f"terms are named by strings, not {name!r}")
        key = by_variables.get(frozenset(v.strip() for v in name.split(":")))
        if key is not None:
            out[key] = terms[key]
        elif name in design.fixef_names and name != "(Intercept)":
            out[name] = [design.fixef_names.index(name)]
        else:
            raise DataError(
                f"{name!r} is not a fixed-effect term of {design.formula.text!r} (terms: {', '.join(terms)}; "
                f"coefficients: {', '.join(design.fixef_names)})"
            )
    return out


def block_covariances(design: Design, params: Params) -> dict[str, np.ndarray]:
    """Per grouping factor, the covariance ``σ²ΛΛᵀ`` of its whole block (zeros between uncorrelated terms)."""
    return {
        name: params.sigma**2 * (lam := b.lambda_of(params.theta)) @ lam.T
        for name, b in zip(design.group_names, design.structure.blocks)
    }


def truth(design: Design, params: Params, fixef: dict | None, covariance: dict | None, sigma: float | None) -> Params:
    """The parameters to simulate with: ``params`` with the given fixed effects, covariances (per grouping
    factor, absolute; those not given are kept) and residual sd replaced."""
    beta = np.array(params.beta, dtype=float)
    for name, value in (fixef or {}).items():
        if name not in design.fixef_names:
            raise DataError(f"fixef names {name!r}, not a coefficient of the model ({', '.join(design.fixef_names)})")
        beta[design.fixef_names.index(name)] = float(value)
    unknown = set(covariance or {}) - set(design.group_names)
    if unknown:
        raise DataError(f"covariance names {sorted(unknown)}, not grouping factors ({', '.join(design.group_names)})")
    new_sigma = float(params.sigma if sigma is None else sigma)
    if not np.isfinite(new_sigma) or new_sigma <= 0:
        raise DataError(f"sigma must be a positive number, not {sigma!r}")
    covariances = {**block_covariances(design, params), **(covariance or {})}
    return Params(beta, theta_from_covariance(design, covariances, new_sigma), new_sigma)


def _check_lmm_tests(tests: tuple[str, ...]) -> None:
    if "z" in tests:
        raise DataError('test "z" (Wald z) is for glmer fits; for lmer use "satterthwaite", "kr", "lrt" or "pb"')


def _check_settings(tests, nsim, alpha, nboot) -> tuple[str, ...]:
    tests = (tests,) if isinstance(tests, str) else tuple(tests)
    bad = [t for t in tests if t not in TESTS]
    if bad or not tests:
        raise DataError(f"test must be one of {TESTS} (or a list of them), not {bad[0] if bad else tests!r}")
    for name, value in (("nsim", nsim), ("nboot", nboot)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise DataError(f"{name} must be a positive integer, not {value!r}")
    if not 0 < alpha < 1:
        raise DataError(f"alpha must be between 0 and 1, not {alpha!r}")
    return tuple(dict.fromkeys(tests))


# ---------------------------------------------------------------- the binomial interval
def clopper_pearson(successes, n, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """The exact binomial interval (Clopper & Pearson 1934; R's ``binom.test``, which simr prints):
    ``[B(α/2; x, n−x+1), B(1−α/2; x+1, n−x)]`` with B the beta quantile, 0 and 1 at the ends."""
    x, n = np.asarray(successes, dtype=float), np.asarray(n, dtype=float)
    a = (1 - level) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        lower = np.where(x > 0, scipy.stats.beta.ppf(a, x, n - x + 1), 0.0)
        upper = np.where(x < n, scipy.stats.beta.ppf(1 - a, x + 1, n - x), 1.0)
    return np.where(n > 0, lower, np.nan), np.where(n > 0, upper, np.nan)


# ---------------------------------------------------------------- results
@dataclass(frozen=True)
class PowerResult:
    """Power of each test of each term from one set of simulations.

    ``table``: one row per (term, test): numerator ``df``, ``power`` with its Clopper–Pearson interval
    (``lower``, ``upper`` at ``level``), ``successes`` (p < alpha), ``n_valid`` (converged refits),
    ``n_failed``, ``n_singular`` (singular fits among the valid ones).  ``p_values[(term, test)]`` holds all
    ``nsim`` p-values (NaN where a refit failed).

    A result of one term and one test also answers the keys of the earlier dict result:
    ``res["power"]``, ``"se"``, ``"n_valid"``, ``"n_failed"``, ``"p_values"`` (the valid ones).
    """

    table: pd.DataFrame
    p_values: dict[tuple[str, str], np.ndarray]
    nsim: int
    alpha: float
    level: float

    def __getitem__(self, key: str):
        if len(self.table) != 1:
            raise KeyError(f"{key!r}: this result has {len(self.table)} (term, test) rows; read .table")
        row = self.table.iloc[0]
        if key == "se":
            return float(np.sqrt(row.power * (1 - row.power) / max(row.n_valid, 1)))
        if key == "p_values":
            p = next(iter(self.p_values.values()))
            return p[np.isfinite(p)]
        if key in ("power",):
            return float(row[key])
        if key in ("n_valid", "n_failed", "n_singular", "successes"):
            return int(row[key])
        raise KeyError(key)

    def power(self, term: str | None = None, test: str | None = None) -> float:
        """The power of one (term, test) row (the only one when not named)."""
        rows = self.table
        if term is not None:
            rows = rows[rows.term == term]
        if test is not None:
            rows = rows[rows.test == test]
        if len(rows) != 1:
            raise KeyError(f"no single row for term={term!r}, test={test!r}")
        return float(rows.power.iloc[0])

    def plot(self, ax=None):
        """Power per term and test with its interval (matplotlib; returns the Figure)."""
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(6, 0.5 + 0.45 * len(self.table))) if ax is None else (ax.figure, ax)
        labels = [f"{t} ({s})" for t, s in zip(self.table.term, self.table.test)]
        y = np.arange(len(labels))[::-1]
        err = np.vstack([self.table.power - self.table.lower, self.table.upper - self.table.power])
        ax.errorbar(self.table.power, y, xerr=err, fmt="o", color="black", capsize=3)
        ax.set_yticks(y, labels)
        ax.set_xlim(0, 1)
        ax.set_xlabel(f"power at alpha {self.alpha:g} ({self.level:.0%} interval, {self.nsim} simulations)")
        ax.axvline(0.8, color="grey", linestyle=":", linewidth=1)
        fig.tight_layout()
        return fig

    def __repr__(self) -> str:
        return (
            f"Power by simulation ({self.nsim} simulations, alpha {self.alpha:g}):\n{self.table.to_string(index=False)}"
        )


@dataclass(frozen=True)
class PowerCurve:
    """Power over design sizes or coefficient values: ``table`` has the curve's variable (``by``) first,
    then :class:`PowerResult`'s columns (and ``nobs``); ``results`` the result at each point."""

    table: pd.DataFrame
    by: str
    results: list[PowerResult]

    def plot(self, ax=None):
        """Power against ``by`` with Clopper–Pearson bands, one line per (term, test) (matplotlib Figure)."""
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(6, 4)) if ax is None else (ax.figure, ax)
        for (term, test), rows in self.table.groupby(["term", "test"], sort=False):
            x = rows[self.by].to_numpy(dtype=float)
            line = ax.plot(x, rows.power, marker="o", label=f"{term} ({test})")[0]
            ax.fill_between(x, rows.lower, rows.upper, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.axhline(0.8, color="grey", linestyle=":", linewidth=1)
        ax.set_ylim(0, 1)
        ax.set_xlabel(self.by)
        ax.set_ylabel("power")
        ax.legend(frameon=False)
        fig.tight_layout()
        return fig

    def __repr__(self) -> str:
        return f"Power curve over {self.by}:\n{self.table.to_string(index=False)}"


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError('plotting power needs matplotlib: pip install "jaxlmm[plot]"') from exc
    return plt


# ---------------------------------------------------------------- the engine
@dataclass(frozen=True)
class Point:
    """One design of a power analysis, with the problems its tests fit: the full model and, per term,
    the model without the term's columns, all padded to one shape (``lanes``)."""

    design: Design
    params: Params
    full: Problem
    reduced: dict[str, Problem]
    terms: dict[str, list[int]]


def drop_columns(cp: CrossProducts, keep: np.ndarray) -> CrossProducts:
    """The cross-products of the design whose X keeps only the columns ``keep``."""
    return cp._replace(
        A1X=cp.A1X[:, :, keep],
        AXX=cp.AXX[np.ix_(keep, keep)],
        AXy=cp.AXy[keep],
        A2X=cp.A2X[:, keep],
        p=np.asarray(float(keep.size)),
    )


def make_points(items: list[tuple[Design, Params]], terms: dict[str, list[int]]) -> list[Point]:
    """The :class:`Point` of each (design, params), their problems padded to the batch grid's bucket of
    the largest design of the same random-effects layout, the reduced models to the full ``p`` (inert
    columns), so that one compiled executable of each kernel serves every point and every model."""
    raw = [crossproducts(d.y, d.X, d.codes, d.Z, d.structure) for d, _ in items]
    layouts: dict[tuple, list[int]] = {}
    for k, (d, _) in enumerate(items):
        layouts.setdefault(tuple((b.q, b.theta_index) for b in d.structure.blocks), []).append(k)
    targets = {}
    for members in layouts.values():
        structures = [padded_structure(items[k][0].structure, BATCH_FINE_FROM) for k in members]
        blocks = tuple(
            replace(bs[0], n_levels=max(b.n_levels for b in bs)) for bs in zip(*(s.blocks for s in structures))
        )
        sizes = np.max([padded_sizes(raw[k], BATCH_FINE_FROM) for k in members], axis=0)
        for k in members:
            targets[k] = (replace(structures[0], blocks=blocks), *map(int, sizes))

    def problem(design, cp, k):
        target, nnz, npairs, p = targets[k]
        return Problem(design, pad_crossproducts(cp, design.structure, target, nnz, npairs, p), target)

    points = []
    for k, (d, params) in enumerate(items):
        reduced = {}
        for name, columns in terms.items():
            keep = np.setdiff1d(np.arange(d.p), columns)
            small = replace(d, X=d.X[:, keep], fixef_names=[d.fixef_names[j] for j in keep])
            reduced[name] = problem(small, drop_columns(raw[k], keep), k)
        points.append(Point(d, params, problem(d, raw[k], k), reduced, terms))
    return points


def singular_fits(fits: BatchFit, design: Design) -> np.ndarray:
    """lme4's ``isSingular`` per replicate: a θ entry with lower bound 0 below 1e-4."""
    zero = design.structure.lower == 0
    return np.any(fits.theta[:, zero] < SINGULAR_TOL, axis=1)


def varpar_lanes(problem: Problem, fits: BatchFit, products: dict, fallback: Params):
    """lmerTest's ``vcov_beta``, ``Jac_list`` and ``vcov_varpar`` (:func:`~jaxlmm.inference.varpar_derivatives`)
    of every REML refit, in compiled calls of a fixed number of lanes; failed refits are evaluated at
    ``fallback`` (their tests are not counted)."""
    design = problem.design
    good = np.all(np.isfinite(fits.theta), axis=1) & np.isfinite(fits.sigma) & (fits.sigma > 0)
    theta = np.where(good[:, None], fits.theta, fallback.theta)
    sigma = np.where(good, fits.sigma, fallback.sigma)
    points, h = difference_points(theta, sigma, theta_scale(design))
    padded = pad_response_products(products, design.structure, problem.structure, problem.cp.AXX.shape[0])
    size = default_chunk_size(problem.structure, problem.cp.AXX.shape[0])
    B = theta.shape[0]
    gradients, vcov_unscaled = [], []
    for first in range(0, B, size):
        lanes = np.arange(first, first + size) % B  # the last call wraps round (fixed shape)
        cp = problem.cp._replace(**{f: jnp.asarray(padded[f][lanes]) for f in Y_FIELDS})
        g, v = jax.device_get(varpar_jets_lanes(points[lanes], cp, problem.structure, True, CP_AXES))
        gradients.append(g)
        vcov_unscaled.append(v)
    return varpar_derivatives(
        np.concatenate(gradients)[:B], np.concatenate(vcov_unscaled)[:B], sigma, h, design.p
    ), good


def _reduced_products(products: dict, columns: list[int], p: int) -> dict:
    keep = np.setdiff1d(np.arange(p), columns)
    return {**products, "AXy": products["AXy"][:, keep]}


def _simulated(design: Design, params: Params, nsim: int, seed, subsets: list[tuple[Design, np.ndarray | None]]):
    """Per subset (design, row positions or None for all rows): the y-dependent products of ``nsim``
    responses simulated once from ``design`` (each subset sees its rows of the same responses)."""
    parts = [[] for _ in subsets]
    for Y in simulate_blocks(design, params, nsim, seed):
        for part, (d, rows) in zip(parts, subsets):
            part.append(response_products(Y if rows is None else Y[rows], d.X, d.codes, d.Z, d.structure))
    return [{k: np.concatenate([p[j] for p in part]) for j, k in enumerate(Y_FIELDS)} for part in parts]


def test_point(
    point: Point,
    products: dict,
    tests: tuple[str, ...],
    nboot: int,
    seed,
    progress,
) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For each (term, test): p-values, converged and singular flags of the simulated responses whose
    ``products`` are given (:data:`~jaxlmm.batch.Y_FIELDS`, replicate first)."""
    d, theta, out = point.design, point.params.theta, {}

    def ml(problem, prods):
        fits = fit_products(problem, theta, prods, reml=False, progress=progress, lanes=problem).gathered()
        return fits, singular_fits(fits, problem.design)

    if "lrt" in tests or "pb" in tests:
        full, full_singular = ml(point.full, products)
        for name, columns in point.terms.items():
            small, small_singular = ml(point.reduced[name], _reduced_products(products, columns, d.p))
            lrt, negative = lrt_statistic(small.criterion, full.criterion)  # within the tolerance of 0: 0
            ok = full.converged & small.converged & ~negative  # a clearly negative LRT is a fitting failure
            singular = full_singular | small_singular
            if "lrt" in tests:
                out[(name, "lrt")] = (scipy.special.chdtrc(len(columns), lrt), ok, singular)
            if "pb" in tests:
                null = point.params._replace(beta=np.where(np.isin(np.arange(d.p), columns), 0.0, point.params.beta))
                (null_products,) = _simulated(d, null, nboot, None if seed is None else seed + 1, [(d, None)])
                ref_full, _ = ml(point.full, null_products)
                ref_small, _ = ml(point.reduced[name], _reduced_products(null_products, columns, d.p))
                reference, failed = lrt_statistic(ref_small.criterion, ref_full.criterion)
                good = ref_full.converged & ref_small.converged & ~failed
                out[(name, "pb")] = (bootstrap_p_value(reference[good], lrt), ok, singular)
    if "satterthwaite" in tests or "kr" in tests:
        fits = fit_products(point.full, theta, products, reml=True, progress=progress, lanes=point.full).gathered()
        singular = singular_fits(fits, d)
    if "satterthwaite" in tests:
        (V, dV, A), finite = varpar_lanes(point.full, fits, products, point.params)
        for name, columns in point.terms.items():
            F, ddf = satterthwaite_f(V, dV, A, fits.beta, np.eye(d.p)[columns])
            with np.errstate(invalid="ignore"):
                p = scipy.special.fdtrc(len(columns), ddf, F)
            out[(name, "satterthwaite")] = (p, fits.converged & finite & np.isfinite(p), singular)
    if "kr" in tests:
        for name, columns in point.terms.items():
            F, ddf = kr_lanes(d, fits, point.params, np.eye(d.p)[columns])
            with np.errstate(invalid="ignore"):
                p = scipy.special.fdtrc(len(columns), ddf, F)
            out[(name, "kr")] = (p, fits.converged & np.isfinite(p), singular)
    return out


def kr_lanes(design: Design, fits: BatchFit, fallback: Params, L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pbkrtest's Kenward–Roger F (scaled) and denominator df of ``Lβ = 0`` for every REML refit
    (:func:`~jaxlmm.kenward_roger.kr_f_lanes`); failed refits are evaluated at ``fallback`` and come back NaN."""
    good = np.all(np.isfinite(fits.theta), axis=1) & np.isfinite(fits.sigma) & (fits.sigma > 0)
    good &= np.all(np.isfinite(fits.beta), axis=1)
    theta = np.where(good[:, None], fits.theta, fallback.theta)
    sigma = np.where(good, fits.sigma, fallback.sigma)
    beta = np.where(good[:, None], fits.beta, fallback.beta)
    F, ddf, _ = kr_f_lanes(theta, sigma, beta, design, L)
    return np.where(good, F, np.nan), np.where(good, ddf, np.nan)


def result_table(
    outcomes: dict, terms: dict[str, list[int]], tests: tuple[str, ...], nsim: int, alpha: float, level: float
) -> PowerResult:
    rows, p_values = [], {}
    for name, columns in terms.items():
        for test in tests:
            p, ok, singular = outcomes[(name, test)]
            successes, n_valid = int(np.sum(ok & (p < alpha))), int(ok.sum())
            lower, upper = clopper_pearson(successes, n_valid, level)
            rows.append(
                (
                    name,
                    test,
                    len(columns),
                    successes / n_valid if n_valid else np.nan,
                    float(lower),
                    float(upper),
                    successes,
                    n_valid,
                    nsim - n_valid,
                    int(np.sum(singular & ok)),
                )
            )
            p_values[(name, test)] = np.where(ok, p, np.nan)
    return PowerResult(pd.DataFrame(rows, columns=TABLE_COLUMNS), p_values, nsim, alpha, level)


# ---------------------------------------------------------------- the public functions
def _spec_model(formula: str, data: pd.DataFrame, fixef, covariance, sigma) -> tuple[Design, Params]:
    """The design and parameters of a specified model (the response column is a placeholder)."""
    from .formula import parse_formula

    parsed = parse_formula(formula)
    if fixef is None or covariance is None or sigma is None:
        raise DataError("a specified model needs fixef=, covariance= and sigma= (or pass a fitted model)")
    data = data.copy()
    data[parsed.response] = np.random.default_rng(0).standard_normal(len(data))  # placeholder response
    design = build_design(parsed, data)
    missing = set(design.fixef_names) - set(fixef)
    if missing:
        raise DataError(f"fixef lacks values for {sorted(missing)}")
    beta = np.array([fixef[k] for k in design.fixef_names], dtype=float)
    return design, Params(beta, theta_from_covariance(design, covariance, sigma), float(sigma))


def power(
    model,
    data: pd.DataFrame | None = None,
    fixef: dict[str, float] | None = None,
    covariance: dict[str, np.ndarray] | None = None,
    sigma: float | None = None,
    term: str | Sequence[str] | None = None,
    test: str | Sequence[str] = "lrt",
    nsim: int = 1000,
    alpha: float = 0.05,
    seed: int | None = None,
    nboot: int = 1000,
    progress: bool | None = None,
    level: float = 0.95,
) -> PowerResult:
    """simr's ``powerSim``: the power of ``test`` (one of :data:`TESTS`, or several) for each fixed-effect
    ``term`` (None: every term) from ``nsim`` simulations of ``model``.

    ``model`` is a fitted model (:func:`jaxlmm.lmer`) or :func:`jaxlmm.extend`'s result, whose parameters
    are the truth except where ``fixef`` (coefficient name -> value), ``covariance`` (grouping factor ->
    its random effects' covariance matrix; absolute, so that a new ``sigma`` leaves it as it is) or
    ``sigma`` replace them; or a formula, with ``data`` the design (its response column is ignored) and
    ``fixef``, ``covariance``, ``sigma`` all given.  Returns a :class:`PowerResult`.
    """
    tests = _check_settings(test, nsim, alpha, nboot)
    if is_glmm(model):
        if data is not None:
            raise DataError("data= goes with a formula; a model simulates on its own data (see jaxlmm.extend)")
        start, x = glmm_pilot(model)
        check_glmm_tests(tests)
        x = glmm_truth(start, x, fixef, covariance, sigma)
        terms = resolve_terms(start.design, term)
        point = glmm_point(start, x, terms, tests)
        outcomes = test_glmm_point(point, start.simulate(nsim, seed, x), tests)
        return result_table(outcomes, terms, tests, nsim, alpha, level)
    _check_lmm_tests(tests)
    if isinstance(model, str):
        if not isinstance(data, pd.DataFrame):
            raise DataError("a formula needs its design as data= (a DataFrame)")
        design, params = _spec_model(model, data, fixef, covariance, sigma)
    else:
        if data is not None:
            raise DataError("data= goes with a formula; a model simulates on its own data (see jaxlmm.extend)")
        design, params = pilot_parts(model)
        params = truth(design, params, fixef, covariance, sigma)
    terms = resolve_terms(design, term)
    (point,) = make_points([(design, params)], terms)
    (products,) = _simulated(design, params, nsim, seed, [(design, None)])
    outcomes = test_point(point, products, tests, nboot, seed, progress)
    return result_table(outcomes, terms, tests, nsim, alpha, level)


def default_breaks(levels: int) -> list[int]:
    """simr's ``tidyss``: every count from 3 when there are at most 10, else 10 counts from 3 to all."""
    if levels - 3 + 1 <= 10:
        return list(range(min(3, levels), levels + 1))
    return sorted({int(v) for v in np.round(np.linspace(3, levels, 10))})


def check_curve_axis(design: Design, along, coefficient, values) -> None:
    """A power curve runs along one axis: design sizes (``along=``) or one coefficient's ``values=``."""
    if (along is None) == (coefficient is None):
        raise DataError("give along= (sizes, with breaks=) or coefficient= (with values=)")
    if coefficient is not None:
        if coefficient not in design.fixef_names:
            raise DataError(f"{coefficient!r} is not a coefficient of the model ({', '.join(design.fixef_names)})")
        if values is None or len(values) == 0:
            raise DataError("coefficient= needs the values= to try")


def power_curve(
    model,
    make_data: Callable[[int], pd.DataFrame] | None = None,
    n_groups: list[int] | None = None,
    *,
    along: str | None = None,
    breaks: Sequence[int] | None = None,
    coefficient: str | None = None,
    values: Sequence[float] | None = None,
    fixef: dict[str, float] | None = None,
    covariance: dict[str, np.ndarray] | None = None,
    sigma: float | None = None,
    term: str | Sequence[str] | None = None,
    test: str | Sequence[str] = "lrt",
    nsim: int = 1000,
    alpha: float = 0.05,
    seed: int | None = None,
    nboot: int = 1000,
    progress: bool | None = None,
    level: float = 0.95,
) -> PowerCurve | pd.DataFrame:
    """simr's ``powerCurve``: power over design sizes or over the value of one coefficient.

    * ``power_curve(model, along="subj", breaks=[10, 20, 30, 40])``: the designs of the first k levels of
      ``along`` (in order of appearance) for each k in ``breaks`` (default: simr's, from 3 to all), tested
      on the matching rows of ``nsim`` simulations of the whole design (simr's subsetting; extend the model
      first for more levels than the pilot has: :func:`jaxlmm.extend`);
    * ``power_curve(model, coefficient="condb", values=[0.1, 0.2, 0.4])``: the model with that coefficient
      set to each value, on the same random draws (common random numbers);

    ``term``, ``test``, ``fixef``, ``covariance``, ``sigma`` as in :func:`power` (``term`` default: the
    term of ``coefficient`` when given, else every term).  Returns a :class:`PowerCurve`.

    The earlier form ``power_curve(formula, make_data, n_groups, fixef=, covariance=, sigma=, term=, ...)``
    (designs from ``make_data(g)``) still returns its DataFrame (n_groups, power, se, n_valid, n_failed).
    """
    if isinstance(model, str):
        if make_data is None or n_groups is None:
            raise DataError("a formula's power curve needs make_data and n_groups")
        rows = []
        for g in n_groups:
            res = power(model, make_data(g), fixef, covariance, sigma, term, test, nsim, alpha, seed, nboot, progress)
            rows.append({"n_groups": g, **{k: res[k] for k in ("power", "se", "n_valid", "n_failed")}})
        return pd.DataFrame(rows)
    if make_data is not None or n_groups is not None:
        raise DataError("make_data and n_groups go with a formula; a model's curve takes along= or coefficient=")
    tests = _check_settings(test, nsim, alpha, nboot)
    if is_glmm(model):
        return _glmm_curve(model, along, breaks, coefficient, values, fixef, covariance, sigma, term, tests, nsim,
                           alpha, seed, progress, level)  # fmt: skip
    _check_lmm_tests(tests)
    design, params = pilot_parts(model)
    params = truth(design, params, fixef, covariance, sigma)
    check_curve_axis(design, along, coefficient, values)
    if coefficient is not None:
        j = design.fixef_names.index(coefficient)
        terms = resolve_terms(design, coefficient if term is None else term)
        settings = [
            (float(v), design, params._replace(beta=np.where(np.arange(design.p) == j, float(v), params.beta)))
            for v in values
        ]
        by = coefficient
    else:
        data = pilot_data(model)
        data = (data.loc[design.rows] if design.n_dropped else data).reset_index(drop=True)  # the design's rows
        count = len(pd.unique(data[along].dropna())) if along in data.columns else 0
        breaks = default_breaks(count) if breaks is None else list(breaks)
        subsets = [first_levels(data, along, int(k)) for k in breaks]
        designs = [build_design(design.formula, data.iloc[rows]) for rows in subsets]
        covariances = block_covariances(design, params)
        settings = []
        for k, d in zip(breaks, designs):
            if d.fixef_names != design.fixef_names:
                raise DataError(f"the first {k} levels of {along!r} do not estimate all fixed effects")
            settings.append(
                (int(k), d, Params(params.beta, theta_from_covariance(d, covariances, params.sigma), params.sigma))
            )
        terms = resolve_terms(design, term)
        by = along
    points = make_points([(d, p) for _, d, p in settings], terms)
    if coefficient is None:
        all_products = _simulated(design, params, nsim, seed, [(d, rows) for d, rows in zip(designs, subsets)])
    bar = _progress(progress, len(points), "power curve")
    frames, results = [], []
    for k, ((x, d, p), point) in enumerate(zip(settings, points)):
        if coefficient is None:
            products = all_products[k]
        else:
            (products,) = _simulated(d, p, nsim, seed, [(d, None)])
        res = result_table(test_point(point, products, tests, nboot, seed, False), terms, tests, nsim, alpha, level)
        results.append(res)
        frames.append(res.table.assign(**{by: x, "nobs": d.n}))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    table = pd.concat(frames, ignore_index=True)
    return PowerCurve(table[[by, "nobs", *TABLE_COLUMNS]], by, results)


def _glmm_curve(model, along, breaks, coefficient, values, fixef, covariance, sigma, term, tests, nsim, alpha, seed,
                progress, level) -> PowerCurve:  # fmt: skip
    """:func:`power_curve` of a glmer pilot (or its extension): the same sizes or coefficient values, the
    tests of :mod:`jaxlmm.glmm_power`."""
    start, x = glmm_pilot(model)
    check_glmm_tests(tests)
    x = glmm_truth(start, x, fixef, covariance, sigma)
    design, n_theta = start.design, start.structure.n_theta
    check_curve_axis(design, along, coefficient, values)
    if coefficient is not None:
        j = n_theta + design.fixef_names.index(coefficient)
        terms = resolve_terms(design, coefficient if term is None else term)
        point = glmm_point(start, x, terms, tests)
        settings = []
        for v in values:
            xv = x.copy()
            xv[j] = float(v)
            settings.append((float(v), replace(point, x=xv), None))
        by = coefficient
    else:
        data = design.data
        data = (data.loc[design.rows] if design.n_dropped else data).reset_index(drop=True)  # the design's rows
        count = len(pd.unique(data[along].dropna())) if along in data.columns else 0
        breaks = default_breaks(count) if breaks is None else list(breaks)
        subsets = [first_levels(data, along, int(k)) for k in breaks]
        terms = resolve_terms(design, term)
        settings = []
        for k, rows in zip(breaks, subsets):
            sub = start if rows.size == design.n else rebuilt(start, data.iloc[rows])
            settings.append((int(k), glmm_point(sub, x, terms, tests), rows))
        by = along
        Y_all = start.simulate(nsim, seed, x)
    bar = _progress(progress, len(settings), "power curve")
    frames, results = [], []
    for value, point, rows in settings:
        Y = start.simulate(nsim, seed, point.x) if rows is None else Y_all[rows]
        res = result_table(test_glmm_point(point, Y, tests), terms, tests, nsim, alpha, level)
        results.append(res)
        frames.append(res.table.assign(**{by: value, "nobs": point.full.nobs}))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    table = pd.concat(frames, ignore_index=True)
    return PowerCurve(table[[by, "nobs", *TABLE_COLUMNS]], by, results)
