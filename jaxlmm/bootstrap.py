"""Simulation from a fitted model, parametric bootstrap and the bootstrap LRT.

* :func:`simulate` — lme4's ``simulate``: new spherical random effects ``u ~ N(0, I)``,
  ``y* = Xβ̂ + σ̂ ZΛu + σ̂ε``.
* :func:`bootstrap` — lme4's ``bootMer``: refit the model to each simulated response (batched).
* :func:`pbtest` — pbkrtest's ``PBmodcomp`` (Halekoh & Højsgaard 2014): simulate from the smaller model,
  refit both by ML to every simulated response, p = (1 + #{LRT* ≥ LRT}) / (1 + #valid).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.stats

from .batch import BatchFit, fit_responses
from .compare import _same_observations
from .deviance import lambda_matrix
from .errors import ModelComparisonError
from .model import term_covariances
from .tables import ran_pars


def simulate(model, nsim: int = 1, seed: int | None = None) -> np.ndarray:
    """``nsim`` responses simulated from the fitted model, as an (n, nsim) array."""
    rng = np.random.default_rng(seed)
    d = model.design
    mean = d.X @ model.fixef.values
    Y = np.repeat(mean[:, None], nsim, axis=1)
    theta = jnp.asarray(model.theta)
    for b, Z, codes in zip(d.structure.blocks, d.Z, d.codes):
        Lam = np.asarray(lambda_matrix(theta, b))
        u = rng.standard_normal((nsim, b.n_levels, b.q))
        effects = model.sigma * u @ Lam.T  # (nsim, levels, q)
        Y += np.einsum("iq,siq->is", Z, effects[:, codes, :])
    Y += model.sigma * rng.standard_normal((d.n, nsim))
    return Y


def bootstrap(model, nsim: int = 1000, seed: int | None = None, progress: bool | None = None) -> BatchFit:
    """Parametric bootstrap (``bootMer``): the model refitted to ``nsim`` simulated responses."""
    return fit_responses(model, simulate(model, nsim, seed), progress=progress)


def bootstrap_table(model, fits: BatchFit) -> pd.DataFrame:
    """Per replicate: fixed effects, the sds/correlations named as ``tidy``'s ran_pars rows, and sigma."""
    rows = {name: fits.beta[:, j] for j, name in enumerate(fits.fixef_names)}
    per_fit = [ran_pars(term_covariances(model.design, th, s), s) for th, s in zip(fits.theta, fits.sigma)]
    for k, (group, term, _) in enumerate(per_fit[0]):
        rows[f"{group}:{term}"] = np.array([r[k][2] for r in per_fit])
    return pd.DataFrame(rows)


def confint(model, method: str = "wald", level: float = 0.95, nsim: int = 1000, seed: int | None = None) -> pd.DataFrame:
    """Confidence intervals: ``"wald"`` for fixed effects, ``"boot"`` percentile intervals for all parameters."""
    alpha = (1 - level) / 2
    if method == "wald":
        z = scipy.stats.norm.ppf(1 - alpha)
        se = np.sqrt(np.diag(model.vcov.values))
        est = model.fixef.values
        return pd.DataFrame({f"{100 * alpha:.1f} %": est - z * se, f"{100 * (1 - alpha):.1f} %": est + z * se},
                            index=model.fixef.index)
    if method == "boot":
        fits = bootstrap(model, nsim, seed)
        table = bootstrap_table(model, fits)[fits.converged]
        q = table.quantile([alpha, 1 - alpha]).T
        q.columns = [f"{100 * alpha:.1f} %", f"{100 * (1 - alpha):.1f} %"]
        return q
    raise ValueError("method must be 'wald' or 'boot'")


@dataclass
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
        return pd.DataFrame({"stat": [self.lrt, self.lrt], "df": [self.df, np.nan],
                             "p.value": [self.p_chisq, self.p_boot]}, index=["LRT", "PBtest"])


def pbtest(large, small, nsim: int = 1000, seed: int | None = None, progress: bool | None = None) -> PBTest:
    """Parametric bootstrap LRT of ``small`` nested in ``large`` (pbkrtest's ``PBmodcomp``)."""
    _same_observations([large, small])
    large_ml, small_ml = (m.refit_ml() for m in (large, small))
    if small_ml.npar >= large_ml.npar:
        raise ModelComparisonError("the first model must have more parameters than the second")
    lrt = max(0.0, 2 * (large_ml.loglik - small_ml.loglik))
    df = large_ml.npar - small_ml.npar
    Y = simulate(small_ml, nsim, seed)
    fit_small = fit_responses(small_ml, Y, reml=False, progress=progress)
    fit_large = fit_responses(large_ml, Y, reml=False, progress=progress)
    ok = fit_small.converged & fit_large.converged
    reference = np.maximum(0.0, fit_small.criterion - fit_large.criterion)[ok]
    p_boot = (1 + np.sum(reference >= lrt)) / (1 + reference.size)
    return PBTest(lrt, df, float(scipy.stats.chi2.sf(lrt, df)), float(p_boot), reference,
                  int((~ok).sum()), nsim)
