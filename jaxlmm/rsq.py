"""R² for linear mixed models.

* :func:`rsq_lmm` — Zhang (2022), *rsq: R-Squared and Related Measures*, the LMM definition of the
  rsq package: marginal residuals ``e = y − Xβ̂``, ``τ²ᵢ = (ZΛΛᵀZᵀ)ᵢᵢ``, ``rᵢ = 1/(1 + τ²ᵢ)``,
  ``SST = Σ(y − ȳ)²``; fixed = 1 − Σe²/SST, model = 1 − Σ rᵢ(τ²ᵢσ̂² + rᵢeᵢ²)/SST, random = model − fixed.
* :func:`r2_nakagawa` — Nakagawa & Schielzeth (2013), with Johnson's (2014) random-slope extension:
  ``σ²_f = var(Xβ̂)``, ``σ²_r = Σ_terms mean_i(zᵢᵀ Σ_t zᵢ)``; marginal = σ²_f / (σ²_f + σ²_r + σ²),
  conditional = (σ²_f + σ²_r) / (σ²_f + σ²_r + σ²).

With prior weights, :func:`r2_nakagawa` is performance's ``r2_nakagawa``: σ² is the residual variance at
unit weight (``sigma(m)²``) and σ²_f the variance of Xβ̂ (the offset left out).  :func:`rsq_lmm` refuses
models with weights or an offset: the rsq package's sums of squares are of the unweighted response.
"""

from __future__ import annotations

import numpy as np

from .errors import JaxlmmError


def rsq_lmm(model) -> dict[str, float]:
    d = model.design
    if d.weights is not None or d.offset is not None:
        raise JaxlmmError(
            "rsq() (the rsq package's R² for LMMs) is defined for models without prior weights or an offset; "
            "r2_nakagawa() (performance's) takes them: sigma² at unit weight, the offset left out"
        )
    tau2 = np.zeros(d.n)
    for b, Z in zip(d.structure.blocks, d.Z):
        ZL = Z @ b.lambda_of(model.theta)
        tau2 += np.sum(ZL**2, axis=1)
    r = 1.0 / (1.0 + tau2)
    e = d.y - d.X @ model.fixef.values
    sst = np.sum((d.y - d.y.mean()) ** 2)
    fixed = 1.0 - np.sum(e**2) / sst
    full = 1.0 - np.sum(r * (tau2 * model.sigma**2 + r * e**2)) / sst
    return {"model": float(full), "fixed": float(fixed), "random": float(full - fixed)}


def r2_nakagawa(model) -> dict[str, float]:
    d = model.design
    var_fixed = np.var(d.X @ model.fixef.values, ddof=1)
    var_random = 0.0
    for term, (_, _, S) in zip(d.terms, model.term_covariances()):
        Zt = d.Z[term.block][:, list(term.block_columns)]
        var_random += np.mean(np.einsum("ij,jk,ik->i", Zt, S, Zt))
    total = var_fixed + var_random + model.sigma**2
    return {"marginal": float(var_fixed / total), "conditional": float((var_fixed + var_random) / total)}
