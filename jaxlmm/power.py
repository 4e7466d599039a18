"""Power by simulation (simr's ``powerSim``/``powerCurve``), batched.

The model is given by its formula, fixed effects, random-effects covariances, residual sd and a design
(a DataFrame of covariates and grouping columns; the response column is ignored).  ``nsim`` responses are
simulated from it and the chosen test of one fixed-effect term is applied to each:

* ``"lrt"`` — likelihood ratio of the model against the model without the term, both by ML, χ² p-value;
* ``"pb"`` — the same statistic against a parametric-bootstrap reference distribution simulated once from
  the null model with the given parameters (``nboot`` draws), p-values by
  :func:`~jaxlmm.compare.bootstrap_p_value` (every valid draw, LRTs within the tolerance of 0 exactly 0,
  clearly negative LRTs counted as failed replicates, :mod:`jaxlmm.compare`);
* ``"satterthwaite"`` — lmerTest's t test of the term's coefficient (single-column terms).

Power is the share of converged replicates with p < alpha, with its binomial standard error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.special

from .batch import CP_AXES, Y_FIELDS, BatchFit, default_chunk_size, fit_products
from .bootstrap import simulated_products
from .compare import bootstrap_p_value, simulated_lrt
from .design import Design, build_design, theta_scale
from .errors import DataError
from .formula import ModelPart, parse_formula
from .hosts import gather
from .inference import difference_points, satterthwaite_from_jets, varpar_jets_lanes
from .params import Params, theta_from_covariance
from .shapes import Problem, pad_response_products, padded_problem

TESTS = ("lrt", "pb", "satterthwaite")


def _drop_term(design: Design, term: str, data: pd.DataFrame) -> Design:
    parts = tuple(t for t in design.formula.fixed.terms if ":".join(t) != term)
    if len(parts) == len(design.formula.fixed.terms):
        raise DataError(f"term {term!r} is not a fixed-effect term of {design.formula.text!r}")
    reduced = replace(
        design.formula,
        fixed=ModelPart(parts, design.formula.fixed.intercept),
        text=f"{design.formula.text} without {term}",
    )
    return build_design(reduced, data)


def power(
    formula: str,
    data: pd.DataFrame,
    fixef: dict[str, float],
    covariance: dict[str, np.ndarray],
    sigma: float,
    term: str,
    test: str = "lrt",
    nsim: int = 1000,
    alpha: float = 0.05,
    seed: int | None = None,
    nboot: int = 1000,
    progress: bool | None = None,
) -> dict:
    """Power of ``test`` for fixed-effect ``term`` of the specified model on the design ``data``.

    Returns ``{"power", "se", "n_valid", "n_failed", "p_values"}``.
    """
    if test not in TESTS:
        raise DataError(f"test must be one of {TESTS}, not {test!r}")
    parsed = parse_formula(formula)
    data = data.copy()
    data[parsed.response] = np.random.default_rng(0).standard_normal(len(data))  # placeholder response
    full = build_design(parsed, data)
    missing = set(full.fixef_names) - set(fixef)
    if missing:
        raise DataError(f"fixef lacks values for {sorted(missing)}")
    beta = np.array([fixef[k] for k in full.fixef_names])
    theta = theta_from_covariance(full, covariance, sigma)
    truth, full_problem = Params(beta, theta, float(sigma)), padded_problem(full)
    if test == "satterthwaite":
        p_values, ok = _satterthwaite_p(full_problem, truth, term, nsim, seed, progress)
    else:
        reduced = _drop_term(full, term, data)
        null = Params(np.array([fixef[k] for k in reduced.fixef_names]), theta, float(sigma))
        null_problem = padded_problem(reduced)
        observed = simulated_lrt(null_problem, theta, full_problem, theta, truth, True, nsim, seed, progress=progress)
        lrt, ok = observed.statistic, observed.valid  # clearly negative LRTs are fitting failures
        if test == "lrt":
            p_values = scipy.special.chdtrc(full.p - reduced.p, lrt)
        else:
            reference = simulated_lrt(
                null_problem,
                theta,
                full_problem,
                theta,
                null,
                False,
                nboot,
                None if seed is None else seed + 1,
                progress=progress,
            )
            p_values = bootstrap_p_value(reference.statistic[reference.valid], lrt)
    p_values = np.asarray(p_values)[ok]
    share = float(np.mean(p_values < alpha)) if p_values.size else float("nan")
    return {
        "power": share,
        "se": float(np.sqrt(share * (1 - share) / max(p_values.size, 1))),
        "n_valid": int(p_values.size),
        "n_failed": int((~ok).sum()),
        "p_values": p_values,
    }


def _satterthwaite_p(problem: Problem, truth: Params, term: str, nsim: int, seed, progress):
    """Satterthwaite t-test p-values of ``term`` for REML refits to ``nsim`` responses simulated with
    ``truth``; the derivatives of all refits in compiled calls of a fixed number of lanes."""
    design = problem.design
    if term not in design.fixef_names:
        raise DataError(f"{term!r} is not a fixed-effect coefficient (have {design.fixef_names})")
    (products,) = simulated_products([design], truth, nsim, seed)
    fits: BatchFit = fit_products(problem, truth.theta, products, reml=True, progress=progress)
    k = design.fixef_names.index(term)
    points, h = difference_points(fits.theta, fits.sigma, theta_scale(design))
    padded = pad_response_products(products, design.structure, problem.structure, problem.cp.AXX.shape[0])
    size = default_chunk_size(problem.structure, problem.cp.AXX.shape[0])
    gradients, vcov_unscaled = [], []
    for first in range(0, fits.theta.shape[0], size):
        lanes = np.arange(first, first + size) % fits.theta.shape[0]  # the last call wraps round (fixed shape)
        cp = problem.cp._replace(**{f: jnp.asarray(padded[f][lanes]) for f in Y_FIELDS})
        g, v = jax.device_get(varpar_jets_lanes(points[lanes], cp, problem.structure, True, CP_AXES))
        gradients.append(g)
        vcov_unscaled.append(v)
    B = fits.theta.shape[0]
    df, var = satterthwaite_from_jets(
        np.concatenate(gradients)[:B], np.concatenate(vcov_unscaled)[:B], fits.sigma, h, np.eye(design.p)[k : k + 1]
    )
    t = fits.beta[:, k] / np.sqrt(var[:, 0])
    p_values = 2 * scipy.special.stdtr(df[:, 0], -np.abs(t))
    return gather(p_values), gather(fits.converged)


def power_curve(formula: str, make_data: Callable[[int], pd.DataFrame], n_groups: list[int], **kwargs) -> pd.DataFrame:
    """Power over the number of groups (simr's ``powerCurve``): ``make_data(g)`` builds a design with g groups."""
    rows = []
    for g in n_groups:
        res = power(formula, make_data(g), **kwargs)
        rows.append(
            {
                "n_groups": g,
                "power": res["power"],
                "se": res["se"],
                "n_valid": res["n_valid"],
                "n_failed": res["n_failed"],
            }
        )
    return pd.DataFrame(rows)
