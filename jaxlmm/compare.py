"""Comparisons of nested models: lme4's ``anova(m1, m2, ...)`` and pbkrtest's ``PBmodcomp``.

* :func:`anova` — likelihood-ratio table, REML fits refitted by ML, optionally a bootstrap p-value column;
* :func:`pbtest` — the parametric bootstrap LRT (Halekoh & Højsgaard 2014): simulate from the smaller
  model, refit both by ML to every simulated response, p = (1 + #{LRT* ≥ LRT}) / (1 + #valid)
  (:func:`bootstrap_p_value`); :func:`simulated_lrt` is the refitting step, which power analysis shares.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.special

from .batch import fit_products
from .bootstrap import simulated_products
from .errors import ModelComparisonError
from .glmm import GeneralizedLinearMixedModel
from .model import LinearMixedModel
from .params import Params
from .shapes import Problem


def _check_models(models) -> None:
    """Every argument is a fitted model (lme4's anova dispatches on merMod objects only), all linear or
    all generalized (glmer fits are compared by their Laplace/AGQ log-likelihoods)."""
    for k, m in enumerate(models):
        if not isinstance(m, (LinearMixedModel, GeneralizedLinearMixedModel)):
            raise ModelComparisonError(
                f"argument {k + 1} is a {type(m).__name__}, not a fitted model from "
                "jaxlmm.lmer or jaxlmm.glmer: anova compares fitted models"
            )
    if len({isinstance(m, GeneralizedLinearMixedModel) for m in models}) > 1:
        raise ModelComparisonError("anova compares lmer fits with lmer fits and glmer fits with glmer fits")


def same_observations(models) -> None:
    """Same rows and the same response (lme4: "models were not all fitted to the same size of dataset")."""
    _check_models(models)
    first = models[0].design
    for m in models[1:]:
        d = m.design
        if d.n != first.n or not np.array_equal(d.y, first.y) or not d.rows.equals(first.rows):
            raise ModelComparisonError(
                "models were not all fitted to the same observations "
                f"({first.n} and {d.n} rows, responses {first.formula.response!r} and {d.formula.response!r}, "
                "or the same columns with different values): anova needs the same data"
            )


def ml_versions(models) -> list:
    """The models, with REML fits refitted by ML (as lme4's anova does, saying so)."""
    if any(m.reml for m in models):
        warnings.warn("refitting model(s) with ML (instead of REML)", UserWarning, stacklevel=3)
    return [m.refit_ml() if m.reml else m for m in models]


def anova(
    *models, names: list[str] | None = None, nsim: int = 0, seed: int | None = None, progress: bool | None = None
) -> pd.DataFrame:
    """lme4's table: npar, AIC, BIC, logLik, deviance, Chisq, Df, Pr(>Chisq); models ordered by npar.

    With ``nsim > 0`` a column ``Pr(boot)`` adds, for each model against the one above it, the
    parametric-bootstrap p-value of :func:`jaxlmm.pbtest` (``nsim`` simulations from the smaller model);
    ``progress`` shows its progress bars (default: on a terminal).
    """
    _check_models(models)
    if len(models) < 2:
        raise ModelComparisonError("anova needs at least two models")
    names = list(names) if names is not None else [f"m{k + 1}" for k in range(len(models))]
    if len(names) != len(models):
        raise ModelComparisonError("give one name per model")
    same_observations(models)
    fits = ml_versions(models)
    order = sorted(range(len(fits)), key=lambda k: fits[k].npar)
    fits = [fits[k] for k in order]
    npar = np.array([m.npar for m in fits], dtype=float)
    loglik = np.array([m.loglik for m in fits])
    chisq = np.concatenate([[np.nan], 2 * np.maximum(0.0, np.diff(loglik))])
    df = np.concatenate([[np.nan], np.diff(npar)])
    with np.errstate(invalid="ignore"):
        p = np.where(df > 0, scipy.special.chdtrc(np.where(df > 0, df, 1), chisq), np.nan)
    p[0] = np.nan
    table = pd.DataFrame(
        {
            "npar": npar.astype(int),
            "AIC": [m.aic for m in fits],
            "BIC": [m.bic for m in fits],
            "logLik": loglik,
            "deviance": -2 * loglik,
            "Chisq": chisq,
            "Df": df,
            "Pr(>Chisq)": p,
        },
        index=pd.Index([names[k] for k in order]),
    )
    if nsim > 0:
        table["Pr(boot)"] = [np.nan] + [
            pbtest(large, small, nsim, seed, progress).p_boot if large.npar > small.npar else np.nan
            for small, large in itertools.pairwise(fits)
        ]
    return table


def bootstrap_p_value(reference: np.ndarray, observed) -> np.ndarray:
    """``(1 + #{reference ≥ observed}) / (1 + #reference)`` (pbkrtest's ``PBmodcomp``), for each observed."""
    reference = np.sort(np.asarray(reference, dtype=float))
    return (1 + reference.size - np.searchsorted(reference, observed, side="left")) / (1 + reference.size)


def simulated_lrt(
    small: Problem,
    small_theta: np.ndarray,
    large: Problem,
    large_theta: np.ndarray,
    params: Params,
    from_large: bool,
    nsim: int,
    seed: int | None = None,
    simulation: str = "plain",
    progress: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``2(ℓ_large − ℓ_small)`` (clipped at 0) of both models refitted by ML, warm-started at the given θ, to
    ``nsim`` responses simulated with ``params`` from the large or the small design; and whether both fits
    of each replicate converged.  Under ``jax.distributed`` every process returns all replicates."""
    designs = [large.design, small.design] if from_large else [small.design, large.design]
    products = simulated_products(designs, params, nsim, seed, simulation)
    large_products, small_products = products if from_large else products[::-1]
    fit_small = fit_products(small, small_theta, small_products, reml=False, progress=progress).gathered()
    fit_large = fit_products(large, large_theta, large_products, reml=False, progress=progress).gathered()
    return np.maximum(0.0, fit_small.criterion - fit_large.criterion), fit_small.converged & fit_large.converged


@dataclass(frozen=True)
class PBTest:
    """pbkrtest's PBmodcomp result."""

    lrt: float  # observed statistic 2 (logLik_large − logLik_small), both by ML
    df: int
    p_chisq: float
    p_boot: float
    reference: np.ndarray  # the bootstrap LRT statistics of the valid replicates
    n_failed: int
    nsim: int

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(
            {"stat": [self.lrt, self.lrt], "df": [self.df, np.nan], "p.value": [self.p_chisq, self.p_boot]},
            index=["LRT", "PBtest"],
        )


def pbtest(
    large: LinearMixedModel,
    small: LinearMixedModel,
    nsim: int = 1000,
    seed: int | None = None,
    progress: bool | None = None,
    simulation: str = "plain",
) -> PBTest:
    """Parametric bootstrap LRT of ``small`` nested in ``large`` (pbkrtest's ``PBmodcomp``); glmer fits
    are refitted in lanes by :func:`glmm_pbtest`.

    ``simulation="direct"`` draws the simulated responses' cross-products directly (see
    :func:`~jaxlmm.bootstrap.direct_products`): the same distribution, several times cheaper, another
    random stream."""
    same_observations([large, small])
    if isinstance(large, GeneralizedLinearMixedModel):
        return glmm_pbtest(large, small, nsim, seed)
    large_ml, small_ml = (m.refit_ml() for m in (large, small))
    if small_ml.npar >= large_ml.npar:
        raise ModelComparisonError("the first model must have more parameters than the second")
    lrt = max(0.0, 2 * (large_ml.loglik - small_ml.loglik))
    df = large_ml.npar - small_ml.npar
    statistics, ok = simulated_lrt(
        small_ml.problem,
        small_ml.theta,
        large_ml.problem,
        large_ml.theta,
        small_ml.params,
        False,
        nsim,
        seed,
        simulation,
        progress,
    )
    reference = statistics[ok]
    return PBTest(
        lrt,
        df,
        float(scipy.special.chdtrc(df, lrt)),
        float(bootstrap_p_value(reference, lrt)),
        reference,
        int((~ok).sum()),
        nsim,
    )


def glmm_pbtest(large, small, nsim: int = 1000, seed: int | None = None) -> PBTest:
    """PBmodcomp for two nested glmer fits: simulate from ``small`` at its estimates, refit both to each
    response in vmapped lanes, p = (1 + #{LRT* ≥ LRT}) / (1 + #valid); replicates where either refit
    failed are counted in ``n_failed`` and left out."""
    if small.npar >= large.npar:
        raise ModelComparisonError("the first model must have more parameters than the second")
    if large.nagq != small.nagq:
        raise ModelComparisonError("compare glmer fits with the same nagq (their log-likelihoods differ in scale)")
    Y = small.simulate(nsim, seed)
    fit_large, fit_small = large.refit(Y), small.refit(Y)
    ok = fit_large.converged & fit_small.converged
    reference = np.maximum(0.0, fit_small.criterion - fit_large.criterion)[ok]
    lrt = max(0.0, small.criterion - large.criterion)
    df = large.npar - small.npar
    return PBTest(
        lrt,
        df,
        float(scipy.special.chdtrc(df, lrt)),
        float(bootstrap_p_value(reference, lrt)),
        reference,
        int((~ok).sum()),
        nsim,
    )
