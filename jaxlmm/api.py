"""The public entry points: thin functions that check their arguments and call the engine.

``lmer`` (lme4's), ``fit_batch`` (many fits in compiled, vectorised calls), and, re-exported from the
modules that implement them, ``anova`` and ``pbtest`` (:mod:`jaxlmm.compare`), ``power`` and
``power_curve`` (:mod:`jaxlmm.power`).  The package's ``__init__`` and the command line import from here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .batch import BatchFit, fit_responses, response_matrix
from .buckets import fit_by, fit_datasets
from .compare import KRTest, PBTest, anova, krtest, pbtest
from .design import build_design
from .errors import DataError, JaxlmmError
from .family import make_family
from .formula import parse_formula
from .glmm import GeneralizedLinearMixedModel, fit_glmm
from .glmm_batch import GlmmBatchFit, GlmmPower, power_lrt
from .glmm_datasets import fit_glmm_by, fit_glmm_datasets
from .glmm_design import build_glmm_design
from .model import LinearMixedModel, fit_design
from .optimize import Control
from .params import theta_from_covariance
from .power import power, power_curve

__all__ = [
    "KRTest",
    "PBTest",
    "anova",
    "fit_batch",
    "glmer",
    "glmer_power",
    "krtest",
    "lmer",
    "pbtest",
    "power",
    "power_curve",
]


def lmer(
    formula: str,
    data: pd.DataFrame,
    reml: bool = True,
    max_iter: int = 2000,
    contrasts: dict | None = None,
    data_name: str = "data",
    weights=None,
    offset=None,
) -> LinearMixedModel:
    """Fit a linear mixed model given by an lme4 formula, by REML (default) or ML.

    ``data_name`` is the name lme4 shows for the data (``summary``'s ``Data:`` line and ``anova``'s
    heading: R prints the expression passed as ``data``, which Python cannot see).

    ``weights`` are lme4's prior weights (a column name or one positive value per row): the residual
    variance of row i is σ²/wᵢ.  ``offset`` (a column name or one value per row) and the formula's
    ``offset(expr)`` terms are added to the linear predictor with coefficient 1.  The fit is lme4's: the
    profiled criterion of the √w-scaled rows of ``[Z X y − offset]``, whose deviance and REML criterion
    carry lme4's ``−Σ log wᵢ``.

    ``max_iter`` bounds the optimiser's iterations per stage (lme4's ``lmerControl(optCtrl = list(maxfun
    = ...))``; the other settings are :class:`~jaxlmm.optimize.Control`'s); when it runs out, or the
    optimum is not reached for another reason, the fit warns with a
    :class:`~jaxlmm.model.ConvergenceWarning` ("Model failed to converge: ...", as lme4 does) and
    ``m.converged`` is False.  Input problems raise a :class:`~jaxlmm.errors.JaxlmmError` before any JAX
    work (see :func:`~jaxlmm.design.build_design`).

    ``contrasts`` codes factors of the fixed effects as lme4's ``contrasts = list(f = "contr.sum")``:
    ``{"f": "contr.sum" | "contr.helmert" | "contr.poly" | "contr.treatment" | matrix}`` (a matrix has a
    row per level; a DataFrame's column names name the columns).  Without it, R's defaults apply:
    ``contr.treatment``, and ``contr.poly`` for an ordered ``pd.Categorical``.
    """
    if not isinstance(reml, (bool, np.bool_)):
        raise JaxlmmError(f"reml must be True or False, not {reml!r}")
    if not isinstance(max_iter, (int, np.integer)) or isinstance(max_iter, bool) or max_iter < 1:
        raise JaxlmmError(f"max_iter must be a positive integer, not {max_iter!r}")
    if not isinstance(data_name, str):
        raise JaxlmmError(f"data_name must be a string, not {data_name!r}")
    design = build_design(parse_formula(formula), data, contrasts, weights=weights, offset=offset)
    model = fit_design(design, reml=bool(reml), control=Control(max_iter=int(max_iter)))
    model.data_name = data_name
    return model


def glmer(
    formula: str,
    data: pd.DataFrame,
    family="binomial",
    nagq: int = 1,
    offset=None,
    weights=None,
    link: str | None = None,
    max_iter: int = 2000,
    data_name: str = "data",
) -> GeneralizedLinearMixedModel:
    """Fit a generalized linear mixed model (lme4's ``glmer``) by maximum likelihood.

    ``family``: "binomial" (logit link) or "poisson" (log link); other families and links are refused.
    The response forms (0/1, booleans, a two-level factor, ``cbind(successes, failures)``, a proportion
    with ``weights=`` the trials; counts) and offsets (``offset()`` terms and ``offset=``, a column name or
    one value per row) are :mod:`jaxlmm.glmm_design`'s.  ``nagq = 1`` is the Laplace approximation; ``nagq
    > 1`` adaptive Gauss–Hermite quadrature, for a single scalar random-effects term only (as lme4).
    ``data_name`` is :func:`lmer`'s.
    """
    fam = make_family(family, link)
    if not isinstance(nagq, (int, np.integer)) or isinstance(nagq, bool) or not 1 <= nagq <= 100:
        raise JaxlmmError(f"nagq must be an integer from 1 to 100, not {nagq!r}")
    if not isinstance(max_iter, (int, np.integer)) or isinstance(max_iter, bool) or max_iter < 1:
        raise JaxlmmError(f"max_iter must be a positive integer, not {max_iter!r}")
    gd = build_glmm_design(parse_formula(formula), data, fam, offset=offset, weights=weights)
    blocks = gd.design.structure.blocks
    if nagq > 1 and (len(blocks) != 1 or blocks[0].q != 1):
        raise JaxlmmError("nagq > 1 (adaptive Gauss-Hermite quadrature) needs a single scalar random-effects term")
    if not isinstance(data_name, str):
        raise JaxlmmError(f"data_name must be a string, not {data_name!r}")
    model = fit_glmm(gd, int(nagq), Control(max_iter=int(max_iter)))
    model.data_name = data_name
    return model


def glmer_power(
    formula: str,
    null_formula: str,
    data: pd.DataFrame,
    fixef: dict[str, float],
    covariance: dict[str, np.ndarray],
    family="binomial",
    nsim: int = 1000,
    alpha: float = 0.05,
    seed: int | None = None,
    weights=None,
    offset=None,
) -> GlmmPower:
    """Power of the likelihood-ratio test of ``null_formula`` within ``formula`` for a glmer model with
    fixed effects ``fixef`` (by coefficient name) and random-effects covariances ``covariance`` (per
    grouping factor) on the design ``data`` (simr's ``powerSim`` with an LR test).  ``data``'s response
    (any valid one, e.g. a pilot or simulated response) only fits the two models whose estimates and
    Hessians start the batched refits; the ``nsim`` responses are simulated at the given parameters."""
    large = glmer(formula, data, family=family, weights=weights, offset=offset)
    small = glmer(null_formula, data, family=family, weights=weights, offset=offset)
    names = large.design.fixef_names
    missing = [n for n in names if n not in fixef]
    if missing:
        raise DataError(f"fixef needs a value for {', '.join(missing)}")
    theta = theta_from_covariance(large.design, covariance, 1.0)
    x = np.concatenate([theta, [float(fixef[n]) for n in names]])
    return power_lrt(large, small, x, nsim, alpha, seed)


def fit_batch(
    formula: str,
    data: pd.DataFrame | None = None,
    responses: np.ndarray | None = None,
    datasets: list[pd.DataFrame] | None = None,
    reml: bool = True,
    chunk_size: int | None = None,
    progress: bool | None = None,
    by: str | None = None,
    family: str | None = None,
    nagq: int = 1,
    weights=None,
    offset=None,
) -> BatchFit | GlmmBatchFit:
    """Many fits of one formula in compiled, vmapped calls.

    * ``fit_batch(f, data, responses=Y)``: each column of ``Y`` (n, B) as the response, all sharing
      ``data``'s design; the model fitted to ``data``'s own response warm-starts every lane.
    * ``fit_batch(f, datasets=[df1, ..., dfB])``: B data sets of any sizes and group counts, padded into a
      few shape buckets (:mod:`jaxlmm.buckets`).  Each data set's theta is in its own lme4 order.
    * ``fit_batch(f, data, by="replicate")``: one long frame holding B data sets, ``data[by]`` naming each;
      results in the order of first appearance, the ``by`` values in ``labels`` (:func:`jaxlmm.buckets.fit_by`).

    ``chunk_size`` is the number of lanes per compiled call (default :func:`default_chunk_size`).

    ``weights``/``offset`` are :func:`lmer`'s.  With ``responses`` they are shared by every column of ``Y``
    (a column name of ``data`` or one value per row; the offset is subtracted from each response); with
    ``datasets`` or ``by`` they are column names, read in each data set.

    With ``family=`` ("binomial" or "poisson"; ``nagq``, ``weights``, ``offset`` as :func:`glmer`'s) the
    fits are glmer fits to each column of ``responses`` (proportions of the trials for a binomial
    model), returned as a :class:`~jaxlmm.glmm_batch.GlmmBatchFit`, or glmer fits to each data set
    (``datasets=`` or ``by=``; :mod:`jaxlmm.glmm_datasets`), returned as a :class:`~jaxlmm.buckets.DatasetFit`
    (``criterion`` −2 logLik, ``sigma`` 1).
    """
    if family is not None:
        if responses is None and (datasets is not None or by is not None):
            _check_column_argument(weights, offset)
            fam, kwargs = (
                make_family(family),
                {"nagq": int(nagq), "chunk_size": chunk_size, "weights": weights, "offset": offset},
            )
            if datasets is not None and data is None and by is None:
                return fit_glmm_datasets(parse_formula(formula), datasets, fam, **kwargs)
            if by is not None and data is not None and datasets is None:
                return fit_glmm_by(parse_formula(formula), data, by, fam, **kwargs)
        if responses is None or data is None or datasets is not None or by is not None:
            raise DataError(
                "fit_batch with family= takes responses=Y sharing data=..., datasets=[...], or data with by="
            )
        model = glmer(formula, data, family=family, nagq=nagq, weights=weights, offset=offset)
        return model.refit(responses, chunk_size)
    if by is not None:
        if responses is not None or datasets is not None:
            raise DataError("by= splits one long frame (data=...) into data sets; give neither responses nor datasets")
        if data is None:
            raise DataError("by= needs the long frame holding every data set (data=...)")
        _check_column_argument(weights, offset)
        return fit_by(
            formula, data, by, reml=reml, chunk_size=chunk_size, progress=progress, weights=weights, offset=offset
        )
    if (responses is None) == (datasets is None):
        raise DataError("give either responses (with data), datasets, or data with by=")
    if datasets is not None:
        _check_column_argument(weights, offset)
        return fit_datasets(
            formula, datasets, reml=reml, chunk_size=chunk_size, progress=progress, weights=weights, offset=offset
        )
    if data is None:
        raise DataError("responses need the data they share (data=...)")
    responses = response_matrix(responses)  # bad responses are refused before the model is fitted
    model = lmer(formula, data, reml=reml, weights=weights, offset=offset)
    return fit_responses(model, responses, reml=reml, chunk_size=chunk_size, progress=progress)


def _check_column_argument(weights, offset) -> None:
    """Data sets of different sizes read their weights and offset from a column of each."""
    for what, value in (("weights", weights), ("offset", offset)):
        if value is not None and not isinstance(value, str):
            raise DataError(f"with datasets= or by=, {what} must be a column name (read in each data set)")
