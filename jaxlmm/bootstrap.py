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

from .batch import Y_FIELDS, BatchFit, fit_products
from .compare import _same_observations
from .crossprod import response_products, sparse_Z
from .deviance import lambda_matrix
from .errors import ModelComparisonError
from .model import term_covariances
from .tables import ran_pars

SIMULATION_BLOCK = 10_000  # responses drawn per block: bounds memory for any nsim


def simulate_blocks(model, nsim: int, seed: int | None = None):
    """Yield simulated responses in (n, <= SIMULATION_BLOCK) blocks from one random stream."""
    rng = np.random.default_rng(seed)
    d = model.design
    mean = d.X @ model.fixef.values
    theta = jnp.asarray(model.theta)
    Zs = [(sparse_Z(codes, Z, b.n_levels), np.asarray(lambda_matrix(theta, b)), b)
          for b, Z, codes in zip(d.structure.blocks, d.Z, d.codes)]
    for first in range(0, nsim, SIMULATION_BLOCK):
        size = min(SIMULATION_BLOCK, nsim - first)
        Y = np.repeat(mean[:, None], size, axis=1)
        for Zk, Lam, b in Zs:
            u = rng.standard_normal((size, b.n_levels, b.q))
            Y += Zk @ (model.sigma * u @ Lam.T).reshape(size, -1).T  # level-major columns
        Y += model.sigma * rng.standard_normal((d.n, size))
        yield Y


def simulate(model, nsim: int = 1, seed: int | None = None) -> np.ndarray:
    """``nsim`` responses simulated from the fitted model, as an (n, nsim) array (lme4's ``simulate``)."""
    return np.hstack(list(simulate_blocks(model, nsim, seed)))


def simulated_products(models, nsim: int, seed: int | None = None) -> list[dict[str, np.ndarray]]:
    """For each model in ``models``, the y-dependent cross-products of ``nsim`` responses simulated from
    the first model, computed block by block so that Y is never held whole (a million fits fit in memory)."""
    parts = [[] for _ in models]
    for Y in simulate_blocks(models[0], nsim, seed):
        for part, m in zip(parts, models):
            d = m.design
            part.append(response_products(Y, d.X, d.codes, d.Z, d.structure))
    return [{k: np.concatenate([p[j] for p in part]) for j, k in enumerate(Y_FIELDS)} for part in parts]


def bootstrap(model, nsim: int = 1000, seed: int | None = None, progress: bool | None = None) -> BatchFit:
    """Parametric bootstrap (``bootMer``): the model refitted to ``nsim`` simulated responses."""
    (products,) = simulated_products([model], nsim, seed)
    return fit_products(model, products, progress=progress)


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
    small_products, large_products = simulated_products([small_ml, large_ml], nsim, seed)
    fit_small = fit_products(small_ml, small_products, reml=False, progress=progress)
    fit_large = fit_products(large_ml, large_products, reml=False, progress=progress)
    ok = fit_small.converged & fit_large.converged
    reference = np.maximum(0.0, fit_small.criterion - fit_large.criterion)[ok]
    p_boot = (1 + np.sum(reference >= lrt)) / (1 + reference.size)
    return PBTest(lrt, df, float(scipy.stats.chi2.sf(lrt, df)), float(p_boot), reference,
                  int((~ok).sum()), nsim)
