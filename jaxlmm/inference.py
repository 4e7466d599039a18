"""Satterthwaite degrees of freedom for fixed-effect t tests (lmerTest's default method).

Kuznetsova, Brockhoff & Christensen (2017), *lmerTest Package: Tests in Linear Mixed Effects Models*,
J. Stat. Softw. 82(13), §3: for a contrast ``l``, with ``v(ψ) = lᵀ V(ψ) l``, ``V(ψ) = σ² (R_XᵀR_X)⁻¹`` and
``ψ = (θ, σ)``,

    df = 2 v(ψ̂)² / (∇v(ψ̂)ᵀ A ∇v(ψ̂)),   A = 2 H⁻¹,

``H`` being the Hessian of the deviance in ψ (β profiled, σ not), inverted over its positive
eigenvalues as lmerTest does.  lmerTest takes ``H`` and ``∇v`` by
finite differences; here both are exact autodiff derivatives.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from .crossprod import CrossProducts
from .design import Structure
from .deviance import factorize, unscaled_vcov, varpar_deviance

POSITIVE_TOL = 1e-8  # lmerTest's tolerance for the Hessian's eigenvalues


@partial(jax.jit, static_argnames=("structure", "reml"))
def satterthwaite_df(theta, sigma, contrasts, cp: CrossProducts, structure: Structure, reml: bool):
    """Denominator df for each row ``l`` of ``contrasts`` (k, p); also returns ``v = lᵀVl``."""
    varpar = jnp.append(theta, sigma)

    def contrast_variance(vp):
        V = vp[-1] ** 2 * unscaled_vcov(factorize(vp[:-1], cp, structure))
        return jnp.einsum("ki,ij,kj->k", contrasts, V, contrasts)

    H = jax.hessian(varpar_deviance)(varpar, cp, structure, reml)
    evals, evecs = jnp.linalg.eigh(H)  # lmerTest: inverse over the eigenvalues above 1e-8 only
    inv = jnp.where(evals > POSITIVE_TOL, 1.0 / jnp.where(evals > POSITIVE_TOL, evals, 1.0), 0.0)
    A = 2.0 * (evecs * inv) @ evecs.T
    v = contrast_variance(varpar)
    J = jax.jacobian(contrast_variance)(varpar)
    return 2.0 * v**2 / jnp.einsum("ki,ij,kj->k", J, A, J), v
