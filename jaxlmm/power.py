"""Power by simulation (simr's ``powerSim``/``powerCurve``), batched.

The model is given by its formula, fixed effects, random-effects covariances, residual sd and a design
(a DataFrame of covariates and grouping columns; the response column is ignored).  ``nsim`` responses are
simulated from it and the chosen test of one fixed-effect term is applied to each:

* ``"lrt"`` — likelihood ratio of the model against the model without the term, both by ML, χ² p-value;
* ``"pb"`` — the same statistic against a parametric-bootstrap reference distribution simulated once from
  the null model with the given parameters (``nboot`` draws);
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

from .batch import CP_AXES, Y_FIELDS, BatchFit, fit_products
from .bootstrap import simulated_products
from .crossprod import crossproducts
from .design import Design, build_design
from .errors import DataError
from .formula import ModelPart, parse_formula
from .hosts import gather
from .inference import difference_points, satterthwaite_from_jets, varpar_jets_lanes
from .model import LinearMixedModel
from .optimize import Control, OptSummary
from .params import theta_from_covariance
from .shapes import pad_response_products, pad_to_bucket

TESTS = ("lrt", "pb", "satterthwaite")


def specified_model(design: Design, beta, theta, sigma: float) -> LinearMixedModel:
    """A model with given (not fitted) parameters, for ``simulate`` and as the batch fits' warm start."""
    cp, structure = pad_to_bucket(crossproducts(design.y, design.X, design.codes, design.Z, design.structure),
                                  design.structure)
    opt = OptSummary(np.asarray(theta, dtype=float), float("nan"), 0, 0, True, "specified, not fitted", 0.0,
                     "none", Control())
    model = LinearMixedModel(design, cp, structure, False, opt)
    model._beta, model._sigma = np.asarray(beta, dtype=float), float(sigma)
    return model


def _drop_term(design: Design, term: str, data: pd.DataFrame) -> Design:
    parts = tuple(t for t in design.formula.fixed.terms if ":".join(t) != term)
    if len(parts) == len(design.formula.fixed.terms):
        raise DataError(f"term {term!r} is not a fixed-effect term of {design.formula.text!r}")
    reduced = replace(design.formula, fixed=ModelPart(parts, design.formula.fixed.intercept),
                      text=f"{design.formula.text} without {term}")
    return build_design(reduced, data)


def power(formula: str, data: pd.DataFrame, fixef: dict[str, float], covariance: dict[str, np.ndarray],
          sigma: float, term: str, test: str = "lrt", nsim: int = 1000, alpha: float = 0.05,
          seed: int | None = None, nboot: int = 1000, progress: bool | None = None) -> dict:
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
    truth = specified_model(full, beta, theta, sigma)
    if test == "satterthwaite":
        p_values, ok = _satterthwaite_p(truth, term, nsim, seed, progress)
    else:
        reduced = _drop_term(full, term, data)
        null_beta = [fixef[k] for k in reduced.fixef_names]
        null = specified_model(reduced, null_beta, theta, sigma)
        products_full, products_null = simulated_products([truth, null], nsim, seed)
        fit_full = fit_products(truth, products_full, reml=False, progress=progress).gathered()
        fit_null = fit_products(null, products_null, reml=False, progress=progress).gathered()
        ok = fit_full.converged & fit_null.converged
        lrt = np.maximum(0.0, fit_null.criterion - fit_full.criterion)
        df = full.p - reduced.p
        if test == "lrt":
            p_values = scipy.special.chdtrc(df, lrt)
        else:
            ref_null, ref_full = simulated_products([null, truth], nboot, None if seed is None else seed + 1)
            f0 = fit_products(null, ref_null, reml=False, progress=progress).gathered()
            f1 = fit_products(truth, ref_full, reml=False, progress=progress).gathered()
            good = f0.converged & f1.converged
            reference = np.sort(np.maximum(0.0, f0.criterion - f1.criterion)[good])
            p_values = (1 + reference.size - np.searchsorted(reference, lrt, side="left")) / (1 + reference.size)
    p_values = np.asarray(p_values)[ok]
    share = float(np.mean(p_values < alpha)) if p_values.size else float("nan")
    return {"power": share, "se": float(np.sqrt(share * (1 - share) / max(p_values.size, 1))),
            "n_valid": int(p_values.size), "n_failed": int((~ok).sum()), "p_values": p_values}


def _satterthwaite_p(truth: LinearMixedModel, term: str, nsim: int, seed, progress):
    design = truth.design
    if term not in design.fixef_names:
        raise DataError(f"{term!r} is not a fixed-effect coefficient (have {design.fixef_names})")
    (products,) = simulated_products([truth], nsim, seed)
    fits: BatchFit = fit_products(truth, products, reml=True, progress=progress)
    k = design.fixef_names.index(term)
    points, h = difference_points(fits.theta, fits.sigma, truth.theta_scale)
    padded = pad_response_products(products, design.structure, truth.structure, truth.cp.AXX.shape[0])
    cp = truth.cp._replace(**{f: jnp.asarray(padded[f]) for f in Y_FIELDS})
    gradients, vcov_unscaled = jax.device_get(varpar_jets_lanes(points, cp, truth.structure, True, CP_AXES))
    df, var = satterthwaite_from_jets(gradients, vcov_unscaled, fits.sigma, h, np.eye(design.p)[k:k + 1])
    t = fits.beta[:, k] / np.sqrt(var[:, 0])
    p_values = 2 * scipy.special.stdtr(df[:, 0], -np.abs(t))
    return gather(p_values), gather(fits.converged)


def power_curve(formula: str, make_data: Callable[[int], pd.DataFrame], n_groups: list[int], **kwargs) -> pd.DataFrame:
    """Power over the number of groups (simr's ``powerCurve``): ``make_data(g)`` builds a design with g groups."""
    rows = []
    for g in n_groups:
        res = power(formula, make_data(g), **kwargs)
        rows.append({"n_groups": g, "power": res["power"], "se": res["se"], "n_valid": res["n_valid"],
                     "n_failed": res["n_failed"]})
    return pd.DataFrame(rows)
