"""Likelihood-ratio comparison of nested models: lme4's ``anova(m1, m2, ...)``."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pandas as pd
import scipy.special

from .errors import ModelComparisonError


def _check_models(models) -> None:
    """Every argument is a fitted model (lme4's anova dispatches on merMod objects only)."""
    from .model import LinearMixedModel

    for k, m in enumerate(models):
        if not isinstance(m, LinearMixedModel):
            raise ModelComparisonError(f"argument {k + 1} is a {type(m).__name__}, not a fitted model from "
                                       "jaxlmm.lmer: anova compares fitted models")


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


def anova(*models, names: list[str] | None = None, nsim: int = 0, seed: int | None = None,
          progress: bool | None = None) -> pd.DataFrame:
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
        {"npar": npar.astype(int), "AIC": [m.aic for m in fits], "BIC": [m.bic for m in fits], "logLik": loglik,
         "deviance": -2 * loglik, "Chisq": chisq, "Df": df, "Pr(>Chisq)": p},
        index=pd.Index([names[k] for k in order]),
    )
    if nsim > 0:
        from .bootstrap import pbtest

        table["Pr(boot)"] = [np.nan] + [
            pbtest(large, small, nsim, seed, progress).p_boot if large.npar > small.npar else np.nan
            for small, large in itertools.pairwise(fits)
        ]
    return table
